package eventmq

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// BenchmarkJobs measures jobs/s end to end at 16 workers and 16 clients, and, in the same run,
// the raw JetStream work queue doing one publish + fetch(1) + confirmed ack per job.
func BenchmarkJobs(b *testing.B) {
	const conc = 16
	_, js := newServer(b)
	p := startPod(b, js, "--eventmq-heartbeat-interval=1s", "--eventmq-heartbeat-timeout=5s", "--eventmq-lease=30s", "--eventmq-poll-wait=2s")
	ctx := context.Background()
	l, err := StartLoad(ctx, js, p.Addrs[ListenFrontend], p.Addrs[ListenBackend], conc, conc, 128)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	if err := l.Ready(rctx); err != nil {
		b.Fatal(err)
	}
	cancel()
	bridge := run(b, conc, func(ctx context.Context, i int) error { return l.Do(ctx, i) })

	_, err = js.Provision(ctx, jetstream.Assets{
		Streams: []jetstream.StreamSpec{{Name: "BENCH_RAW", Subjects: []string{"bench.raw"}, Retention: jetstream.WorkQueue}},
		Consumers: []jetstream.ConsumerSpec{{Stream: "BENCH_RAW", Durable: "W", AckWait: 30 * time.Second, MaxDeliver: 5,
			MaxAckPending: 20000}},
	})
	if err != nil {
		b.Fatal(err)
	}
	cons, err := js.Consumer(ctx, "BENCH_RAW", "W")
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 128)
	raw := run(b, conc, func(ctx context.Context, _ int) error {
		if _, err := js.Publish(ctx, "bench.raw", data, jetstream.PubOpts{}); err != nil {
			return err
		}
		jobs, err := cons.Fetch(ctx, 1, 5*time.Second)
		if err != nil {
			return err
		}
		if len(jobs) == 0 {
			return errors.New("nothing fetched")
		}
		return jobs[0].Ack(ctx)
	})
	b.ReportMetric(bridge, "eventmq_jobs/s")
	b.ReportMetric(raw, "raw_jobs/s")
	b.ReportMetric(bridge/raw, "ratio")
}

// run does b.N operations with conc goroutines and returns operations per second.
func run(b *testing.B, conc int, op func(context.Context, int) error) float64 {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := op(ctx, w)
				cancel()
				if err != nil {
					firstErr.CompareAndSwap(nil, fmt.Sprint(err))
				}
			}
		}(w)
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		b.Fatalf("op: %v", e)
	}
	return float64(b.N) / time.Since(start).Seconds()
}

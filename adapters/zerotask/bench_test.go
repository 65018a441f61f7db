package zerotask

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/adapters/zerotask/ztclient"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

const benchConcurrency = 16

// runLoad runs n operations over benchConcurrency workers (op gets the worker number) and returns
// ops/s and the p99; cpu, when set, receives the process CPU time per operation (the whole process:
// pod, NATS server and load generator).
func runLoad(b *testing.B, n int, op func(w int) error, cpu ...*time.Duration) (float64, time.Duration) {
	b.Helper()
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	c0 := processCPU()
	start := time.Now()
	for w := 0; w < benchConcurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := op(w); err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if len(cpu) > 0 {
		*cpu[0] = (processCPU() - c0) / time.Duration(n)
	}
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	return float64(n) / el.Seconds(), lat[min(n-1, n*99/100)]
}

func benchConnect(b *testing.B, srv *jetstream.Embedded, inProcess bool) *jetstream.Client {
	if !inProcess {
		return jstest.Connect(b, srv)
	}
	c, err := jetstream.Connect(context.Background(), jetstream.ConnConfig{Embedded: srv})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	return c
}

// BenchmarkRoundTrip: one task through the broker over ZeroMQ (client_new_task → node_task_request
// → node_task_finished → client_task_result: four REQ round trips), at concurrency 16, against the
// raw JetStream work queue (publish + fetch(1) + confirmed ack) in the same run. Reports round
// trips/s and p99 of both and the ratio.
func BenchmarkRoundTrip(b *testing.B) {
	b.Run("inprocess", func(b *testing.B) { benchRoundTrip(b, true) })
	b.Run("tcp", func(b *testing.B) { benchRoundTrip(b, false) })
}

type benchWorker struct {
	client, node *ztclient.Req
	cid, nid     string
}

func benchRoundTrip(b *testing.B, inProcess bool) {
	srv := jstest.Server(b)
	js := benchConnect(b, srv, inProcess)
	p := bridgetest.Start(b, js, New())
	ctx := context.Background()
	workers := make([]*benchWorker, benchConcurrency)
	for i := range workers {
		w := &benchWorker{client: req(b, p), node: req(b, p)}
		if err := w.client.Call(ctx, MethodPrefix+"client_connect", []any{}, &w.cid); err != nil {
			b.Fatal(err)
		}
		if err := w.node.Call(ctx, MethodPrefix+"node_connect", []any{}, &w.nid); err != nil {
			b.Fatal(err)
		}
		workers[i] = w
	}
	// Raw baseline: its own work queue, consumer and connection.
	raw := benchConnect(b, srv, inProcess)
	if _, err := raw.Provision(ctx, jetstream.Assets{
		Streams:   []jetstream.StreamSpec{{Name: "BENCH_RAW", Subjects: []string{"bench.raw"}, Retention: jetstream.WorkQueue}},
		Consumers: []jetstream.ConsumerSpec{{Stream: "BENCH_RAW", Durable: "W", AckWait: 30 * time.Second, MaxAckPending: 20000}},
	}); err != nil {
		b.Fatal(err)
	}
	cons, err := raw.Consumer(ctx, "BENCH_RAW", "W")
	if err != nil {
		b.Fatal(err)
	}
	payload := []byte(`{"method":"add","params":[5,6]}`)
	rawOp := func(int) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := raw.Publish(ctx, "bench.raw", payload, jetstream.PubOpts{}); err != nil {
			return err
		}
		jobs, err := cons.Fetch(ctx, 1, 5*time.Second)
		if err != nil {
			return err
		}
		if len(jobs) == 0 {
			return errors.New("raw fetch: nothing")
		}
		return jobs[0].Ack(ctx)
	}
	ztOp := func(i int) error {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return workers[i].roundTrip(ctx)
	}
	// Three interleaved rounds of each, so that a burst of load from elsewhere on the machine
	// does not decide the ratio; the median round is reported.
	const rounds = 3
	n := max(b.N/rounds, 500)
	var rawRates, ztRates, ratios []float64
	var rawP99, ztP99, rawCPU, ztCPU []time.Duration
	b.ResetTimer()
	for range rounds {
		var rc, zc time.Duration
		r, rp := runLoad(b, n, rawOp, &rc)
		z, zp := runLoad(b, n, ztOp, &zc)
		rawRates, ztRates, ratios = append(rawRates, r), append(ztRates, z), append(ratios, z/r)
		rawP99, ztP99 = append(rawP99, rp), append(ztP99, zp)
		rawCPU, ztCPU = append(rawCPU, rc), append(ztCPU, zc)
	}
	b.StopTimer()
	med := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	medD := func(v []time.Duration) time.Duration { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	b.ReportMetric(med(ztRates), "zerotask_rt/s")
	b.ReportMetric(float64(medD(ztP99).Microseconds())/1000, "zerotask_p99_ms")
	b.ReportMetric(med(rawRates), "raw_rt/s")
	b.ReportMetric(float64(medD(rawP99).Microseconds())/1000, "raw_p99_ms")
	b.ReportMetric(med(ratios), "ratio")
	// CPU per round trip (pod + NATS server + load generator) is steadier than throughput on a
	// shared machine.
	b.ReportMetric(float64(medD(ztCPU).Microseconds()), "zerotask_cpu_us/rt")
	b.ReportMetric(float64(medD(rawCPU).Microseconds()), "raw_cpu_us/rt")
}

// roundTrip passes one task from the worker's client through its node and back. Requests are
// built and replies checked without a generic JSON codec (ids are ASCII letters), so that the load
// generator's CPU stays small beside the pod's.
func (w *benchWorker) roundTrip(ctx context.Context) error {
	cid, nid := strconv.Quote(w.cid), strconv.Quote(w.nid)
	tid, err := w.client.CallRaw(ctx, MethodPrefix+"client_new_task", []byte(`[`+cid+`, "add", [5, 6]]`))
	if err != nil || len(tid) < 3 || tid[0] != '"' {
		return fmt.Errorf("new task: %v (%s)", err, tid)
	}
	t := string(tid)
	task, err := w.node.CallRaw(ctx, MethodPrefix+"node_task_request", []byte(`[`+nid+`, `+t+`]`))
	if err != nil || len(task) == 0 || task[0] != '{' {
		return fmt.Errorf("task request: %v (%s)", err, task)
	}
	if res, err := w.node.CallRaw(ctx, MethodPrefix+"node_task_finished", []byte(`[`+nid+`, `+t+`, 11]`)); err != nil || string(res) != "true" {
		return fmt.Errorf("finished: %v (%s)", err, res)
	}
	if res, err := w.client.CallRaw(ctx, MethodPrefix+"client_task_result", []byte(`[`+cid+`, `+t+`]`)); err != nil || string(res) != "11" {
		return fmt.Errorf("result: %v (%s)", err, res)
	}
	return nil
}

func ztDial(ctx context.Context, addr string) (*ztclient.Req, error) {
	return ztclient.DialReq(ctx, addr)
}

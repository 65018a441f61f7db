package sink

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// BenchmarkIngest measures events/s acknowledged by the bridge at 16 TLS clients (each with one
// event in flight, the original client's policy for one key; and with a window of 8 keys in
// flight), beside the raw synchronous JetStream publish baseline with 16 publishers in the same
// run. Reported: bridge_ev/s, raw_ev/s and ratio.
func BenchmarkIngest(b *testing.B) {
	for _, window := range []int{1, 8} {
		b.Run(fmt.Sprintf("clients=16/window=%d", window), func(b *testing.B) { benchIngest(b, 16, window) })
	}
}

func benchIngest(b *testing.B, clients, window int) {
	e := newEnv(b)
	p, js := e.pod()
	conns := make([]*tclient, clients)
	for i := range conns {
		cert := e.pki.client(b, fmt.Sprintf("bench-%d", i))
		register(b, p, fmt.Sprintf("bench-%d", i), cert)
		conns[i] = connect(b, p.Addrs["sink"], e.pki, cert, 1, nil)
	}
	data := make([]byte, 128)
	per := max(b.N/clients, 1)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i, c := range conns {
		wg.Add(1)
		go func(i int, c *tclient) {
			defer wg.Done()
			var id uint16
			sent, acked := 0, 0
			for acked < per {
				for sent < per && sent-acked < window {
					id = (id + 1) & MaxID
					f, _ := AppendPublish(nil, id, Event{TypeID: 1, SchemaVersion: 1, Key: []byte{byte(sent % window)},
						Offset: uint64(sent + 1), Timestamp: uint64(time.Now().Unix()), Data: data})
					if err := WriteFrame(c.conn, f); err != nil {
						errs <- err
						return
					}
					sent++
				}
				m, _, err := c.read(10 * time.Second)
				if err != nil || m.Type != TypeAck {
					errs <- fmt.Errorf("client %d: %v %v", i, m.Type, err)
					return
				}
				acked++
			}
		}(i, c)
	}
	wg.Wait()
	bridgeRate := float64(per*clients) / time.Since(start).Seconds()
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}

	// raw baseline: 16 synchronous publishers to a file-store stream, same payload, same count
	ctx := context.Background()
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "BENCH_RAW", Subjects: []string{"benchraw.>"}}}}); err != nil {
		b.Fatal(err)
	}
	start = time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n := 0; n < per; n++ {
				if _, err := js.Publish(ctx, fmt.Sprintf("benchraw.%d", i), data, jetstream.PubOpts{}); err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Wait()
	rawRate := float64(per*clients) / time.Since(start).Seconds()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.ReportMetric(bridgeRate, "bridge_ev/s")
	b.ReportMetric(rawRate, "raw_ev/s")
	b.ReportMetric(bridgeRate/rawRate, "ratio")
}

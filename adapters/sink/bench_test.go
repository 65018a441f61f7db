package sink

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// BenchmarkIngest measures events/s acknowledged by the bridge at 16 TLS clients (each with one
// event in flight, the original client's policy for one key; and with a window of 8 keys in
// flight), beside the raw synchronous JetStream publish baseline with 16 publishers in the same
// run. Reported: bridge_ev/s, raw_ev/s and ratio (medians of alternating rounds), and
// raw_hdr_msgid_ev/s: raw publishes carrying the same Sink headers and de-duplication id.
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
		_ = conns[i].conn.SetWriteDeadline(time.Time{}) // the rounds write directly, for longer than the helper's 5 s
	}
	ctx := context.Background()
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "BENCH_RAW", Subjects: []string{"benchraw.>"}}}}); err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 128)
	// The machine is shared and noisy: alternate short bridge and raw rounds and report medians.
	const rounds = 5
	per := max(b.N/clients/rounds, 1)
	offsets := make([]uint64, clients)
	var bridgeRates, rawRates, ratios, sameRates []float64
	b.ResetTimer()
	var bridgeCPU, rawCPU []float64
	for r := 0; r < rounds; r++ {
		cpu0 := cpuTime()
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for i, c := range conns {
			wg.Add(1)
			go func(i int, c *tclient) {
				defer wg.Done()
				// a lean device: frame buffers reused, one read deadline per round (its own
				// CPU is counted in bridge_cpu_us/ev)
				var id uint16
				var wbuf, rbuf []byte
				key := make([]byte, 1)
				_ = c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
				sent, acked := 0, 0
				for acked < per {
					for sent < per && sent-acked < window {
						id = (id + 1) & MaxID
						offsets[i]++
						key[0] = byte(sent % window)
						f, _ := AppendPublish(append(wbuf[:0], 0, 0), id, Event{TypeID: 1, SchemaVersion: 1, Key: key,
							Offset: offsets[i], Timestamp: uint64(time.Now().Unix()), Data: data})
						wbuf = f
						binary.BigEndian.PutUint16(f, uint16(len(f)-2))
						if _, err := c.conn.Write(f); err != nil {
							errs <- err
							return
						}
						sent++
					}
					rf, err := ReadFrame(c.br, rbuf)
					var m Message
					if err == nil {
						rbuf = rf[:0]
						m, err = Decode(rf)
					}
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
		bridgeCPU = append(bridgeCPU, float64(cpuTime()-cpu0)/1e3/float64(per*clients))
		select {
		case err := <-errs:
			b.Fatal(err)
		default:
		}

		// raw baseline: as many synchronous publishers, same payload, same count
		cpu0 = cpuTime()
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
		rawCPU = append(rawCPU, float64(cpuTime()-cpu0)/1e3/float64(per*clients))
		select {
		case err := <-errs:
			b.Fatal(err)
		default:
		}
		// the same work without the bridge: publish with the Sink headers and de-duplication id
		start = time.Now()
		for i := 0; i < clients; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				for n := 0; n < per; n++ {
					h := jetstream.Header{}
					h.Set(HdrClient, "bench")
					h.Set(HdrEventType, "1")
					h.Set(HdrSchemaVersion, "1")
					h.Set(HdrKey, "AQ==")
					h.Set(HdrOffset, "1")
					h.Set(HdrTimestamp, "1618150125")
					id := fmt.Sprintf("raw:%d:%d:%d", r, i, n)
					if _, err := js.Publish(ctx, fmt.Sprintf("benchraw.%d", i), data, jetstream.PubOpts{MsgID: id, Header: h}); err != nil {
						errs <- err
						return
					}
				}
			}(i)
		}
		wg.Wait()
		sameRates = append(sameRates, float64(per*clients)/time.Since(start).Seconds())
		bridgeRates, rawRates, ratios = append(bridgeRates, bridgeRate), append(rawRates, rawRate), append(ratios, bridgeRate/rawRate)
	}
	b.StopTimer()
	b.ReportMetric(median(bridgeRates), "bridge_ev/s")
	b.ReportMetric(median(rawRates), "raw_ev/s")
	b.ReportMetric(median(ratios), "ratio")
	b.ReportMetric(median(sameRates), "raw_hdr_msgid_ev/s")
	// CPU of the whole process (devices, bridge and NATS server) per event: less noisy than rates
	// on a shared machine
	b.ReportMetric(median(bridgeCPU), "bridge_cpu_us/ev")
	b.ReportMetric(median(rawCPU), "raw_cpu_us/ev")
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

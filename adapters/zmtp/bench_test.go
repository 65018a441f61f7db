package zmtp

import (
	"bufio"
	"strconv"
	"testing"
	"time"
)

// benchRoundTrip drives an echoing Router from one Go DEALER with at most
// window requests in flight and reports messages (round trips) per second.
func benchRoundTrip(b *testing.B, window int, size int) {
	r := startRouter(b, Options{})
	go echo(r, nil)
	p := mustPeer(b, r.Addr(), TypeDealer, []byte("bench"))
	payload := make([]byte, size)
	credits := make(chan struct{}, window)
	for i := 0; i < window; i++ {
		credits <- struct{}{}
	}
	errc := make(chan error, 1)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	go func() {
		bw := bufio.NewWriterSize(p.c, 64<<10)
		var buf []byte
		for i := 0; i < b.N; i++ {
			select {
			case <-credits:
			default:
				if err := bw.Flush(); err != nil {
					errc <- err
					return
				}
				<-credits
			}
			buf = AppendMessage(buf[:0], [][]byte{strconv.AppendInt(nil, int64(i), 10), payload})
			if _, err := bw.Write(buf); err != nil {
				errc <- err
				return
			}
		}
		errc <- bw.Flush()
	}()
	for i := 0; i < b.N; i++ {
		got, err := p.recv(testIO)
		if err != nil {
			b.Fatal(err)
		}
		if string(got[0]) != strconv.Itoa(i) {
			b.Fatalf("reply %q, want %d", got[0], i)
		}
		credits <- struct{}{}
	}
	el := time.Since(start)
	b.StopTimer()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
}

// BenchmarkRouterRoundTripGo: Go DEALER <-> Router echo, in lockstep
// (latency) and pipelined (throughput).
func BenchmarkRouterRoundTripGo(b *testing.B) {
	b.Run("lockstep", func(b *testing.B) { benchRoundTrip(b, 1, 64) })
	b.Run("window100", func(b *testing.B) { benchRoundTrip(b, 100, 64) })
	b.Run("window100_16KiB", func(b *testing.B) { benchRoundTrip(b, 100, 16<<10) })
}

// BenchmarkRouterRoundTripPyzmq: pyzmq/libzmq DEALERs (one Python process,
// testdata/load.py) <-> Go Router echo; msgs/s as measured by the client.
func BenchmarkRouterRoundTripPyzmq(b *testing.B) {
	for _, c := range []struct {
		name          string
		peers, window int
	}{{"1peer_lockstep", 1, 1}, {"1peer_window100", 1, 100}, {"10peers_window50", 10, 50}} {
		b.Run(c.name, func(b *testing.B) {
			requirePyzmq(b)
			r := startRouter(b, Options{})
			go echo(r, nil)
			n := max(b.N/c.peers, 1)
			res := runLoad(b, r, c.peers, n, c.window)
			if res.Msgs != n*c.peers {
				b.Fatalf("%d replies, want %d", res.Msgs, n*c.peers)
			}
			b.ReportMetric(res.MsgsPerS, "msgs/s")
		})
	}
}

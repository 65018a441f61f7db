package gilmour

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

const benchConcurrency = 16

// runLoad runs n operations over benchConcurrency workers and returns ops/s and the p99.
func runLoad(b *testing.B, n int, op func() error) (float64, time.Duration) {
	b.Helper()
	var l load
	l.run(b, n, op)
	return l.rate(), l.p99()
}

// load is one operation measured over one or several rounds (rounds of different operations
// interleaved see the same load of a shared machine).
type load struct {
	lat []time.Duration
	el  time.Duration
}

// run runs n operations over benchConcurrency workers.
func (l *load) run(b *testing.B, n int, op func() error) {
	b.Helper()
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
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
				if err := op(); err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	l.el += time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	l.lat = append(l.lat, lat...)
}

func (l *load) rate() float64 { return float64(len(l.lat)) / l.el.Seconds() }

func (l *load) p99() time.Duration {
	slices.Sort(l.lat)
	return l.lat[min(len(l.lat)-1, len(l.lat)*99/100)]
}

func benchClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}}
}

// BenchmarkGilmourRequest: HTTP request → proxy → service node over HTTP → reply, at concurrency
// 16, against raw NATS request-reply (a NATS requester and a NATS responder) in the same run.
// Reports req/s and p99 of both and the ratio, and for reference a direct HTTP call to the node
// and two plain net/http hops (client → hop → node, no NATS): the floor of the proxy's HTTP work.
func BenchmarkGilmourRequest(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchRequest(b, false) })
	b.Run("inprocess", func(b *testing.B) { benchRequest(b, true) })
}

// benchConnect connects over TCP, or in-process like a pod with the embedded server.
func benchConnect(b *testing.B, srv *jetstream.Embedded, inProcess bool) *jetstream.Client {
	if !inProcess {
		return jstest.Connect(b, srv)
	}
	c, err := jetstream.Connect(context.Background(), jetstream.ConnConfig{Embedded: srv,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	return c
}

func benchRequest(b *testing.B, inProcess bool) {
	srv := jstest.Server(b)
	js := benchConnect(b, srv, inProcess)
	p := bridgetest.Start(b, js, New())
	url := "http://" + p.Addrs["gilmour"]

	node := newBenchNode(b)
	hc := benchClient()
	code, body := benchPost(hc, url+"/nodes", fmt.Sprintf(`{"port":%d,"services":[{"topic":"bench","group":"g","path":"/svc"}]}`, node.port))
	if code != 200 {
		b.Fatalf("register: %d %s", code, body)
	}
	id := decode[CreateResponse](b, body).ID
	req := []byte(`{"topic":"bench","message":{"n":1},"timeout":5}`)
	jstest.Eventually(b, 10*time.Second, func() error {
		if code, body := benchPost(hc, url+"/request/"+id, string(req)); code != 200 {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})

	// raw NATS baseline: responder and requester on their own connections
	resp := benchConnect(b, srv, inProcess)
	sub, err := resp.Subscribe("bench.raw", "g", func(m *jetstream.Msg) {
		_ = m.Respond([]byte(`{"data":{"n":1},"code":200,"sender":"x"}`), nil)
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer fcancel()
	if err := resp.Flush(fctx); err != nil { // the server knows the responder
		b.Fatal(err)
	}
	reqc := benchConnect(b, srv, inProcess)
	nodeURL := fmt.Sprintf("http://127.0.0.1:%d/svc", node.port)
	// the floor of the proxy's HTTP work: a plain net/http hop in front of the node, no NATS
	hopClient := benchClient()
	hopPort := newHTTPTestServer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, body := benchPost(hopClient, nodeURL, `{"topic":"bench","sender":"x","data":{"n":1},"timeout":5}`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = w.Write(body)
	}))
	hopURL := fmt.Sprintf("http://127.0.0.1:%d/", hopPort)

	// four rounds of each, interleaved, so that all see the same share of a busy machine
	const rounds = 4
	per := max(b.N/rounds, 50)
	var raw, proxy, direct, hop load
	b.ResetTimer()
	for range rounds {
		raw.run(b, per, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := reqc.Request(ctx, "bench.raw", []byte(`{"data":{"n":1},"code":200,"sender":"x"}`), nil)
			return err
		})
		proxy.run(b, per, func() error {
			code, body := benchPost(hc, url+"/request/"+id, string(req))
			if code != 200 {
				return fmt.Errorf("proxy: %d %s", code, body)
			}
			return nil
		})
		direct.run(b, per, func() error {
			if code, body := benchPost(hc, nodeURL, `{"topic":"bench","sender":"x","data":{"n":1},"timeout":5}`); code != 200 {
				return fmt.Errorf("direct: %d %s", code, body)
			}
			return nil
		})
		hop.run(b, per, func() error {
			if code, body := benchPost(hc, hopURL, `{"topic":"bench","message":{"n":1}}`); code != 200 {
				return fmt.Errorf("two hops: %d %s", code, body)
			}
			return nil
		})
	}
	b.StopTimer()
	b.ReportMetric(direct.rate(), "direct_http_req/s")
	b.ReportMetric(hop.rate(), "two_http_hops_req/s")
	b.ReportMetric(proxy.rate(), "proxy_req/s")
	b.ReportMetric(float64(proxy.p99().Microseconds())/1000, "proxy_p99_ms")
	b.ReportMetric(raw.rate(), "raw_req/s")
	b.ReportMetric(float64(raw.p99().Microseconds())/1000, "raw_p99_ms")
	b.ReportMetric(proxy.rate()/raw.rate(), "ratio")
}

// BenchmarkGilmourSignal: signals posted over HTTP at concurrency 16 until every one was
// delivered to a slot node over HTTP, against raw JetStream (publish with ack at concurrency 16,
// then a durable consumer that takes and acks them all) in the same run.
func BenchmarkGilmourSignal(b *testing.B) {
	srv := jstest.Server(b)
	js := jstest.Connect(b, srv)
	p := bridgetest.Start(b, js, New(), "--gilmour-slot-inflight=64")
	url := "http://" + p.Addrs["gilmour"]
	node := newBenchNode(b)
	hc := benchClient()
	code, body := benchPost(hc, url+"/nodes", fmt.Sprintf(`{"port":%d,"slots":[{"topic":"bench.sig","group":"g","path":"/slot"}]}`, node.port))
	if code != 200 {
		b.Fatalf("register: %d %s", code, body)
	}
	id := decode[CreateResponse](b, body).ID
	n := max(b.N, 200)

	// raw JetStream baseline
	ctx := context.Background()
	if _, err := js.Provision(ctx, jetstream.Assets{
		Streams:   []jetstream.StreamSpec{{Name: "BENCH_RAW", Subjects: []string{"benchraw.>"}, Retention: jetstream.Interest}},
		Consumers: []jetstream.ConsumerSpec{{Stream: "BENCH_RAW", Durable: "RAW", AckWait: 30 * time.Second}},
	}); err != nil {
		b.Fatal(err)
	}
	cons, err := js.Consumer(ctx, "BENCH_RAW", "RAW")
	if err != nil {
		b.Fatal(err)
	}
	var got atomic.Int64
	stop, err := cons.Consume(func(j *jetstream.Job) { _ = j.AckAsync(); got.Add(1) }, 256)
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	b.ResetTimer()
	start := time.Now()
	_, rawP99 := runLoad(b, n, func() error {
		_, err := js.Publish(ctx, "benchraw.sig", []byte(`{"data":{"n":1},"code":200,"sender":"x"}`), jetstream.PubOpts{})
		return err
	})
	waitCount(b, &got, int64(n))
	rawRate := float64(n) / time.Since(start).Seconds()

	start = time.Now()
	base := node.slots.Load()
	_, pubP99 := runLoad(b, n, func() error {
		code, body := benchPost(hc, url+"/signal/"+id, `{"topic":"bench.sig","message":{"n":1}}`)
		if code != 200 {
			return fmt.Errorf("signal: %d %s", code, body)
		}
		return nil
	})
	waitCount(b, &node.slots, base+int64(n))
	rate := float64(n) / time.Since(start).Seconds()
	b.StopTimer()
	b.ReportMetric(rate, "signals/s")
	b.ReportMetric(float64(pubP99.Microseconds())/1000, "publish_p99_ms")
	b.ReportMetric(rawRate, "raw_msgs/s")
	b.ReportMetric(float64(rawP99.Microseconds())/1000, "raw_publish_p99_ms")
	b.ReportMetric(rate/rawRate, "ratio")
}

func waitCount(b *testing.B, c *atomic.Int64, want int64) {
	b.Helper()
	jstest.Eventually(b, 60*time.Second, func() error {
		if g := c.Load(); g < want {
			return fmt.Errorf("%d of %d", g, want)
		}
		return nil
	})
}

type benchNode struct {
	port  int
	slots atomic.Int64
}

func newBenchNode(b *testing.B) *benchNode {
	bn := &benchNode{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "OK") })
	mux.HandleFunc("POST /svc", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, `{"n":1,"ok":true}`)
	})
	mux.HandleFunc("POST /slot", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		bn.slots.Add(1)
	})
	srv := newHTTPTestServer(b, mux)
	bn.port = srv
	return bn
}

func benchPost(hc *http.Client, url, body string) (int, []byte) {
	resp, err := hc.Post(url, "application/json", bytes.NewReader([]byte(body)))
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

package tracker

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

const benchConcurrency = 16

// benchBacklog items wait in the queue during a run (pipelines claim from a backlog, as they do
// in production), so claims measure taking work, not polling an empty queue.
const benchBacklog = 4 * benchConcurrency

var benchRun atomic.Int64

// rawBaseline does what the tracker does per item with plain JetStream: publish to a work queue,
// fetch one, ack it (confirmed), with conc workers; it returns items/s.
func rawBaseline(b *testing.B, js *jetstream.Client, n, conc int) float64 {
	ctx := context.Background()
	stream := fmt.Sprintf("RAWBENCH%d", time.Now().UnixNano())
	subj := js.Subject("rawbench", stream)
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: stream, Subjects: []string{subj}, Retention: jetstream.WorkQueue}},
		Consumers: []jetstream.ConsumerSpec{{Stream: stream, Durable: "W", AckWait: 30 * time.Second}}}); err != nil {
		b.Fatal(err)
	}
	cons, err := js.Consumer(ctx, stream, "W")
	if err != nil {
		b.Fatal(err)
	}
	payload := []byte(`{"id":"00000000-0000-4000-8000-000000000000","gen":1}`)
	for i := 0; i < benchBacklog; i++ { // the same backlog as the tracker run
		if _, err := js.Publish(ctx, subj, payload, jetstream.PubOpts{}); err != nil {
			b.Fatal(err)
		}
	}
	var left atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				if _, err := js.Publish(ctx, subj, payload, jetstream.PubOpts{}); err != nil {
					b.Error(err)
					return
				}
				jobs, err := cons.Fetch(ctx, 1, time.Second)
				if err != nil {
					b.Error(err)
					return
				}
				for _, j := range jobs {
					if err := j.Ack(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// trackerRun: conc pipelines over WebSocket; each worker queues an item (the admin API's enqueue,
// without HTTP), claims one and finishes it. It returns items/s and the claim latencies.
func trackerRun(b *testing.B, a *Adapter, pod *bridgetest.Pod, secrets []string, n, conc int) (float64, []time.Duration) {
	ctx := context.Background()
	clients := make([]*wsClient, conc)
	for i := range clients {
		c, _, err := dialWS(pod.Addrs["tracker"], fmt.Sprintf("bench%d", i), secrets[i])
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		_ = c.WriteMessage(1, []byte(`{"v": "20260412.01"}`))
		clients[i] = &wsClient{c: c}
	}
	ptype := fmt.Sprintf("bench%d", benchRun.Add(1))
	backlog := make([]NewItem, benchBacklog)
	for i := range backlog {
		backlog[i] = NewItem{Item: "https://bench/backlog", PipelineType: ptype}
	}
	if _, errs := a.q.EnqueueBatch(ctx, backlog); errs[0] != nil {
		b.Fatal(errs[0])
	}
	var left atomic.Int64
	left.Store(int64(n))
	var finished atomic.Int64
	lat := make([][]time.Duration, conc)
	enq := make([][]time.Duration, conc)
	fin := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[w]
			for finished.Load() < int64(n) {
				if left.Add(-1) >= 0 {
					t0 := time.Now()
					if _, _, err := a.q.Enqueue(ctx, NewItem{Item: "https://bench/", PipelineType: ptype}); err != nil {
						b.Error(err)
						return
					}
					enq[w] = append(enq[w], time.Since(t0))
				}
				t0 := time.Now()
				var cl benchClaim
				st, err := c.benchCall("Item:claim", map[string]any{"pipeline_type": ptype}, &cl)
				if err != nil || st != 200 {
					b.Errorf("claim: %v %d", err, st)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
				if cl.Item.ID == "" {
					continue
				}
				t1 := time.Now()
				st, err = c.benchCall("Item:finish", map[string]any{"id": cl.Item.ID}, nil)
				if err != nil || st != 204 {
					b.Errorf("finish: %v %d", err, st)
					return
				}
				fin[w] = append(fin[w], time.Since(t1))
				finished.Add(1)
			}
		}()
	}
	wg.Wait()
	rate := float64(n) / time.Since(start).Seconds()
	var all, enqs, fins []time.Duration
	for w := range lat {
		all = append(all, lat[w]...)
		enqs = append(enqs, enq[w]...)
		fins = append(fins, fin[w]...)
	}
	if testing.Verbose() {
		b.Logf("%.0f items/s; enqueue p50 %v p99 %v; claim p50 %v p99 %v; finish p50 %v p99 %v", rate,
			percentile(enqs, 0.5), percentile(enqs, 0.99), percentile(all, 0.5), percentile(all, 0.99),
			percentile(fins, 0.5), percentile(fins, 0.99))
	}
	return rate, all
}

// benchClaim is what the bench's pipelines read of a claim answer.
type benchClaim struct {
	Item struct {
		ID string `json:"id"`
	} `json:"item"`
}

// benchCall is tryCall that decodes the answer in one pass (payload into out, when not nil), as
// a pipeline on its own machine would: the bench's clients share the CPU with the pod.
func (w *wsClient) benchCall(typ string, req any, out any) (int, error) {
	w.seq++
	b, _ := json.Marshal(req)
	if err := w.c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"type":%q,"request":%s,"seq":%d}`, typ, b, w.seq)); err != nil {
		return 0, err
	}
	for {
		_ = w.c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, data, err := w.c.ReadMessage()
		if err != nil {
			return 0, err
		}
		r := struct {
			Status  int    `json:"status"`
			Seq     *int64 `json:"seq"`
			Payload any    `json:"payload"`
		}{Payload: out}
		if err := json.Unmarshal(data, &r); err != nil {
			return 0, fmt.Errorf("%w: %s", err, data)
		}
		if r.Seq == nil {
			continue // advisory
		}
		if *r.Seq != w.seq {
			return r.Status, fmt.Errorf("desync: sent %d got %s", w.seq, data)
		}
		if r.Status >= 400 {
			return r.Status, fmt.Errorf("%s", data)
		}
		return r.Status, nil
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// BenchmarkTracker reports tracker items/s (queue → claim → finish over WebSocket) at
// concurrency 16 beside the raw JetStream work-queue baseline (publish → fetch → ack) measured in
// the same run, their ratio, and the claim p50/p99.
func BenchmarkTracker(b *testing.B) {
	srv := jstest.Server(b)
	js := jstest.Connect(b, srv)
	a := New()
	pod := bridgetest.Start(b, js, a, append([]string{"--tracker-argon2-memory=64"}, strings.Fields(os.Getenv("TRACKER_BENCH_FLAGS"))...)...)
	secrets := make([]string, benchConcurrency)
	for i := range secrets {
		secrets[i] = addPipeline(b, pod, fmt.Sprintf("bench%d", i))
	}
	n := max(b.N, 2000)
	// warm up (consumer creation, caches)
	trackerRun(b, a, pod, secrets, 200, benchConcurrency)
	rawBaseline(b, js, 200, benchConcurrency)
	b.ResetTimer()
	var rates, raws, cpus, rawCPUs []float64
	var lats []time.Duration
	// TRACKER_BENCH_CPUPROFILE=file profiles the tracker runs only (not the raw baseline)
	var prof *os.File
	if f := os.Getenv("TRACKER_BENCH_CPUPROFILE"); f != "" {
		var err error
		if prof, err = os.Create(f); err != nil {
			b.Fatal(err)
		}
		defer prof.Close()
	}
	for rep := 0; rep < 3; rep++ {
		if prof != nil {
			_ = pprof.StartCPUProfile(prof)
		}
		c0 := cpuTime()
		r, l := trackerRun(b, a, pod, secrets, n, benchConcurrency)
		c1 := cpuTime()
		if prof != nil {
			pprof.StopCPUProfile()
			prof = nil // one run is enough
		}
		rates = append(rates, r)
		lats = append(lats, l...)
		raws = append(raws, rawBaseline(b, js, n, benchConcurrency))
		c2 := cpuTime()
		cpus = append(cpus, float64((c1-c0).Microseconds())/float64(n))
		rawCPUs = append(rawCPUs, float64((c2-c1).Microseconds())/float64(n))
	}
	b.StopTimer()
	med := func(v []float64) float64 { sort.Float64s(v); return v[len(v)/2] }
	tr, raw := med(rates), med(raws)
	b.ReportMetric(tr, "tracker_items/s")
	b.ReportMetric(raw, "raw_items/s")
	b.ReportMetric(tr/raw, "ratio")
	b.ReportMetric(float64(percentile(lats, 0.5).Microseconds()), "claim_p50_µs")
	b.ReportMetric(float64(percentile(lats, 0.99).Microseconds()), "claim_p99_µs")
	// CPU time of the whole process (server, pod and clients) per item: less sensitive than
	// items/s to other work on the machine
	b.ReportMetric(med(cpus), "tracker_cpu_µs/item")
	b.ReportMetric(med(rawCPUs), "raw_cpu_µs/item")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIdleConnections measures the pod's memory per idle WebSocket connection with 5,000
// connections (TRACKER_IDLE_CONNS to change), opened by a helper process so that only the
// server's side is counted: Go heap+stacks delta and RSS delta per connection.
func BenchmarkIdleConnections(b *testing.B) {
	n := 5000
	if s := os.Getenv("TRACKER_IDLE_CONNS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	srv := jstest.Server(b)
	js := jstest.Connect(b, srv)
	a := New()
	pod := bridgetest.Start(b, js, a, "--tracker-argon2-memory=64", "--tracker-idle-timeout=0")
	secret := addPipeline(b, pod, "idle")
	before, rssBefore := memNow()
	cmd := exec.Command(os.Args[0], "-test.run=TestHelperIdleClients", "-test.v")
	cmd.Env = append(os.Environ(), "TRACKER_HELPER_ADDR="+pod.Addrs["tracker"], "TRACKER_HELPER_SECRET="+secret,
		"TRACKER_HELPER_N="+strconv.Itoa(n))
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	buf := make([]byte, 4096)
	var got strings.Builder
	for !strings.Contains(got.String(), "CLIENTS READY") {
		k, err := out.Read(buf)
		if err != nil {
			b.Fatalf("helper: %v: %s", err, got.String())
		}
		got.Write(buf[:k])
	}
	jstest.Eventually(b, 30*time.Second, func() error {
		if c := a.nconns.Load(); c < int64(n) {
			return fmt.Errorf("%d connections", c)
		}
		return nil
	})
	after, rssAfter := memNow()
	if f := os.Getenv("TRACKER_HEAP_PROFILE"); f != "" {
		if w, err := os.Create(f); err == nil {
			_ = pprof.WriteHeapProfile(w)
			w.Close()
		}
	}
	perHeap := float64(after-before) / float64(n)
	perRSS := float64(rssAfter-rssBefore) / float64(n)
	b.ReportMetric(perHeap/1024, "KiB_go/conn")
	b.ReportMetric(perRSS/1024, "KiB_rss/conn")
	b.Logf("%d idle connections: Go heap+stack %.1f KiB/conn, RSS %.1f KiB/conn, goroutines %d", n, perHeap/1024, perRSS/1024, runtime.NumGoroutine())
}

func memNow() (goBytes, rss int64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	goBytes = int64(m.HeapInuse + m.StackInuse)
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				f := strings.Fields(line)
				if len(f) >= 2 {
					kb, _ := strconv.ParseInt(f[1], 10, 64)
					rss = kb * 1024
				}
			}
		}
	}
	return goBytes, rss
}

// TestHelperIdleClients is the helper process of BenchmarkIdleConnections (skipped otherwise).
func TestHelperIdleClients(t *testing.T) {
	addr := os.Getenv("TRACKER_HELPER_ADDR")
	if addr == "" {
		t.Skip("helper process only")
	}
	n, _ := strconv.Atoi(os.Getenv("TRACKER_HELPER_N"))
	secret := os.Getenv("TRACKER_HELPER_SECRET")
	for i := 0; i < n; i++ {
		c, _, err := dialWS(addr, "idle", secret)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
		_ = c.WriteMessage(1, []byte(`{"v": "20260412.01"}`))
	}
	fmt.Println("CLIENTS READY")
	_, _ = os.Stdin.Read(make([]byte, 1)) // hold until the parent closes stdin
}

// Command jetbridge-bench is jetbridge's load generator. Every scenario runs against a pod started
// in this process (embedded NATS, every listener on 127.0.0.1:0), and, in the same run, the raw
// JetStream baseline doing the same work, so that the figure that matters is the ratio. The load
// (devices, nodes, NATS clients of the baseline alike) runs in a client process of its own by
// default, as real clients do; -clients inproc runs it in the pod's process.
//
//	go run ./cmd/jetbridge-bench -scenario raw-workqueue -duration 5s -concurrency 16 -json
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime/pprof"
	"runtime/trace"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/adapters/all"
	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

// scenario is one benchmark. setup prepares it and returns the operation each worker repeats.
type scenario struct {
	name  string
	about string
	// baseline names the raw JetStream scenario doing the same work ("" for raw scenarios).
	baseline string
	setup    func(ctx context.Context, h *harness) (op func(ctx context.Context, worker int) error, cleanup func(), err error)
}

var scenarios = map[string]*scenario{}

func register(s *scenario) { scenarios[s.name] = s }

// harness is what a scenario gets: a running pod and a plain NATS client to the same server.
type harness struct {
	Pod         *bridge.Pod // nil in a client process (-client-of)
	JS          *jetstream.Client
	Concurrency int
	Payload     int
	addrs       map[string]string // listener → address, in a client process
}

// Addr is the real address of a pod listener ("tracker", "gilmour", "sink", …).
func (h *harness) Addr(listener string) string {
	if h.Pod == nil {
		return h.addrs[listener]
	}
	return h.Pod.Addr(listener)
}

// target is what a client process is told of the pod it loads: the pod's listener addresses
// (the "nats" one included).
type target struct {
	Addrs map[string]string `json:"addrs"`
}

// Result is one measured run.
type Result struct {
	Scenario    string  `json:"scenario"`
	Ops         int64   `json:"ops"`
	Errors      int64   `json:"errors"`
	Seconds     float64 `json:"seconds"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50Micros   float64 `json:"p50_us"`
	P99Micros   float64 `json:"p99_us"`
	FirstError  string  `json:"first_error,omitempty"`
	Concurrency int     `json:"concurrency"`
	// CPU per op of the process that ran the load (with -clients inproc: pod, server and load
	// together) and, with -clients process, of the bench process (the pod and its embedded NATS
	// server), both over the measured window.
	LoadCPUMicros float64 `json:"load_cpu_us_per_op,omitempty"`
	PodCPUMicros  float64 `json:"pod_cpu_us_per_op,omitempty"`
	// WindowStart and WindowEnd bound the measured window (Unix nanoseconds).
	WindowStart int64 `json:"window_start_ns,omitempty"`
	WindowEnd   int64 `json:"window_end_ns,omitempty"`
}

// Report is what one invocation prints.
type Report struct {
	Scenario string  `json:"scenario"`
	Rounds   int     `json:"rounds"`
	Result   Result  `json:"result"`
	Baseline *Result `json:"baseline,omitempty"`
	// RatioOps is bridge ops/s ÷ baseline ops/s; RatioP99 is bridge p99 ÷ baseline p99.
	RatioOps float64 `json:"ratio_ops,omitempty"`
	RatioP99 float64 `json:"ratio_p99,omitempty"`
	// RatioPodCPU is the bridge's pod (and server) CPU per op ÷ the baseline's server CPU per op
	// (-clients process only).
	RatioPodCPU float64 `json:"ratio_pod_cpu,omitempty"`
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "jetbridge-bench:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("jetbridge-bench", flag.ContinueOnError)
	name := fs.String("scenario", "raw-workqueue", "scenario to run (-list shows them)")
	duration := fs.Duration("duration", 5*time.Second, "how long each run lasts")
	concurrency := fs.Int("concurrency", 16, "concurrent workers")
	payload := fs.Int("payload", 128, "payload size in bytes")
	asJSON := fs.Bool("json", false, "print JSON")
	list := fs.Bool("list", false, "list scenarios")
	rounds := fs.Int("rounds", 1, "alternating rounds of scenario and baseline; the median round of each is reported")
	podFlags := fs.String("pod-flags", "", `extra flags for the pod, e.g. "--durability strict"`)
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the scenario rounds (not the baseline) to this file")
	traceOut := fs.String("trace", "", "write an execution trace of the first scenario round (not the baseline) to this file")
	clients := fs.String("clients", "process", `where the load runs: "process" (a separate process, as real clients are: the pod's scheduler is not shared with them) or "inproc" (in this process)`)
	clientOf := fs.String("client-of", "", "(internal) run one measurement as the client process of the pod described by this JSON target and print the Result as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *list {
		var names []string
		for n := range scenarios {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(out, "%-20s %s\n", n, scenarios[n].about)
		}
		return nil
	}
	sc, ok := scenarios[*name]
	if !ok {
		return fmt.Errorf("unknown scenario %q (-list shows them)", *name)
	}
	if *concurrency < 1 || *duration <= 0 || *rounds < 1 {
		return errors.New("-concurrency, -duration and -rounds must be positive")
	}
	if *clientOf != "" {
		return runClient(*clientOf, sc, *concurrency, *payload, *duration, out)
	}
	if *clients != "process" && *clients != "inproc" {
		return fmt.Errorf(`-clients %q: want "process" or "inproc"`, *clients)
	}
	h, stop, err := startHarness(*concurrency, *payload, strings.Fields(*podFlags))
	if err != nil {
		return err
	}
	defer stop()
	measure := measureIn
	if *clients == "process" {
		measure = measureOut
	}
	rep := Report{Scenario: sc.name, Rounds: *rounds}
	var base *scenario
	if sc.baseline != "" {
		b, ok := scenarios[sc.baseline]
		if !ok {
			return fmt.Errorf("scenario %s: unknown baseline %s", sc.name, sc.baseline)
		}
		base = b
	}
	// Rounds alternate scenario and baseline so that both get the same share of a noisy machine;
	// the report gives the median round of each.
	var mine, theirs []Result
	var prof *os.File
	if *cpuProfile != "" {
		if prof, err = os.Create(*cpuProfile); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer prof.Close()
	}
	var tf *os.File
	if *traceOut != "" {
		if tf, err = os.Create(*traceOut); err != nil {
			return fmt.Errorf("trace: %w", err)
		}
		defer tf.Close()
	}
	for r := 0; r < *rounds; r++ {
		if prof != nil {
			if err := pprof.StartCPUProfile(prof); err != nil {
				return fmt.Errorf("cpu profile: %w", err)
			}
		}
		if tf != nil {
			if err := trace.Start(tf); err != nil {
				return fmt.Errorf("trace: %w", err)
			}
		}
		res, err := measure(h, sc, *duration)
		if prof != nil {
			pprof.StopCPUProfile()
			prof = nil // one round is profiled
		}
		if tf != nil {
			trace.Stop()
			tf = nil // one round is traced
		}
		if err != nil {
			return err
		}
		mine = append(mine, res)
		if base != nil {
			b, err := measure(h, base, *duration)
			if err != nil {
				return err
			}
			theirs = append(theirs, b)
		}
	}
	rep.Result = median(mine)
	if base != nil {
		b := median(theirs)
		rep.Baseline = &b
		if b.OpsPerSec > 0 {
			rep.RatioOps = rep.Result.OpsPerSec / b.OpsPerSec
		}
		if b.P99Micros > 0 {
			rep.RatioP99 = rep.Result.P99Micros / b.P99Micros
		}
		if b.PodCPUMicros > 0 {
			rep.RatioPodCPU = rep.Result.PodCPUMicros / b.PodCPUMicros
		}
	}
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	podCol := "pod µs/op"
	if *clients == "inproc" {
		podCol = "" // the load shares the pod's process: one figure for both
	}
	fmt.Fprintf(out, "%-22s %10s %10s %10s %8s %11s %12s\n", "scenario", "ops/s", "p50", "p99", "errors", podCol, "load µs/op")
	line := func(r Result) {
		pod := ""
		if *clients != "inproc" {
			pod = strconv.FormatFloat(r.PodCPUMicros, 'f', 1, 64)
		}
		fmt.Fprintf(out, "%-22s %10.0f %10s %10s %8d %11s %12.1f\n", r.Scenario, r.OpsPerSec,
			time.Duration(r.P50Micros*1e3).Round(time.Microsecond), time.Duration(r.P99Micros*1e3).Round(time.Microsecond), r.Errors,
			pod, r.LoadCPUMicros)
	}
	line(rep.Result)
	if rep.Baseline != nil {
		line(*rep.Baseline)
		cpu := ""
		if rep.RatioPodCPU > 0 {
			cpu = fmt.Sprintf(", pod CPU per op %.2fx", rep.RatioPodCPU)
		}
		fmt.Fprintf(out, "ratio bridge/raw: ops/s %.2fx, p99 %.2fx%s (concurrency %d, %v each, median of %d alternating rounds)\n",
			rep.RatioOps, rep.RatioP99, cpu, *concurrency, *duration, *rounds)
	}
	if rep.Result.FirstError != "" {
		fmt.Fprintf(out, "first error: %s\n", rep.Result.FirstError)
	}
	return nil
}

// startHarness starts a pod with every adapter on an embedded server in a temp folder.
func startHarness(concurrency, payload int, extra []string) (*harness, func(), error) {
	dir, err := os.MkdirTemp("", "jetbridge-bench-")
	if err != nil {
		return nil, nil, err
	}
	adapters := all.Adapters()
	var cfg bridge.Config
	fs := pflag.NewFlagSet("pod", pflag.ContinueOnError)
	cfg.RegisterFlags(fs, adapters)
	args := []string{"--data", dir, "--nats-listen", "127.0.0.1:0", "--nats-monitor-listen", "off", "--admin-listen", "127.0.0.1:0"}
	for _, a := range adapters {
		for _, l := range a.Listeners() {
			args = append(args, "--"+l.Flag, "127.0.0.1:0")
		}
	}
	if err := fs.Parse(append(args, extra...)); err != nil {
		return nil, nil, err
	}
	if err := bridge.ApplyEnvAndFile(fs, ""); err != nil {
		return nil, nil, err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	pod := bridge.NewPod(cfg, adapters, log)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := pod.Start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	js, err := jetstream.Connect(ctx, jetstream.ConnConfig{URLs: "nats://" + pod.Addr("nats"), Name: "jetbridge-bench", Logger: log})
	if err != nil {
		_ = pod.Shutdown(context.Background())
		os.RemoveAll(dir)
		return nil, nil, err
	}
	stop := func() {
		js.Close()
		_ = pod.Shutdown(context.Background())
		os.RemoveAll(dir)
	}
	return &harness{Pod: pod, JS: js, Concurrency: concurrency, Payload: payload}, stop, nil
}

// measureOut runs one measurement of sc in a client process of its own (this program started
// with -client-of) and returns the Result it prints.
func measureOut(h *harness, sc *scenario, d time.Duration) (Result, error) {
	t := target{Addrs: map[string]string{}}
	for _, l := range h.Pod.Listeners() {
		t.Addrs[l.Name] = l.Address
	}
	tj, _ := json.Marshal(t)
	exe, err := os.Executable()
	if err != nil {
		return Result{}, fmt.Errorf("client process: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*d+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-client-of", string(tj), "-scenario", sc.name, "-duration", d.String(),
		"-concurrency", strconv.Itoa(h.Concurrency), "-payload", strconv.Itoa(h.Payload))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// the pod's CPU is sampled while the client runs and read at the client's measured window
	samples := sampleCPU(ctx)
	runErr := cmd.Run()
	cpu := samples()
	if runErr != nil {
		return Result{}, fmt.Errorf("client process for %s: %w: %s", sc.name, runErr, strings.TrimSpace(stderr.String()))
	}
	var r Result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		return Result{}, fmt.Errorf("client process for %s: result %q: %w", sc.name, stdout.String(), err)
	}
	r.PodCPUMicros = cpuPerOp(cpu, r)
	return r, nil
}

// cpuPerOp is the CPU time the samples show over r's measured window, per op of r.
func cpuPerOp(samples []cpuSample, r Result) float64 {
	if r.Ops == 0 || r.WindowEnd <= r.WindowStart {
		return 0
	}
	used := cpuAt(samples, r.WindowEnd) - cpuAt(samples, r.WindowStart)
	return float64(used.Microseconds()) / float64(r.Ops)
}

// cpuSample is the process's CPU time at one moment (Unix nanoseconds).
type cpuSample struct {
	at  int64
	cpu time.Duration
}

// sampleCPU samples this process's CPU time every 20 ms until the returned function is called
// (or ctx ends); that function returns the samples.
func sampleCPU(ctx context.Context) func() []cpuSample {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan []cpuSample, 1)
	go func() {
		s := []cpuSample{{time.Now().UnixNano(), processCPU()}}
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				done <- append(s, cpuSample{time.Now().UnixNano(), processCPU()})
				return
			case <-t.C:
				s = append(s, cpuSample{time.Now().UnixNano(), processCPU()})
			}
		}
	}()
	return func() []cpuSample {
		cancel()
		return <-done
	}
}

// cpuAt interpolates the CPU time at moment at from samples in time order.
func cpuAt(s []cpuSample, at int64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	if at <= s[0].at {
		return s[0].cpu
	}
	for i := 1; i < len(s); i++ {
		if at <= s[i].at {
			a, b := s[i-1], s[i]
			if b.at == a.at {
				return b.cpu
			}
			f := float64(at-a.at) / float64(b.at-a.at)
			return a.cpu + time.Duration(f*float64(b.cpu-a.cpu))
		}
	}
	return s[len(s)-1].cpu
}

// runClient is the client process: it connects to the pod described by tj, measures sc and
// prints the Result as JSON.
func runClient(tj string, sc *scenario, concurrency, payload int, d time.Duration, out io.Writer) error {
	var t target
	if err := json.Unmarshal([]byte(tj), &t); err != nil {
		return fmt.Errorf("-client-of: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	js, err := jetstream.Connect(ctx, jetstream.ConnConfig{URLs: "nats://" + t.Addrs["nats"], Name: "jetbridge-bench-client", Logger: log})
	if err != nil {
		return err
	}
	defer js.Close()
	r, err := measureIn(&harness{JS: js, Concurrency: concurrency, Payload: payload, addrs: t.Addrs}, sc, d)
	if err != nil {
		return err
	}
	return json.NewEncoder(out).Encode(r)
}

// measureIn runs sc in this process with h.Concurrency workers for d (after a short warm-up) and
// reports throughput and latency percentiles.
func measureIn(h *harness, sc *scenario, d time.Duration) (Result, error) {
	ctx := context.Background()
	op, cleanup, err := sc.setup(ctx, h)
	if err != nil {
		return Result{}, fmt.Errorf("scenario %s setup: %w", sc.name, err)
	}
	if cleanup != nil {
		defer cleanup()
	}
	var ops, errs atomic.Int64
	var firstErr atomic.Value
	lat := make([][]time.Duration, h.Concurrency)
	warm := min(d/10, time.Second)
	start := time.Now()
	deadline := start.Add(warm + d)
	// the load's CPU, read at the measured window as the pod's is (measureOut)
	samples := sampleCPU(ctx)
	var wg sync.WaitGroup
	for w := 0; w < h.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				t0 := time.Now()
				if t0.After(deadline) {
					return
				}
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := op(octx, w)
				cancel()
				if t0.Before(start.Add(warm)) {
					continue
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ops.Add(1)
				lat[w] = append(lat[w], time.Since(t0))
			}
		}(w)
	}
	wg.Wait()
	end := time.Now()
	cpu := samples()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	r := Result{Scenario: sc.name, Ops: ops.Load(), Errors: errs.Load(), Seconds: d.Seconds(),
		OpsPerSec: float64(ops.Load()) / d.Seconds(), Concurrency: h.Concurrency}
	if fe, ok := firstErr.Load().(string); ok {
		r.FirstError = fe
	}
	r.WindowStart, r.WindowEnd = start.Add(warm).UnixNano(), end.UnixNano()
	r.LoadCPUMicros = cpuPerOp(cpu, r)
	if n := len(all); n > 0 {
		r.P50Micros = float64(all[n*50/100]) / 1e3
		r.P99Micros = float64(all[min(n*99/100, n-1)]) / 1e3
	}
	return r, nil
}

// payloadOf makes a deterministic payload of n bytes.
func payloadOf(n int) []byte {
	return []byte(strings.Repeat("x", n))
}

// median returns the round with the median throughput.
func median(rs []Result) Result {
	sorted := append([]Result(nil), rs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].OpsPerSec < sorted[j].OpsPerSec })
	return sorted[len(sorted)/2]
}

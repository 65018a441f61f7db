package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

// TestMain lets this test binary be the client process the bench starts (it runs itself with
// -client-of, as the real binary does).
func TestMain(m *testing.M) {
	if slices.Contains(os.Args[1:], "-client-of") {
		if err := run(os.Args[1:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "jetbridge-bench:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestRawScenariosReportThroughputAndLatency(t *testing.T) {
	for _, c := range []struct{ name, clients string }{
		{"raw-publish", "process"}, {"raw-workqueue", "process"}, {"raw-publish", "inproc"}, {"sink-ingest", "process"}, {"tracker", "process"},
		{"tracker-floor", "process"},
	} {
		name := c.name + "/" + c.clients
		var out bytes.Buffer
		if err := run([]string{"-scenario", c.name, "-clients", c.clients, "-duration", "300ms", "-concurrency", "4", "-json"}, &out); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var rep Report
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("%s: %v: %s", name, err, out.String())
		}
		if rep.Result.Ops == 0 || rep.Result.OpsPerSec <= 0 || rep.Result.P99Micros < rep.Result.P50Micros || rep.Result.Errors != 0 {
			t.Fatalf("%s: implausible result %+v", name, rep.Result)
		}
		if processCPU() > 0 { // CPU is measured on this platform
			if rep.Result.LoadCPUMicros <= 0 || (c.clients == "process") != (rep.Result.PodCPUMicros > 0) {
				t.Fatalf("%s: CPU per op: load %.1f µs, pod %.1f µs", name, rep.Result.LoadCPUMicros, rep.Result.PodCPUMicros)
			}
		}
	}
}

func TestEveryScenarioHasAKnownBaseline(t *testing.T) {
	for name, sc := range scenarios {
		if sc.baseline == "" {
			continue
		}
		if _, ok := scenarios[sc.baseline]; !ok {
			t.Errorf("scenario %s names unknown baseline %s", name, sc.baseline)
		}
	}
	if err := run([]string{"-scenario", "nope"}, &bytes.Buffer{}); err == nil {
		t.Fatal("unknown scenario must fail")
	}
	if err := run([]string{"-scenario", "raw-publish", "-clients", "elsewhere"}, &bytes.Buffer{}); err == nil {
		t.Fatal("unknown -clients must fail")
	}
	for _, bad := range []string{"{", `{"addrs": 1}`, "[]"} {
		if err := run([]string{"-scenario", "raw-publish", "-client-of", bad}, &bytes.Buffer{}); err == nil {
			t.Fatalf("client process with target %q must fail", bad)
		}
	}
}

func TestCPUAtInterpolates(t *testing.T) {
	s := []cpuSample{{at: 100, cpu: 1000}, {at: 200, cpu: 3000}, {at: 200, cpu: 3000}, {at: 400, cpu: 4000}}
	for _, c := range []struct {
		at   int64
		want time.Duration
	}{{50, 1000}, {100, 1000}, {150, 2000}, {200, 3000}, {300, 3500}, {500, 4000}} {
		if got := cpuAt(s, c.at); got != c.want {
			t.Errorf("cpuAt(%d) = %d, want %d", c.at, got, c.want)
		}
	}
	if cpuAt(nil, 1) != 0 {
		t.Error("no samples")
	}
}

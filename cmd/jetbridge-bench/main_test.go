package main

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestRawScenariosReportThroughputAndLatency(t *testing.T) {
	for _, name := range []string{"raw-publish", "raw-workqueue"} {
		var out bytes.Buffer
		if err := run([]string{"-scenario", name, "-duration", "300ms", "-concurrency", "4", "-json"}, &out); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var rep Report
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("%s: %v: %s", name, err, out.String())
		}
		if rep.Result.Ops == 0 || rep.Result.OpsPerSec <= 0 || rep.Result.P99Micros < rep.Result.P50Micros || rep.Result.Errors != 0 {
			t.Fatalf("%s: implausible result %+v", name, rep.Result)
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
}

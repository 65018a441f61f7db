package tracker

import (
	"fmt"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestQueueGauges: jetbridge_tracker_queue_depth counts the claimable items and
// jetbridge_tracker_open_claims the claimed ones, per pipeline type (0 for a type with claimable
// items and no claims).
func TestQueueGauges(t *testing.T) {
	e := newEnv(t, "--tracker-argon2-memory=64")
	secret := addPipeline(t, e.pod, "p1")
	queueItems(t, e.pod, map[string]any{"item": "https://a/", "pipeline_type": "g1"},
		map[string]any{"item": "https://b/", "pipeline_type": "g1"}, map[string]any{"item": "https://c/", "pipeline_type": "g1"},
		map[string]any{"item": "https://d/", "pipeline_type": "g2"})
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	first := c.claim("g1")
	c.claim("g1")
	c.expect(c.call("Item:finish", map[string]any{"id": first.Item.ID}), 204)
	gauge := func(name, ptype string) float64 {
		mfs, err := e.pod.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "pipeline_type" && l.GetValue() == ptype {
						return m.GetGauge().GetValue()
					}
				}
			}
		}
		return -1 // no such series
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		got := [4]float64{gauge("jetbridge_tracker_queue_depth", "g1"), gauge("jetbridge_tracker_queue_depth", "g2"),
			gauge("jetbridge_tracker_open_claims", "g1"), gauge("jetbridge_tracker_open_claims", "g2")}
		if got != [4]float64{1, 1, 1, 0} {
			return fmt.Errorf("depth g1, g2, open claims g1, g2 = %v, want [1 1 1 0]", got)
		}
		return nil
	})
}

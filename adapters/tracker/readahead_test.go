package tracker

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestReadAheadHandsBack: the tokens a pod fetches in advance for concurrent claims, and that
// no claim took, go back to the queue shortly after the claims stop: another pod then claims every
// remaining item, each once, long before the consumer's AckWait (30 s) would bring them back.
func TestReadAheadHandsBack(t *testing.T) {
	e := newEnv(t, "--tracker-argon2-memory=64")
	podB := bridgetest.Start(t, jstest.Connect(t, e.srv), New(), "--tracker-argon2-memory=64")
	const conc, each, total = 8, 10, 200
	items := make([]map[string]any, total)
	for i := range items {
		items[i] = map[string]any{"item": fmt.Sprintf("https://ra/%d", i), "pipeline_type": "ra"}
	}
	ids := queueItems(t, e.pod, items...)
	clients := make([]*wsClient, conc)
	for i := range clients {
		name := fmt.Sprintf("ra%d", i)
		clients[i] = connect(t, e.pod.Addrs["tracker"], name, addPipeline(t, e.pod, name), true)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < each; {
				r, err := c.tryCall("Item:claim", map[string]any{"pipeline_type": "ra"})
				if err != nil || r.Status != 200 {
					t.Errorf("claim: %v %s", err, r.Raw)
					return
				}
				var cl claimed
				if err := json.Unmarshal(r.Payload, &cl); err != nil || cl.Item.ID == "" {
					t.Errorf("claim answer %s: %v", r.Raw, err)
					return
				}
				if r, err := c.tryCall("Item:finish", map[string]any{"id": cl.Item.ID}); err != nil || r.Status != 204 {
					t.Errorf("finish: %v %s", err, r.Raw)
					return
				}
				mu.Lock()
				seen[cl.Item.ID]++
				mu.Unlock()
				n++
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// pod B takes the rest with one pipeline
	b := connect(t, podB.Addrs["tracker"], "rb", addPipeline(t, e.pod, "rb"), true)
	start := time.Now()
	jstest.Eventually(t, 10*time.Second, func() error {
		for {
			cl := b.claim("ra")
			if cl.Item.ID == "" {
				break
			}
			b.expect(b.call("Item:finish", map[string]any{"id": cl.Item.ID}), 204)
			seen[cl.Item.ID]++
		}
		if len(seen) < total {
			return fmt.Errorf("%d of %d items claimed", len(seen), total)
		}
		return nil
	})
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the rest took %v to come back", d)
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("item %s claimed %d times", id, seen[id])
		}
	}
}

package tracker

import (
	"fmt"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestSubmitManyQueues: submissions are handled several at a time, yet every item is queued
// exactly once and the items of one queue keep the order they were published in.
func TestSubmitManyQueues(t *testing.T) {
	e := newEnv(t)
	secret := addPipeline(t, e.pod, "p1")
	ctx := ctxT(t)
	sub := e.js.Subject("tracker", "submit")
	const types, per = 4, 40
	futs := make([]*jetstream.PubFuture, 0, types*per)
	for i := 0; i < per; i++ {
		for ty := 0; ty < types; ty++ {
			f, err := e.js.PublishAsync(sub, fmt.Appendf(nil, `{"item":"u%d","pipeline_type":"t%d"}`, i, ty), jetstream.PubOpts{})
			if err != nil {
				t.Fatal(err)
			}
			futs = append(futs, f)
		}
	}
	for _, f := range futs {
		if _, err := f.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	for ty := 0; ty < types; ty++ {
		ptype := fmt.Sprintf("t%d", ty)
		var got []string
		jstest.Eventually(t, 20*time.Second, func() error {
			for {
				cl := c.claim(ptype)
				if cl.Item.ID == "" {
					break
				}
				got = append(got, cl.Item.Item)
				c.call("Item:finish", map[string]any{"id": cl.Item.ID})
			}
			if len(got) < per {
				return fmt.Errorf("%s: claimed %d of %d", ptype, len(got), per)
			}
			return nil
		})
		if len(got) != per {
			t.Fatalf("%s: claimed %d items, want %d: %v", ptype, len(got), per, got)
		}
		for i, it := range got {
			if it != fmt.Sprintf("u%d", i) {
				t.Fatalf("%s: claim order %v", ptype, got)
			}
		}
	}
}

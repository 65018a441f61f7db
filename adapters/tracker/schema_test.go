package tracker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

var schemaDir = filepath.Join("..", "..", "schemas", "tracker")

func schema(t *testing.T, name string) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	s, err := c.Compile(filepath.Join(schemaDir, name))
	if err != nil {
		t.Fatalf("compile %s: %v", name, err)
	}
	return s
}

func validate(t *testing.T, name string, data []byte) {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: instance %q: %v", name, data, err)
	}
	if err := schema(t, name).Validate(inst); err != nil {
		t.Errorf("%s does not accept %s: %v", name, data, err)
	}
}

func reject(t *testing.T, name string, data []byte) {
	t.Helper()
	inst, _ := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err := schema(t, name).Validate(inst); err == nil {
		t.Errorf("%s accepts %s", name, data)
	}
}

// TestSchemas validates the golden frames and every payload the tracker writes, taken from a live
// run, against schemas/tracker.
func TestSchemas(t *testing.T) {
	validate(t, "hello.json", []byte(golden[0]))
	validate(t, "system-ping.request.json", []byte(golden[1]))
	validate(t, "item-claim.request.json", []byte(golden[2]))
	validate(t, "item-store.request.json", []byte(golden[3]))
	validate(t, "item-fail.request.json", []byte(golden[4]))
	validate(t, "item-finish.request.json", []byte(golden[5]))
	validate(t, "item-claim.request.json", []byte(`{"type":"Item:claim","request":{"pipeline":"brozzler"},"seq":2}`))
	reject(t, "item-claim.request.json", []byte(`{"type":"Item:claim","request":{},"seq":2}`))
	reject(t, "hello.json", []byte(golden[7]))
	reject(t, "item-fail.request.json", []byte(`{"type":"Item:fail","request":{"id":"a_b","message":"m"},"seq":4}`))

	validate(t, "response.json", EncodeResponse(204, nil, 1))
	validate(t, "error.json", EncodeError(&FrameError{Status: 400, Message: "Invalid JSON"}))
	validate(t, "error.json", EncodeError(&FrameError{Status: 409, Message: "x", Seq: 3, HasSeq: true}))
	validate(t, "advisory-item-revoked.json", EncodeAdvisory("Item:revoked", map[string]any{"id": "abc", "attempt": 0, "reason": "lease expired"}))
	validate(t, "item-claim.response.json", []byte(`{"item":null,"message":"No items found."}`))

	// live payloads
	e := newEnv(t, "--tracker-max-tries=1", "--tracker-events-stream")
	secret := addPipeline(t, e.pod, "p1")
	ctx := ctxT(t)
	ids := queueItems(t, e.pod, map[string]any{"item": "https://s/", "pipeline_type": "brozzler", "queued_by": "bob",
		"metadata": map[string]any{"ua": "$x"}}, map[string]any{"item": "https://f/", "pipeline_type": "brozzler"})
	tok, err := e.js.LastMsg(ctx, streamReady, "tracker.ready.brozzler._.0")
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "ready-token.json", tok.Data)
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	r := c.call("Item:claim", map[string]any{"pipeline_type": "brozzler"})
	validate(t, "response.json", []byte(r.Raw))
	validate(t, "item-claim.response.json", r.Payload)
	r = c.call("Item:store", map[string]any{"id": ids[0], "attempt": 0, "result_type": "screenshot", "result": map[string]any{"full": "Xk~0{Zv"}, "decode_fields": []string{"full"}})
	validate(t, "item-store.response.json", r.Payload)
	res, err := e.js.LastMsg(ctx, streamResults, "tracker.results.brozzler.screenshot")
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "result.json", res.Data)
	c.expect(c.call("Item:finish", map[string]any{"id": ids[0]}), 204)
	cl := c.claim("brozzler")
	c.expect(c.call("Item:fail", map[string]any{"id": cl.Item.ID, "message": "boom", "attempt": 0, "fatal": false}), 204)
	dl, err := e.js.LastMsg(ctx, jetstream.DeadLetterStream, "dlq.tracker.items.brozzler")
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "item-record.json", dl.Data)
	for _, id := range ids {
		kv, _ := e.js.KV(ctx, bucketItems)
		ent, err := kv.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		validate(t, "item-record.json", ent.Value)
	}
	for _, ev := range []string{"queued", "claimed", "done", "failed", "error"} {
		var m *jetstream.Msg
		jstest.Eventually(t, 10*time.Second, func() error { // events go out in batches
			var err error
			m, err = e.js.LastMsg(ctx, streamEvents, "tracker.events.brozzler."+ev)
			return err
		})
		validate(t, "item-event.json", m.Data)
	}
	pk, _ := e.js.KV(ctx, bucketPipes)
	pe, _ := pk.Get(ctx, "p1")
	validate(t, "pipeline-record.json", pe.Value)

	// submissions: valid and rejected
	validate(t, "submit-item.json", []byte(`{"item":"https://n/","pipeline_type":"brozzler","priority":1,"run_on":"","queued_by":"nats","metadata":{}}`))
	sub := e.js.Subject("tracker", "submit")
	if _, err := e.js.Publish(ctx, sub, []byte(`{"item":"","pipeline_type":"brozzler","bogus":1}`), jetstream.PubOpts{}); err != nil {
		t.Fatal(err)
	}
	jstest.Eventually(t, 10*time.Second, func() error {
		m, err := e.js.LastMsg(ctx, streamRejects, e.js.Subject("tracker", "rejects"))
		if err != nil {
			return err
		}
		validate(t, "reject.json", m.Data)
		return nil
	})
	if st := admin(t, e.pod, "PUT", "/pipeline-types/brozzler", map[string]any{"lease": "2h", "max_tries": 5}, nil); st != 200 {
		t.Fatalf("put type: %d", st)
	}
	ck, _ := e.js.KV(ctx, bucketConfig)
	te, _ := ck.Get(ctx, "ptype.brozzler")
	validate(t, "type-config.json", te.Value)
	admin(t, e.pod, "PUT", "/stashes/s1", map[string]any{"concurrency": 2}, nil)
	se, _ := ck.Get(ctx, "stash.s1")
	validate(t, "stash-state.json", se.Value)
}

// TestSubmitAndStash: items published on tracker.submit are queued (once, even when published
// twice with an id); stashed items are drip-fed with the stash's concurrency.
func TestSubmitAndStash(t *testing.T) {
	e := newEnv(t, "--tracker-dripfeed-interval=50ms")
	secret := addPipeline(t, e.pod, "p1")
	ctx := ctxT(t)
	sub := e.js.Subject("tracker", "submit")
	for i := 0; i < 2; i++ {
		if _, err := e.js.Publish(ctx, sub, []byte(`{"id":"sub-1","item":"https://nats/","pipeline_type":"t","queued_by":"nats"}`), jetstream.PubOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.js.Publish(ctx, sub, []byte(`{"item":"https://anon/","pipeline_type":"t"}`), jetstream.PubOpts{}); err != nil {
		t.Fatal(err)
	}
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	var got []string
	jstest.Eventually(t, 10*time.Second, func() error {
		if cl := c.claim("t"); cl.Item.ID != "" {
			got = append(got, cl.Item.Item)
			c.call("Item:finish", map[string]any{"id": cl.Item.ID})
		}
		if len(got) < 2 {
			return fmt.Errorf("claimed %v", got)
		}
		return nil
	})
	if cl := c.claim("t"); cl.Item.ID != "" || strings.Join(got, ",") != "https://nats/,https://anon/" {
		t.Fatalf("submitted items: %v, extra %+v", got, cl.Item)
	}

	// stash: 5 items, drip-feed 2 at a time
	items := make([]map[string]any, 5)
	for i := range items {
		items[i] = map[string]any{"item": fmt.Sprintf("s%d", i), "pipeline_type": "t", "stash": "big"}
	}
	queueItems(t, e.pod, items...)
	if cl := c.claim("t"); cl.Item.ID != "" {
		t.Fatalf("stashed item claimed before drip-feed: %+v", cl.Item)
	}
	if st := admin(t, e.pod, "PUT", "/stashes/big", map[string]any{"concurrency": 2}, nil); st != 200 {
		t.Fatalf("stash: %d", st)
	}
	var held []string
	var all []string
	jstest.Eventually(t, 20*time.Second, func() error {
		cl := c.claim("t")
		if cl.Item.ID != "" {
			held = append(held, cl.Item.ID)
			all = append(all, cl.Item.Item)
		}
		if len(held) > 2 {
			return fmt.Errorf("more than 2 stashed items out at once: %v", held)
		}
		if len(held) == 2 {
			// finish one: the drip-feeder releases the next
			c.call("Item:finish", map[string]any{"id": held[0]})
			held = held[1:]
		}
		if len(all) < 5 {
			return fmt.Errorf("claimed %v", all)
		}
		return nil
	})
	var raw json.RawMessage
	admin(t, e.pod, "GET", "/stashes", nil, &raw)
	if !strings.Contains(string(raw), `"big"`) {
		t.Fatalf("stashes: %s", raw)
	}
}

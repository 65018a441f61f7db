package tracker

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestItemLifecycle drives one item through queue → claim → store → finish with the golden frames
// of the spec (§8), exactly as the reference client sends them.
func TestItemLifecycle(t *testing.T) {
	e := newEnv(t, "--tracker-info-url=https://example.org/info", "--tracker-events-stream")
	secret := addPipeline(t, e.pod, "pipe1")
	ids := queueItems(t, e.pod, map[string]any{"item": "https://example.com/", "pipeline_type": "brozzler",
		"priority": 0, "run_on": "", "queued_by": "alice", "metadata": map[string]any{"ua": "$default", "custom_js": nil}})
	id := ids[0]
	if strings.Contains(id, "_") {
		t.Fatalf("id %q contains _", id)
	}
	c := connect(t, e.pod.Addrs["tracker"], "pipe1", secret, true)

	r := c.send(`{"type":"System:ping","request":null,"seq":1}`)
	if r.Status != 204 || string(r.Payload) != "null" || *r.Seq != 1 {
		t.Fatalf("ping: %s", r.Raw)
	}
	r = c.send(`{"type":"Item:claim","request":{"pipeline_type":"brozzler"},"seq":2}`)
	if r.Status != 200 || *r.Seq != 2 {
		t.Fatalf("claim: %s", r.Raw)
	}
	var cl claimed
	if err := json.Unmarshal(r.Payload, &cl); err != nil {
		t.Fatal(err)
	}
	if cl.Item.ID != id || cl.Item.Item != "https://example.com/" || cl.Item.CurrentAttempt != 0 ||
		cl.Item.Status != "claimed" || cl.InfoURL != "https://example.org/info" || !strings.Contains(string(cl.Item.Metadata), `"ua":"$default"`) {
		t.Fatalf("claim payload: %s", r.Payload)
	}
	var entry map[string]json.RawMessage
	_ = json.Unmarshal(r.Payload, &struct{ Item *map[string]json.RawMessage }{&entry})
	for _, f := range []string{"id", "item", "queued_by", "pipeline_type", "status", "attempts", "queued_at", "claimed_at",
		"finished_at", "expires", "explanation", "parent_item", "priority", "run_on", "stash", "admin_log", "metadata", "_current_attempt"} {
		if _, ok := entry[f]; !ok {
			t.Errorf("claimed item lacks %s", f)
		}
	}
	if _, ok := entry["gen"]; ok {
		t.Errorf("claimed item shows internal field gen")
	}

	store := fmt.Sprintf(`{"type":"Item:store","request":{"result_type":"status_code","attempt":0,"result":200,"id":"%s"},"seq":3}`, id)
	r = c.send(store)
	if r.Status != 201 || *r.Seq != 3 {
		t.Fatalf("store: %s", r.Raw)
	}
	var st struct {
		NewID string `json:"new_id"`
	}
	_ = json.Unmarshal(r.Payload, &st)
	// retried store (same request, as the client retries after a lost answer): same new_id, one copy
	r = c.send(strings.Replace(store, `"seq":3`, `"seq":4`, 1))
	var st2 struct {
		NewID string `json:"new_id"`
	}
	_ = json.Unmarshal(r.Payload, &st2)
	if st.NewID == "" || st.NewID != st2.NewID {
		t.Fatalf("new_id not stable: %q vs %q", st.NewID, st2.NewID)
	}
	// a screenshot with base85 fields
	full := "Xk~0{Zv" // b85encode(b"hello")
	r = c.send(fmt.Sprintf(`{"type":"Item:store","request":{"result_type":"screenshot","attempt":0,"result":{"full":%q,"thumb":"Xk~0{"},"id":"%s","decode_fields":["full","thumb"]},"seq":5}`, full, id))
	c.expect(r, 201)
	ctx := ctxT(t)
	counts, err := e.js.SubjectCounts(ctx, streamResults, ">")
	if err != nil {
		t.Fatal(err)
	}
	if counts["tracker.results.brozzler.status_code"] != 1 || counts["tracker.results.brozzler.screenshot"] != 1 {
		t.Fatalf("results: %v", counts)
	}
	last, err := e.js.LastMsg(ctx, streamResults, "tracker.results.brozzler.screenshot")
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Data struct{ Full, Thumb string }
	}
	_ = json.Unmarshal(last.Data, &res)
	if res.Data.Full != "aGVsbG8=" || res.Data.Thumb != "aGVsbA==" {
		t.Fatalf("decoded fields: %s", last.Data)
	}

	r = c.send(fmt.Sprintf(`{"type":"Item:finish","request":{"id":"%s"},"seq":6}`, id))
	if r.Status != 204 || string(r.Payload) != "null" {
		t.Fatalf("finish: %s", r.Raw)
	}
	rec := getItem(t, e.pod, id)
	if rec.Status != StatusDone || rec.FinishedAt == nil || len(rec.Attempts) != 1 || rec.Attempts[0].Pipeline != "pipe1" ||
		rec.Attempts[0].PipelineVersion != "20260412.01" || rec.Claim != nil {
		t.Fatalf("record after finish: %+v", rec)
	}
	// retried finish: fine; a fail now: done is never overwritten
	c.seq = 6
	c.expect(c.call("Item:finish", map[string]any{"id": id}), 204)
	c.expect(c.call("Item:fail", map[string]any{"id": id, "message": "late", "attempt": 0, "fatal": false}), 409)
	if getItem(t, e.pod, id).Status != StatusDone {
		t.Fatal("done overwritten")
	}
	got := c.claim("brozzler")
	if got.Item.ID != "" {
		t.Fatalf("claimed a done item: %+v", got)
	}
	r = c.call("Item:claim", map[string]any{"pipeline_type": "brozzler"})
	if string(r.Payload) != `{"item":null,"message":"No items found."}` {
		t.Fatalf("empty claim payload: %s", r.Payload)
	}
	// metrics
	mfs, err := e.pod.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		seen[mf.GetName()] = true
	}
	for _, name := range []string{"jetbridge_tracker_claims_total", "jetbridge_tracker_finishes_total", "jetbridge_tracker_fails_total",
		"jetbridge_tracker_revocations_total", "jetbridge_tracker_stores_total", "jetbridge_command_duration_seconds", "jetbridge_connections"} {
		if !seen[name] {
			t.Errorf("metric %s missing", name)
		}
	}
	// item events were published (in batches, a moment after the changes)
	jstest.Eventually(t, 10*time.Second, func() error {
		ev, err := e.js.SubjectCounts(ctx, streamEvents, "tracker.events.>")
		if err != nil {
			return err
		}
		for _, k := range []string{"queued", "claimed", "done"} {
			if ev["tracker.events.brozzler."+k] == 0 {
				return fmt.Errorf("no %s event: %v", k, ev)
			}
		}
		return nil
	})
}

// TestFailRequeueAndMaxTries: Item:fail requeues until max_tries, then error + dead letter;
// fatal goes straight to error; older attempts count in the order.
func TestFailRequeueAndMaxTries(t *testing.T) {
	e := newEnv(t, "--tracker-max-tries=3")
	secret := addPipeline(t, e.pod, "p1")
	ids := queueItems(t, e.pod, map[string]any{"item": "https://a/", "pipeline_type": "brozzler"},
		map[string]any{"item": "https://b/", "pipeline_type": "brozzler"})
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	for try := 0; try < 3; try++ {
		cl := c.claim("brozzler")
		if try == 0 && cl.Item.ID != ids[0] {
			t.Fatalf("first claim got %s, want %s", cl.Item.ID, ids[0])
		}
		if try > 0 {
			// a failed item sinks (priority + attempts), so b comes first
			if cl.Item.ID != ids[1] && try == 1 {
				t.Fatalf("after a failure, want %s first, got %s", ids[1], cl.Item.ID)
			}
			if cl.Item.ID == ids[1] {
				c.expect(c.call("Item:finish", map[string]any{"id": ids[1]}), 204)
				cl = c.claim("brozzler")
			}
		}
		if cl.Item.ID != ids[0] || cl.Item.CurrentAttempt != try {
			t.Fatalf("try %d: claimed %+v", try, cl.Item)
		}
		c.expect(c.call("Item:fail", map[string]any{"id": ids[0], "message": fmt.Sprintf("boom %d", try), "attempt": try, "fatal": false}), 204)
	}
	rec := getItem(t, e.pod, ids[0])
	if rec.Status != StatusError || len(rec.Attempts) != 3 || rec.Attempts[2].Error == nil || *rec.Attempts[2].Error != "boom 2" {
		t.Fatalf("after max tries: %+v", rec)
	}
	if cl := c.claim("brozzler"); cl.Item.ID != "" {
		t.Fatalf("claimed an errored item: %+v", cl.Item)
	}
	ctx := ctxT(t)
	m, err := e.js.LastMsg(ctx, jetstream.DeadLetterStream, "dlq.tracker.items.brozzler")
	if err != nil {
		t.Fatalf("dead letter: %v", err)
	}
	if !strings.Contains(string(m.Data), ids[0]) || m.Header.Get(jetstream.HeaderDLQReason) == "" {
		t.Fatalf("dead letter: %s %v", m.Data, m.Header)
	}
	// fatal
	id := queueItems(t, e.pod, map[string]any{"item": "https://c/", "pipeline_type": "brozzler"})[0]
	cl := c.claim("brozzler")
	c.expect(c.call("Item:fail", map[string]any{"id": cl.Item.ID, "message": "fatal", "attempt": 0, "fatal": true}), 204)
	if rec := getItem(t, e.pod, id); rec.Status != StatusError {
		t.Fatalf("fatal: %+v", rec)
	}
	// a retried fail of the same attempt is a no-op
	c.expect(c.call("Item:fail", map[string]any{"id": id, "message": "fatal", "attempt": 0, "fatal": true}), 204)
}

// TestQueueOrder: pipeline-specific before general, then priority + attempts, then FIFO.
func TestQueueOrder(t *testing.T) {
	e := newEnv(t)
	secret := addPipeline(t, e.pod, "p1")
	addPipeline(t, e.pod, "p2")
	ids := queueItems(t, e.pod,
		map[string]any{"item": "g-prio5", "pipeline_type": "t", "priority": 5},
		map[string]any{"item": "g-prio0-a", "pipeline_type": "t"},
		map[string]any{"item": "other-pipeline", "pipeline_type": "t", "run_on": "p2", "priority": -10},
		map[string]any{"item": "g-prio0-b", "pipeline_type": "t"},
		map[string]any{"item": "mine-prio9", "pipeline_type": "t", "run_on": "p1", "priority": 9},
		map[string]any{"item": "g-prio-1", "pipeline_type": "t", "priority": -1},
		map[string]any{"item": "other-type", "pipeline_type": "zeno"},
	)
	_ = ids
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	var got []string
	for {
		// the older parameter name works too
		r := c.call("Item:claim", map[string]any{"pipeline": "t"})
		var cl claimed
		_ = json.Unmarshal(r.Payload, &cl)
		if cl.Item.ID == "" {
			break
		}
		got = append(got, cl.Item.Item)
	}
	want := []string{"mine-prio9", "g-prio-1", "g-prio0-a", "g-prio0-b", "g-prio5"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("order %v, want %v", got, want)
	}
}

// TestErrorRows covers every error row of the Decisions; the connection survives each of them.
func TestErrorRows(t *testing.T) {
	e := newEnv(t, "--tracker-command-timeout=1s")
	secret := addPipeline(t, e.pod, "p1")
	secret2 := addPipeline(t, e.pod, "p2")
	id := queueItems(t, e.pod, map[string]any{"item": "https://x/", "pipeline_type": "brozzler"})[0]
	c2 := connect(t, e.pod.Addrs["tracker"], "p2", secret2, true)
	if cl := c2.claim("brozzler"); cl.Item.ID != id {
		t.Fatalf("p2 claim: %+v", cl)
	}
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	rows := []struct {
		frame   string
		status  int
		message string
		seq     int64 // -1: no seq in the answer
	}{
		{`{not json`, 400, "Invalid JSON", -1},
		{`[1,2]`, 400, "Invalid JSON", -1},
		{`"x"`, 400, "Invalid JSON", -1},
		{`null`, 400, "Invalid JSON", -1},
		{`{"type":"System:ping","request":null}`, 400, "Missing message data", -1},
		{`{"request":null,"seq":7}`, 400, "Missing message data", 7},
		{`{"type":"System:ping","seq":"7"}`, 400, "Missing message data", -1},
		{`{"type":5,"seq":8}`, 400, "Missing message data", 8},
		{`{"type":"Item:nope","request":null,"seq":9}`, 404, "Request type Item:nope does not exist", 9},
		{`{"type":"Item:claim","request":{},"seq":10}`, 400, "Missing parameter: pipeline", 10},
		{`{"type":"Item:claim","request":{"pipeline_type":"brozzler","x":1},"seq":11}`, 400, "Unexpected parameter: x", 11},
		{`{"type":"Item:claim","request":{"pipeline_type":5},"seq":12}`, 400, "Parameter pipeline_type must be a string", 12},
		{`{"type":"Item:claim","request":[1],"seq":13}`, 400, "Parameter request must be an object or null", 13},
		{`{"type":"System:ping","request":{"disk":{}},"seq":14}`, 400, "Unexpected parameter: disk", 14},
		{`{"type":"Item:finish","request":{},"seq":15}`, 400, "Missing parameter: id", 15},
		{`{"type":"Item:fail","request":{"id":"x","message":"m","attempt":"0"},"seq":16}`, 400, "Parameter attempt must be an integer", 16},
		{`{"type":"Item:fail","request":{"id":"x","message":"m","fatal":"yes"},"seq":17}`, 400, "Parameter fatal must be a boolean", 17},
		{`{"type":"Item:store","request":{"id":"x","result_type":"a","result":1},"seq":18}`, 400, "Missing parameter: attempt", 18},
		{`{"type":"Item:store","request":{"id":"x","result_type":"a","attempt":0},"seq":19}`, 400, "Missing parameter: result", 19},
		{`{"type":"Item:finish","request":{"id":"no-such-item"},"seq":20}`, 404, "Item no-such-item not found", 20},
		{`{"type":"Item:finish","request":{"id":"bad_id"},"seq":21}`, 404, "Item bad_id not found", 21},
		{`{"type":"Item:store","request":{"id":"no-such-item","result_type":"a","attempt":0,"result":1},"seq":22}`, 404, "Item no-such-item not found", 22},
		// p2 holds the item: p1 may not finish, fail or store it
		{fmt.Sprintf(`{"type":"Item:finish","request":{"id":"%s"},"seq":23}`, id), 409, "claimed by another pipeline", 23},
		{fmt.Sprintf(`{"type":"Item:fail","request":{"id":"%s","message":"m","attempt":0,"fatal":false},"seq":24}`, id), 409, "belongs to another pipeline", 24},
		{fmt.Sprintf(`{"type":"Item:store","request":{"id":"%s","result_type":"a","attempt":0,"result":1},"seq":25}`, id), 409, "claimed by another pipeline", 25},
		{`{"type":"System:ping","request":null,"seq":26}`, 204, "", 26},
	}
	for _, row := range rows {
		r := c.send(row.frame)
		if r.Status != row.status || !strings.Contains(r.Message, row.message) {
			t.Errorf("%s: got %s, want %d %q", row.frame, r.Raw, row.status, row.message)
		}
		if row.seq < 0 && r.HasSeq {
			t.Errorf("%s: answer has seq: %s", row.frame, r.Raw)
		}
		if row.seq >= 0 && (r.Seq == nil || *r.Seq != row.seq) {
			t.Errorf("%s: want seq %d: %s", row.frame, row.seq, r.Raw)
		}
		if row.status >= 400 && (!r.HasPay || string(r.Payload) != "null") {
			t.Errorf("%s: error without payload null: %s", row.frame, r.Raw)
		}
	}
	// stale attempt from the holder: 409
	c2.seq = 100
	c2.expect(c2.call("Item:store", map[string]any{"id": id, "result_type": "a", "attempt": 3, "result": 1}), 409)
	c2.expect(c2.call("Item:fail", map[string]any{"id": id, "message": "m", "attempt": 1, "fatal": false}), 409)
	c2.expect(c2.call("Item:store", map[string]any{"id": id, "result_type": "s", "attempt": 0, "result": map[string]any{"full": "not base85 €"}, "decode_fields": []string{"full"}}), 400)
	c2.expect(c2.call("Item:store", map[string]any{"id": id, "result_type": "s", "attempt": 0, "result": map[string]any{}, "decode_fields": []string{"full"}}), 400)
	c2.expect(c2.call("Item:store", map[string]any{"id": id, "result_type": "s", "attempt": 0, "tries": 0, "result": 1}), 400)
	c2.expect(c2.call("Item:finish", map[string]any{"id": id}), 204)

	// 503 when NATS is gone: the error carries seq, and nothing is half-applied
	e.srv.Shutdown()
	c.seq = 200
	r := c.call("Item:claim", map[string]any{"pipeline_type": "brozzler"})
	if r.Status != 503 || *r.Seq != 201 {
		t.Fatalf("claim without NATS: %s", r.Raw)
	}
}

// TestLimits: claim budget and rate (429), minimum client version (426).
func TestLimits(t *testing.T) {
	e := newEnv(t, "--tracker-min-version=20250301.00")
	secret := addPipeline(t, e.pod, "p1")
	queueItems(t, e.pod, map[string]any{"item": "1", "pipeline_type": "t"}, map[string]any{"item": "2", "pipeline_type": "t"},
		map[string]any{"item": "3", "pipeline_type": "t"})
	if st := admin(t, e.pod, "PATCH", "/pipelines/p1", map[string]any{"budget": 1}, nil); st != 200 {
		t.Fatalf("patch: %d", st)
	}
	old := connect(t, e.pod.Addrs["tracker"], "p1", secret, false)
	old.raw(`{"v": "20250228.00"}`)
	old.expect(old.call("Item:claim", map[string]any{"pipeline_type": "t"}), 426)
	pre := connect(t, e.pod.Addrs["tracker"], "p1", secret, false) // no hello at all: version unknown
	pre.expect(pre.call("System:ping", nil), 426)

	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	first := c.claim("t")
	if first.Item.ID == "" {
		t.Fatal("no item")
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		r := c.call("Item:claim", map[string]any{"pipeline_type": "t"})
		if r.Status != 429 || !strings.Contains(r.Message, "budget") {
			return fmt.Errorf("over budget: %s", r.Raw)
		}
		return nil
	})
	c.expect(c.call("Item:finish", map[string]any{"id": first.Item.ID}), 204)
	admin(t, e.pod, "PATCH", "/pipelines/p1", map[string]any{"budget": 0, "claims_per_minute": 1}, nil)
	e.pod.Env.Log.Info("limits changed")
	// the limits are re-read within 5 s
	jstest.Eventually(t, 10*time.Second, func() error {
		r := c.call("Item:claim", map[string]any{"pipeline_type": "t"})
		if r.Status != 429 || !strings.Contains(r.Message, "rate") {
			if r.Status == 200 {
				var cl claimed
				_ = json.Unmarshal(r.Payload, &cl)
				if cl.Item.ID != "" {
					c.call("Item:finish", map[string]any{"id": cl.Item.ID})
				}
			}
			return fmt.Errorf("over rate: %s", r.Raw)
		}
		return nil
	})
}

// TestAuth: missing or wrong credentials get 401 with the realm, no WebSocket.
func TestAuth(t *testing.T) {
	e := newEnv(t)
	secret := addPipeline(t, e.pod, "p1")
	for _, cred := range [][2]string{{"", ""}, {"p1", "wrong"}, {"nobody", secret}, {"p1", ""}, {"p1:x", secret}} {
		_, resp, err := dialWS(e.pod.Addrs["tracker"], cred[0], cred[1])
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized ||
			resp.Header.Get("WWW-Authenticate") != `Basic realm="jetbridge tracker"` {
			st := 0
			if resp != nil {
				st = resp.StatusCode
			}
			t.Fatalf("creds %q: err %v, status %d", cred, err, st)
		}
	}
	// deleting the pipeline locks it out
	connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	if st := admin(t, e.pod, "DELETE", "/pipelines/p1", nil, nil); st != 204 {
		t.Fatalf("delete: %d", st)
	}
	if _, resp, err := dialWS(e.pod.Addrs["tracker"], "p1", secret); err == nil || resp.StatusCode != 401 {
		t.Fatal("deleted pipeline still accepted")
	}
	var list []map[string]any
	admin(t, e.pod, "GET", "/pipelines", nil, &list)
	if len(list) != 0 {
		t.Fatalf("pipelines after delete: %v", list)
	}
	// secrets are stored as argon2id hashes
	ctx := ctxT(t)
	kv, _ := e.js.KV(ctx, bucketPipes)
	addPipeline(t, e.pod, "p3")
	ent, err := kv.Get(ctx, "p3")
	if err != nil || !strings.Contains(string(ent.Value), "$argon2id$") {
		t.Fatalf("stored pipeline: %s %v", ent.Value, err)
	}
}

// TestHelloVariants: a client from before the hello works; "p": 2 is refused with the reason.
func TestHelloVariants(t *testing.T) {
	e := newEnv(t)
	secret := addPipeline(t, e.pod, "p1")
	pre := connect(t, e.pod.Addrs["tracker"], "p1", secret, false)
	pre.expect(pre.call("System:ping", nil), 204)
	r := pre.call("Item:claim", map[string]any{"pipeline_type": "x"})
	if string(r.Payload) != `{"item":null,"message":"No items found."}` {
		t.Fatalf("pre-hello claim: %s", r.Raw)
	}
	// Python json.dumps spacing, as the reference client really sends it
	py := connect(t, e.pod.Addrs["tracker"], "p1", secret, false)
	py.raw(`{"v": "20260412.01-debug"}`)
	r = py.send(`{"type": "System:ping", "request": null, "seq": 1}`)
	if r.Status != 204 || *r.Seq != 1 {
		t.Fatalf("python-style ping: %s", r.Raw)
	}

	for _, hello := range []string{`{"v": "x", "p": 2, "num_slots": 4}`, `{"v":"x","p":"2"}`, `{"v":"x","p":1.5}`} {
		c := connect(t, e.pod.Addrs["tracker"], "p1", secret, false)
		c.raw(hello)
		_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := c.c.ReadMessage()
		var ce *websocket.CloseError
		if !errorsAs(err, &ce) || ce.Text != "Protocol mismatch! Please update your client" {
			t.Fatalf("%s: want close with reason, got %v", hello, err)
		}
	}
	// p: 1 is fine
	ok := connect(t, e.pod.Addrs["tracker"], "p1", secret, false)
	ok.raw(`{"v": "x", "p": 1}`)
	ok.expect(ok.call("System:ping", nil), 204)
}

// TestGarbageFramesKeepConnection: random bytes, binary frames and half-valid JSON never wedge the
// connection: each gets an error frame and a ping still works afterwards.
func TestGarbageFramesKeepConnection(t *testing.T) {
	e := newEnv(t)
	secret := addPipeline(t, e.pod, "p1")
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		n := rnd.IntN(300)
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rnd.IntN(256))
		}
		if i%3 == 0 && n > 2 {
			b[0], b[n-1] = '{', '}'
		}
		typ := websocket.TextMessage
		if i%5 == 0 {
			typ = websocket.BinaryMessage
		}
		if err := c.c.WriteMessage(typ, b); err != nil {
			t.Fatal(err)
		}
		r := c.read()
		if r.Status < 400 {
			t.Fatalf("garbage %q answered %s", b, r.Raw)
		}
	}
	c.seq = 1000
	c.expect(c.call("System:ping", nil), 204)
}

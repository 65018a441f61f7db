package tracker

import (
	"fmt"
	"github.com/gorilla/websocket"
	"hash/fnv"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestAdminOperations: requeue and abandon (with the revoked advisory to the claimant), limbo,
// per-pipeline-type max tries, pipeline listing and validation.
func TestAdminOperations(t *testing.T) {
	e := newEnv(t)
	secret := addPipeline(t, e.pod, "p1")
	ids := queueItems(t, e.pod, map[string]any{"item": "https://a/", "pipeline_type": "t"},
		map[string]any{"item": "https://b/", "pipeline_type": "t"})
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	if cl := c.claim("t"); cl.Item.ID != ids[0] {
		t.Fatalf("claim: %+v", cl.Item)
	}
	var limbo []map[string]any
	jstest.Eventually(t, 5*time.Second, func() error {
		admin(t, e.pod, "GET", "/limbo?older_than=0s", nil, &limbo)
		if len(limbo) != 1 || limbo[0]["id"] != ids[0] || limbo[0]["pipeline"] != "p1" {
			return fmt.Errorf("limbo %v", limbo)
		}
		return nil
	})
	admin(t, e.pod, "GET", "/limbo", nil, &limbo)
	if len(limbo) != 0 {
		t.Fatalf("24h limbo: %v", limbo)
	}
	if st := admin(t, e.pod, "GET", "/limbo?older_than=yesterday", nil, nil); st != 400 {
		t.Fatalf("bad older_than: %d", st)
	}
	// abandon the claimed item: error, dead letter, advisory
	var rec Record
	if st := admin(t, e.pod, "POST", "/items/"+ids[0]+"/abandon", map[string]any{"reason": "broken site"}, &rec); st != 200 || rec.Status != StatusError {
		t.Fatalf("abandon: %d %+v", st, rec)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		c.call("System:ping", nil)
		if len(c.advisories) == 0 {
			return fmt.Errorf("no advisory")
		}
		return nil
	})
	if fmt.Sprint(c.advisories[0]["payload"]) != fmt.Sprintf("map[attempt:0 id:%s reason:abandoned by operator]", ids[0]) {
		t.Fatalf("advisory: %v", c.advisories[0])
	}
	c.expect(c.call("Item:finish", map[string]any{"id": ids[0]}), 409)
	ctx := ctxT(t)
	if m, err := e.js.LastMsg(ctx, jetstream.DeadLetterStream, "dlq.tracker.items.t"); err != nil || !strings.Contains(string(m.Data), ids[0]) {
		t.Fatalf("dead letter: %v", err)
	}
	// requeue it: todo again, claimable, attempts kept
	if st := admin(t, e.pod, "POST", "/items/"+ids[0]+"/requeue", nil, &rec); st != 200 || rec.Status != StatusTodo || len(rec.AdminLog) != 2 {
		t.Fatalf("requeue: %d %+v", st, rec)
	}
	got := map[string]bool{}
	for i := 0; i < 2; i++ {
		cl := c.claim("t")
		got[cl.Item.ID] = true
		c.expect(c.call("Item:finish", map[string]any{"id": cl.Item.ID}), 204)
	}
	if !got[ids[0]] || !got[ids[1]] {
		t.Fatalf("claimed %v", got)
	}
	if st := admin(t, e.pod, "POST", "/items/"+ids[0]+"/requeue", nil, nil); st != 409 {
		t.Fatalf("requeue of a done item: %d", st)
	}
	if st := admin(t, e.pod, "POST", "/items/nope/abandon", nil, nil); st != 404 {
		t.Fatalf("abandon unknown: %d", st)
	}
	if st := admin(t, e.pod, "GET", "/items/nope", nil, nil); st != 404 {
		t.Fatalf("unknown item: %d", st)
	}
	// per pipeline type: max tries 1
	if st := admin(t, e.pod, "PUT", "/pipeline-types/t", map[string]any{"max_tries": 1}, nil); st != 200 {
		t.Fatalf("type: %d", st)
	}
	id := queueItems(t, e.pod, map[string]any{"item": "https://c/", "pipeline_type": "t"})[0]
	jstest.Eventually(t, 10*time.Second, func() error { // the setting is cached up to 5 s
		cl := c.claim("t")
		if cl.Item.ID == "" {
			return fmt.Errorf("no item")
		}
		c.expect(c.call("Item:fail", map[string]any{"id": id, "message": "x", "attempt": cl.Item.CurrentAttempt}), 204)
		if r := getItem(t, e.pod, id); r.Status != StatusError {
			return fmt.Errorf("status %s after %d attempts", r.Status, len(r.Attempts))
		}
		return nil
	})
	// validation
	for _, bad := range []map[string]any{{"item": "", "pipeline_type": "t"}, {"item": "x", "pipeline_type": "a.b"},
		{"item": "x", "pipeline_type": "t", "id": "a_b"}, {"item": "x", "pipeline_type": "t", "bogus": 1},
		{"item": "x", "pipeline_type": "t", "metadata": []int{1}}} {
		if st := admin(t, e.pod, "POST", "/items", bad, nil); st != 400 {
			t.Errorf("bad item %v: %d", bad, st)
		}
	}
	if st := admin(t, e.pod, "POST", "/items", map[string]any{"item": "x", "pipeline_type": "t", "id": ids[1]}, nil); st != 409 {
		t.Errorf("duplicate id: %d", st)
	}
	// a retried submission (same id, same content) is answered like the first one and changes nothing
	var again struct{ IDs []string }
	item := map[string]any{"item": "https://again/", "pipeline_type": "t2", "id": "again-1", "metadata": map[string]any{"ua": "x"}}
	for i := 0; i < 2; i++ {
		if st := admin(t, e.pod, "POST", "/items", item, &again); st != 201 || len(again.IDs) != 1 || again.IDs[0] != "again-1" {
			t.Fatalf("submission %d of again-1: %d %v", i, st, again.IDs)
		}
	}
	item["priority"] = 5
	if st := admin(t, e.pod, "POST", "/items", item, nil); st != 409 {
		t.Errorf("same id, other priority: %d", st)
	}
	for _, name := range []string{"", "a_b", "-x", "a.b"} {
		if st := admin(t, e.pod, "POST", "/pipelines", map[string]any{"name": name}, nil); st != 400 {
			t.Errorf("pipeline name %q: %d", name, st)
		}
	}
	if st := admin(t, e.pod, "POST", "/pipelines", map[string]any{"name": "p1"}, nil); st != 409 {
		t.Errorf("duplicate pipeline: %d", st)
	}
	var pl []map[string]any
	admin(t, e.pod, "GET", "/pipelines", nil, &pl)
	if len(pl) != 1 || pl[0]["name"] != "p1" || pl[0]["connections"].(float64) != 1 {
		t.Fatalf("pipelines: %v", pl)
	}
}

// TestConsumerRemovedWhileIdle: a ready consumer deleted behind the pod's back (the server does
// that after a day without pulls) is bound again by the next claim, which succeeds.
func TestConsumerRemovedWhileIdle(t *testing.T) {
	e := newEnv(t)
	secret := addPipeline(t, e.pod, "p1")
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	queueItems(t, e.pod, map[string]any{"item": "1", "pipeline_type": "t"})
	if cl := c.claim("t"); cl.Item.ID == "" {
		t.Fatal("no item")
	}
	e.a.q.consMu.Lock()
	var names []string
	for subj := range e.a.q.cons {
		names = append(names, subj)
	}
	e.a.q.consMu.Unlock()
	ctx := ctxT(t)
	for _, subj := range names {
		h := fnv.New64a()
		_, _ = h.Write([]byte(subj))
		if err := e.js.DeleteConsumer(ctx, streamReady, fmt.Sprintf("TRACKER_RQ_%016x", h.Sum64())); err != nil {
			t.Fatal(err)
		}
	}
	id := queueItems(t, e.pod, map[string]any{"item": "2", "pipeline_type": "t"})[0]
	if r := c.call("Item:claim", map[string]any{"pipeline_type": "t"}); r.Status != 200 || !strings.Contains(string(r.Payload), id) {
		t.Fatalf("claim after the consumer was removed: %s", r.Raw)
	}
}

// TestDrainClosesConnections: a drained pod closes its connections with "going away" and refuses
// new ones.
func TestDrainClosesConnections(t *testing.T) {
	e := newEnv(t)
	secret := addPipeline(t, e.pod, "p1")
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	c.expect(c.call("System:ping", nil), 204)
	e.pod.Shutdown(t)
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := c.c.ReadMessage()
	var ce *websocket.CloseError
	if !errorsAs(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("want going away, got %v", err)
	}
	if _, _, err := dialWS(e.pod.Addrs["tracker"], "p1", secret); err == nil {
		t.Fatal("drained pod accepted a connection")
	}
}

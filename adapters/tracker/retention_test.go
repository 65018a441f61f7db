package tracker

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestKeepFinished: with --tracker-keep-finished, the records of done and error items expire
// (404, gone from the queue counts) while claimed items stay; an expired item's id can be queued
// again; an items bucket made without per-record TTLs (an older jetbridge) is upgraded at start,
// and a pod without the flag still starts against it.
func TestKeepFinished(t *testing.T) {
	srv := jstest.Server(t)
	js := jstest.Connect(t, srv)
	ctx := ctxT(t)
	// the bucket as earlier versions declared it: no LimitMarkerTTL
	if _, err := js.Provision(ctx, jetstream.Assets{Buckets: []jetstream.BucketSpec{{Name: bucketItems}}}); err != nil {
		t.Fatal(err)
	}
	pod := bridgetest.Start(t, js, New(), "--tracker-keep-finished=1s", "--tracker-argon2-memory=64")
	secret := addPipeline(t, pod, "p1")
	item := func(u string) map[string]any {
		return map[string]any{"id": "keep" + u, "item": "https://" + u + "/", "pipeline_type": "k", "queued_by": "op"}
	}
	ids := queueItems(t, pod, item("a"), item("b"), item("c"))
	c := connect(t, pod.Addrs["tracker"], "p1", secret, true)
	for i := range ids {
		cl := c.claim("k")
		if cl.Item.ID != ids[i] {
			t.Fatalf("claim %d: %+v", i, cl.Item)
		}
	}
	c.expect(c.call("Item:finish", map[string]any{"id": ids[0]}), 204)
	c.expect(c.call("Item:fail", map[string]any{"id": ids[1], "message": "gone", "fatal": true, "attempt": 0}), 204)
	if r := getItem(t, pod, ids[0]); r.Status != StatusDone {
		t.Fatalf("finished item: %+v", r)
	}
	jstest.Eventually(t, 20*time.Second, func() error {
		for _, id := range ids[:2] {
			if st := admin(t, pod, "GET", "/items/"+id, nil, nil); st != 404 {
				return fmt.Errorf("item %s: %d, want 404 once expired", id, st)
			}
		}
		return nil
	})
	if r := getItem(t, pod, ids[2]); r.Status != StatusClaimed {
		t.Fatalf("claimed item must stay: %+v", r)
	}
	// a finish retried after the record expired reads the item as unknown
	c.expect(c.call("Item:finish", map[string]any{"id": ids[0]}), 404)
	var queues struct {
		PipelineTypes map[string]map[string]int `json:"pipeline_types"`
	}
	admin(t, pod, "GET", "/queues", nil, &queues)
	if k := queues.PipelineTypes["k"]; k["done"] != 0 || k["error"] != 0 || k["claimed"] != 1 {
		t.Fatalf("queues after expiry: %v", queues.PipelineTypes)
	}
	// the claimed item is still in limbo and finishes normally (its record never had a TTL)
	var limbo []map[string]any
	admin(t, pod, "GET", "/limbo?older_than=0s", nil, &limbo)
	if len(limbo) != 1 || limbo[0]["id"] != ids[2] {
		t.Fatalf("limbo: %v", limbo)
	}
	c.expect(c.call("Item:finish", map[string]any{"id": ids[2]}), 204)
	// an expired item's id is free again
	again := queueItems(t, pod, item("a"))
	if again[0] != ids[0] {
		t.Fatalf("queued again as %v", again)
	}
	if r := getItem(t, pod, ids[0]); r.Status != StatusTodo || len(r.Attempts) != 0 {
		t.Fatalf("queued again: %+v", r)
	}
	if cl := c.claim("k"); cl.Item.ID != ids[0] {
		t.Fatalf("claim of the queued-again item: %+v", cl.Item)
	}
	// a pod without the flag starts against the bucket (its TTLs stay on) and reads the items
	podB := bridgetest.Start(t, js, New(), "--tracker-argon2-memory=64")
	if r := getItem(t, podB, ids[0]); r.Status != StatusClaimed {
		t.Fatalf("through a pod without the flag: %+v", r)
	}
}

// TestKeepFinishedDefaultKeepsRecords: without the flag a done record carries no TTL.
func TestKeepFinishedDefaultKeepsRecords(t *testing.T) {
	e := newEnv(t, "--tracker-argon2-memory=64")
	secret := addPipeline(t, e.pod, "p1")
	id := queueItems(t, e.pod, map[string]any{"item": "https://a/", "pipeline_type": "k"})[0]
	c := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	c.claim("k")
	c.expect(c.call("Item:finish", map[string]any{"id": id}), 204)
	m, err := e.js.LastMsg(ctxT(t), "KV_"+bucketItems, "$KV."+bucketItems+"."+id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), `"status":"done"`) || m.Header.Get("Nats-TTL") != "" {
		t.Fatalf("done record: ttl %q, %s", m.Header.Get("Nats-TTL"), m.Data)
	}
}

// TestKeepFinishedFlagValidation: a refused value fails when the flag is parsed, before
// provisioning could switch the bucket's TTLs on; Start refuses it too.
func TestKeepFinishedFlagValidation(t *testing.T) {
	for _, bad := range []string{"500ms", "-1s", "soon"} {
		a := New()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		fs.SetOutput(io.Discard)
		a.Flags(fs)
		if err := fs.Parse([]string{"--tracker-keep-finished=" + bad}); err == nil || !strings.Contains(err.Error(), "tracker-keep-finished") {
			t.Errorf("--tracker-keep-finished=%s parsed: %v", bad, err)
		}
		if a.itemsMarkerTTL() != 0 {
			t.Errorf("--tracker-keep-finished=%s: the bucket would get TTLs", bad)
		}
	}
	a := New()
	a.keepFinished = 500 * time.Millisecond
	if err := a.Start(context.Background(), &bridge.Env{}); err == nil || !strings.Contains(err.Error(), "tracker-keep-finished") {
		t.Errorf("Start with 500ms: %v", err)
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	a = New()
	a.Flags(fs)
	if err := fs.Parse([]string{"--tracker-keep-finished=720h"}); err != nil || a.keepFinished != 720*time.Hour || a.itemsMarkerTTL() == 0 {
		t.Errorf("720h: %v %s", err, a.keepFinished)
	}
}

// TestExpiredIDStartsANewLife: after its record expired, an id queued again gets generations
// above those of its earlier life, so a ready token left from that life does not claim it (here a
// general-queue token must not hand a run_on item to another pipeline), a token further ahead of
// its record than one generation is dropped at once, and the id can be stashed and drip-fed again.
func TestExpiredIDStartsANewLife(t *testing.T) {
	e := newEnv(t, "--tracker-keep-finished=1s", "--tracker-argon2-memory=64", "--tracker-dripfeed-interval=50ms")
	ctx := ctxT(t)
	sP, sQ := addPipeline(t, e.pod, "pp"), addPipeline(t, e.pod, "qq")
	p := connect(t, e.pod.Addrs["tracker"], "pp", sP, true)
	q := connect(t, e.pod.Addrs["tracker"], "qq", sQ, true)
	gone := func(id string) {
		t.Helper()
		jstest.Eventually(t, 20*time.Second, func() error {
			if st := admin(t, e.pod, "GET", "/items/"+id, nil, nil); st != 404 {
				return fmt.Errorf("item %s: %d, want 404 once expired", id, st)
			}
			return nil
		})
	}
	queueItems(t, e.pod, map[string]any{"id": "life", "item": "https://l/", "pipeline_type": "L"})
	oldGen := getItem(t, e.pod, "life").Gen
	store := map[string]any{"id": "life", "attempt": 0, "result_type": "status", "result": 200}
	if cl := p.claim("L"); cl.Item.ID != "life" {
		t.Fatalf("claim: %+v", cl.Item)
	}
	p.expect(p.call("Item:store", store), 201)
	p.expect(p.call("Item:finish", map[string]any{"id": "life"}), 204)
	gone("life")

	// a token of the first life in the general queue, then the id again, for pipeline pp only
	general := e.js.Subject("tracker", "ready", "L", "_", "0")
	if _, err := e.js.Publish(ctx, general, encodeToken("life", oldGen), jetstream.PubOpts{}); err != nil {
		t.Fatal(err)
	}
	queueItems(t, e.pod, map[string]any{"id": "life", "item": "https://l/", "pipeline_type": "L", "run_on": "pp"})
	rec := getItem(t, e.pod, "life")
	if rec.Gen <= oldGen || rec.Status != StatusTodo {
		t.Fatalf("second life: gen %d after %d, %+v", rec.Gen, oldGen, rec)
	}
	if cl := q.claim("L"); cl.Item.ID != "" {
		t.Fatalf("pipeline qq claimed the run_on item through an old token: %+v", cl.Item)
	}
	// a token two generations ahead of the record is not held back: it is dropped
	if _, err := e.js.Publish(ctx, general, encodeToken("life", rec.Gen+2), jetstream.PubOpts{}); err != nil {
		t.Fatal(err)
	}
	if cl := q.claim("L"); cl.Item.ID != "" {
		t.Fatalf("claimed through a token ahead of its record: %+v", cl.Item)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		n, err := e.js.SubjectCounts(ctx, streamReady, general)
		if err != nil {
			return err
		}
		if n[general] != 0 {
			return fmt.Errorf("%d tokens left in the general queue", n[general])
		}
		return nil
	})
	if cl := p.claim("L"); cl.Item.ID != "life" {
		t.Fatalf("pipeline pp: %+v", cl.Item)
	}
	// the same result in the second life is a new result, not a retry of the first life's
	p.expect(p.call("Item:store", store), 201)
	results := e.js.Subject("tracker", "results", "L", "status")
	if n, err := e.js.SubjectCounts(ctx, streamResults, results); err != nil || n[results] != 2 {
		t.Fatalf("results of both lives: %v %v", n, err)
	}
	p.expect(p.call("Item:finish", map[string]any{"id": "life"}), 204)
	gone("life")

	// stashed, drip-fed and finished; expired; stashed again under the same id: drip-fed again
	if st := admin(t, e.pod, "PUT", "/stashes/st", map[string]any{"concurrency": 1}, nil); st != 200 {
		t.Fatalf("stash: %d", st)
	}
	for round := range 2 {
		queueItems(t, e.pod, map[string]any{"id": "stashed", "item": "https://s/", "pipeline_type": "S", "stash": "st"})
		jstest.Eventually(t, 10*time.Second, func() error {
			if cl := p.claim("S"); cl.Item.ID != "stashed" {
				return fmt.Errorf("round %d: not drip-fed yet", round)
			}
			return nil
		})
		p.expect(p.call("Item:finish", map[string]any{"id": "stashed"}), 204)
		gone("stashed")
	}
}

package tracker

import (
	"context"
	"fmt"
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

func TestKeepFinishedFlagValidation(t *testing.T) {
	for _, bad := range []string{"500ms", "-1s"} {
		a := New()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		a.Flags(fs)
		if err := fs.Parse([]string{"--tracker-keep-finished=" + bad}); err != nil {
			t.Fatal(err)
		}
		err := a.Start(context.Background(), &bridge.Env{})
		if err == nil || !strings.Contains(err.Error(), "tracker-keep-finished") {
			t.Errorf("--tracker-keep-finished=%s: %v", bad, err)
		}
	}
}

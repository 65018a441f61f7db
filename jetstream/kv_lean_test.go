package jetstream_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// WriteLean: a create (rev 0) only on an empty key, an update only at the current revision, a
// TTL that expires the value; every failed condition is ErrConflict.
func TestKVWriteLean(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.Provision(ctx, jetstream.Assets{Buckets: []jetstream.BucketSpec{{Name: "ZT_LEAN", LimitMarkerTTL: time.Minute}}}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KV(ctx, "ZT_LEAN")
	if err != nil {
		t.Fatal(err)
	}
	r1, err := kv.WriteLean(ctx, "k", []byte("one"), 0, 0)
	if err != nil || r1 == 0 {
		t.Fatalf("create: %d %v", r1, err)
	}
	if _, err := kv.WriteLean(ctx, "k", []byte("again"), 0, 0); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("second create: %v", err)
	}
	r2, err := kv.WriteLean(ctx, "k", []byte("two"), r1, 0)
	if err != nil || r2 <= r1 {
		t.Fatalf("update: %d %v", r2, err)
	}
	if _, err := kv.WriteLean(ctx, "k", []byte("stale"), r1, 0); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("stale update: %v", err)
	}
	if e, err := kv.Get(ctx, "k"); err != nil || string(e.Value) != "two" || e.Revision != r2 {
		t.Fatalf("get: %+v %v", e, err)
	}
	if _, err := kv.WriteLean(ctx, "k", []byte("short-lived"), r2, time.Second); err != nil {
		t.Fatalf("update with ttl: %v", err)
	}
	jstest.Eventually(t, 10*time.Second, func() error {
		if _, err := kv.Get(ctx, "k"); !errors.Is(err, jetstream.ErrNotFound) {
			return errors.New("not expired yet")
		}
		return nil
	})
	// A deleted key keeps its marker: rev 0 conflicts, Create works.
	if _, err := kv.WriteLean(ctx, "k", []byte("x"), 0, 0); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("create over a delete marker: %v", err)
	}
	if _, err := kv.Create(ctx, "k", []byte("x"), 0); err != nil {
		t.Fatalf("Create over a delete marker: %v", err)
	}
}

// PublishExpect: only on an empty subject (0) or at its last sequence; ErrConflict otherwise.
func TestPublishExpect(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "ZT_PX", Subjects: []string{"ztpx.>"}, Retention: jetstream.WorkQueue}}}); err != nil {
		t.Fatal(err)
	}
	a1, err := js.PublishExpect(ctx, "ztpx.a", []byte("1"), 0, 0)
	if err != nil || a1.Sequence == 0 {
		t.Fatalf("first: %+v %v", a1, err)
	}
	if _, err := js.PublishExpect(ctx, "ztpx.a", []byte("2"), 0, 0); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("subject not empty: %v", err)
	}
	if _, err := js.PublishExpect(ctx, "ztpx.b", []byte("3"), 0, 0); err != nil {
		t.Fatalf("other subject: %v", err)
	}
	if _, err := js.PublishExpect(ctx, "ztpx.a", []byte("4"), a1.Sequence, 0); err != nil {
		t.Fatalf("at the last sequence: %v", err)
	}
	if _, err := js.PublishExpect(ctx, "ztpxnone.x", []byte("5"), 0, 0); err == nil || errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("no stream: %v", err)
	}
}

package jetstream_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

func TestStreamSubjectCounts(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "SC", Subjects: []string{"sc.>"}}}}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"sc.a.1", "sc.a.1", "sc.a.2", "sc.b.1"} {
		if _, err := js.Publish(ctx, s, []byte("x"), jetstream.PubOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ { // second call uses the cached handle
		got, err := js.StreamSubjectCounts(ctx, "SC", "sc.a.>")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got["sc.a.1"] != 2 || got["sc.a.2"] != 1 {
			t.Fatalf("counts %v", got)
		}
	}
	if _, err := js.StreamSubjectCounts(ctx, "NOPE", ">"); err == nil {
		t.Fatal("missing stream: no error")
	}
}

func TestPublishAsyncAndCreateAsync(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "PA", Subjects: []string{"pa.>"}}},
		Buckets: []jetstream.BucketSpec{{Name: "PAKV"}}}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KV(ctx, "PAKV")
	if err != nil {
		t.Fatal(err)
	}
	// a publish and a create in flight together, both acknowledged
	pub, err := js.PublishAsync(js.Subject("pa", "x"), []byte("1"), jetstream.PubOpts{})
	if err != nil {
		t.Fatal(err)
	}
	cr, err := kv.CreateAsync("k1", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if ack, err := pub.Wait(ctx); err != nil || ack.Sequence != 1 {
		t.Fatalf("publish: %+v %v", ack, err)
	}
	ack, err := cr.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, "k1"); err != nil || e.Revision != ack.Sequence || string(e.Value) != "v1" {
		t.Fatalf("get: %+v %v (create rev %d)", e, err, ack.Sequence)
	}
	// a second create of the key: ErrExists, the value stays
	cr, _ = kv.CreateAsync("k1", []byte("v2"))
	if _, err := cr.Wait(ctx); !errors.Is(err, jetstream.ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	// a failed expected-last-sequence condition: ErrConflict
	f, _ := js.PublishAsync(js.Subject("pa", "x"), []byte("2"), jetstream.PubOpts{ExpectLastSubjectSeq: 99})
	if _, err := f.Wait(ctx); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("conflict: %v", err)
	}
	// waiting gives up with the context
	f, _ = js.PublishAsync(js.Subject("pa", "y"), []byte("3"), jetstream.PubOpts{})
	done, stop := context.WithCancel(ctx)
	stop()
	if _, err := f.Wait(done); err == nil {
		// the ack may have been there already: then it was a success, which is fine
		t.Log("ack arrived before the cancelled wait")
	}
}

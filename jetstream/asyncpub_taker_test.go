package jetstream_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

func TestSubjectCounts(t *testing.T) {
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
		got, err := js.SubjectCounts(ctx, "SC", "sc.a.>")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got["sc.a.1"] != 2 || got["sc.a.2"] != 1 {
			t.Fatalf("counts %v", got)
		}
	}
	if _, err := js.SubjectCounts(ctx, "NOPE", ">"); err == nil {
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

func TestTaker(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "TK", Subjects: []string{js.Subject("tk", ">")}, Retention: jetstream.WorkQueue}},
		Consumers: []jetstream.ConsumerSpec{{Stream: "TK", Durable: "W", AckWait: 30 * time.Second}}}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx, "TK", "W")
	if err != nil {
		t.Fatal(err)
	}
	tk := cons.Taker()
	defer tk.Close()
	// empty: nil at once, and after waiting
	if j, err := tk.Next(ctx, 0); j != nil || err != nil {
		t.Fatalf("empty no-wait: %v %v", j, err)
	}
	start := time.Now()
	if j, err := tk.Next(ctx, 50*time.Millisecond); j != nil || err != nil || time.Since(start) < 40*time.Millisecond {
		t.Fatalf("empty wait: %v %v after %v", j, err, time.Since(start))
	}
	// a message published while a taker waits arrives
	go func() {
		time.Sleep(20 * time.Millisecond)
		_, _ = js.Publish(ctx, js.Subject("tk", "a"), []byte("m1"), jetstream.PubOpts{})
	}()
	j, err := tk.Next(ctx, 5*time.Second)
	if err != nil || j == nil || string(j.Data) != "m1" || j.Subject != js.Subject("tk", "a") || j.Deliveries != 1 || j.Sequence != 1 || j.Time.IsZero() {
		t.Fatalf("take: %+v %v", j, err)
	}
	// given back: comes again, with the delivery counted; acked: gone
	if err := j.Retry(0); err != nil {
		t.Fatal(err)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		j, err = tk.Next(ctx, 100*time.Millisecond)
		if err != nil || j == nil || j.Deliveries != 2 {
			return fmt.Errorf("redelivery: %+v %v", j, err)
		}
		return nil
	})
	if err := j.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if j, err := tk.Next(ctx, 0); j != nil || err != nil {
		t.Fatalf("after ack: %v %v", j, err)
	}
	// many takers at once: each message exactly once
	const n = 200
	for i := 0; i < n; i++ {
		if _, err := js.Publish(ctx, js.Subject("tk", "b"), []byte(strconv.Itoa(i)), jetstream.PubOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j, err := tk.Next(ctx, 0)
				if err != nil {
					t.Error(err)
					return
				}
				if j == nil {
					return
				}
				mu.Lock()
				seen[string(j.Data)]++
				mu.Unlock()
				_ = j.AckAsync()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("took %d distinct of %d", len(seen), n)
	}
	for k, c := range seen {
		if c != 1 {
			t.Fatalf("message %s taken %d times", k, c)
		}
	}
	// a consumer that is gone is an error
	if err := js.DeleteConsumer(ctx, "TK", "W"); err != nil {
		t.Fatal(err)
	}
	if j, err := tk.Next(ctx, 0); err == nil {
		t.Fatalf("deleted consumer: %v, no error", j)
	}
	tk.Close()
	if _, err := tk.Next(ctx, 0); err == nil {
		t.Fatal("closed taker: no error")
	}
}

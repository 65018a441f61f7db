package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// eventually polls fn until it returns nil or within passes (no jstest: import cycle).
func eventually(t *testing.T, within time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatchBatched: the current values, the end-of-initial marker, then puts and deletes in
// revision order; when its consumer disappears the watch makes a new one and goes on from the
// last revision it delivered (nothing lost, nothing twice); more writes than one look takes all
// arrive; it returns nil when ctx ends.
func TestWatchBatched(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, kv := watchedBucket(t, ctx, BucketSpec{Name: "WB"})
	for _, k := range []string{"a", "b", "a"} {
		if _, err := kv.Put(ctx, k, []byte(k+"0")); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var got []string
	var lastRev uint64
	wctx, wcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- kv.WatchBatched(wctx, ">", true, 5*time.Millisecond, func(e Entry) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case e.Key == "":
				got = append(got, "|")
				return
			case e.Revision <= lastRev:
				got = append(got, fmt.Sprintf("out-of-order:%d", e.Revision))
			case e.Deleted:
				got = append(got, "-"+e.Key)
			default:
				got = append(got, e.Key+"="+string(e.Value))
			}
			lastRev = e.Revision
		})
	}()
	wait := func(want string) {
		t.Helper()
		eventually(t, 10*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if s := strings.Join(got, " "); s != want {
				return errors.New(s)
			}
			return nil
		})
	}
	wait("b=b0 a=a0 |")
	if _, err := kv.Put(ctx, "c", []byte("c1")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "a", 0); err != nil {
		t.Fatal(err)
	}
	wait("b=b0 a=a0 | c=c1 -a")

	// the consumer goes away under the watch: writes made meanwhile still arrive, once each
	st, err := js.js.Stream(ctx, "KV_WB")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range st.ConsumerNames(ctx).Name() {
		names = append(names, n)
	}
	_ = jetstream.AckNonePolicy
	if len(names) != 1 {
		t.Fatalf("consumers: %v", names)
	}
	if err := st.DeleteConsumer(ctx, names[0]); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ { // distinct keys: a bucket keeps one value per key
		if _, err := kv.Put(ctx, fmt.Sprint("d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	wait("b=b0 a=a0 | c=c1 -a d0=x d1=x d2=x")

	// more writes than one look takes
	for i := 0; i < 2*watchBatch+10; i++ {
		if _, err := kv.Put(ctx, fmt.Sprint("e", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 8+2*watchBatch+10 {
			return fmt.Errorf("%d entries", len(got))
		}
		for _, g := range got {
			if strings.HasPrefix(g, "out-of-order") {
				return errors.New(g)
			}
		}
		return nil
	})
	wcancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WatchBatched did not return after cancel")
	}
}

// TestWatchBatchedSeesExpiry: a value whose TTL runs out reaches the watch as a deletion (the
// server's marker), not as a value.
func TestWatchBatchedSeesExpiry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, kv := watchedBucket(t, ctx, BucketSpec{Name: "WX", LimitMarkerTTL: time.Minute})
	var mu sync.Mutex
	var got []string
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go func() {
		_ = kv.WatchBatched(wctx, ">", true, 5*time.Millisecond, func(e Entry) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case e.Key == "":
				got = append(got, "|")
			case e.Deleted:
				got = append(got, "-"+e.Key)
			default:
				got = append(got, e.Key+"="+string(e.Value))
			}
		})
	}()
	state := func(want string) func() error {
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			if s := strings.Join(got, " "); s != want {
				return errors.New(s)
			}
			return nil
		}
	}
	eventually(t, 10*time.Second, state("|")) // the watch is past the (empty) initial values
	if _, err := kv.WriteLean(ctx, "short", []byte("v"), 0, time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, state("| short=v -short"))
}

// watchedBucket starts a server for the test, connects to it and provisions the bucket spec.
func watchedBucket(t *testing.T, ctx context.Context, spec BucketSpec) (*Client, *KV) {
	t.Helper()
	srv, err := StartEmbedded(EmbeddedConfig{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	js, err := Connect(ctx, ConnConfig{URLs: srv.ClientURL(), Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(js.Close)
	if _, err := js.Provision(ctx, Assets{Buckets: []BucketSpec{spec}}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KV(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}

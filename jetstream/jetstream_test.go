package jetstream_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
	"github.com/jetbridge/jetbridge/schemas"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func workAssets(n jetstream.Names, ackWait time.Duration, maxDeliver int) jetstream.Assets {
	return jetstream.Assets{
		Streams: []jetstream.StreamSpec{{Name: "WORK", Subjects: []string{n.Subject("work", ">")}, Retention: jetstream.WorkQueue}},
		Consumers: []jetstream.ConsumerSpec{{Stream: "WORK", Durable: "WORKERS", AckWait: ackWait, MaxDeliver: maxDeliver,
			FilterSubjects: []string{n.Subject("work", ">")}}},
		Buckets: []jetstream.BucketSpec{{Name: "STATE", History: 1}},
	}
}

func TestNames(t *testing.T) {
	n := jetstream.NewNames("acme.eu.")
	if got := n.Subject("tracker", "items", "x"); got != "acme.eu.tracker.items.x" {
		t.Fatalf("subject %q", got)
	}
	if got := n.Asset("TRACKER"); got != "ACME_EU_TRACKER" {
		t.Fatalf("asset %q", got)
	}
	if got := n.Unprefix("acme.eu.tracker.x"); got != "tracker.x" {
		t.Fatalf("unprefix %q", got)
	}
	plain := jetstream.NewNames("")
	if plain.Subject("a", "b") != "a.b" || plain.Asset("X") != "X" {
		t.Fatal("empty prefix must not change names")
	}
	for in, want := range map[string]string{"abc": "abc", "a.b": "a%2Eb", "a b*>": "a%20b%2A%3E", "": "_", "50%": "50%25"} {
		if got := jetstream.Token(in); got != want {
			t.Errorf("Token(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestProvisionIsIdempotentAndSafeConcurrently(t *testing.T) {
	srv := jstest.Server(t)
	a, b := jstest.Connect(t, srv), jstest.Connect(t, srv)
	assets := workAssets(a.Names(), time.Second, 5)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, c := range []*jetstream.Client{a, b} {
		wg.Add(1)
		go func(i int, c *jetstream.Client) {
			defer wg.Done()
			_, errs[i] = c.Provision(ctxT(t), assets)
		}(i, c)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("provisioner %d: %v", i, err)
		}
	}
	states, err := a.Provision(ctxT(t), assets)
	if err != nil {
		t.Fatalf("second provision: %v", err)
	}
	if len(states) != 3 {
		t.Fatalf("want 3 asset states, got %+v", states)
	}
	for _, s := range states {
		if s.State != "ready" {
			t.Fatalf("asset %+v not ready", s)
		}
	}
}

func TestProvisionConflictNamesTheAsset(t *testing.T) {
	c := jstest.Connect(t, jstest.Server(t))
	if _, err := c.Provision(ctxT(t), workAssets(c.Names(), time.Second, 5)); err != nil {
		t.Fatal(err)
	}
	conflicting := jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "WORK", Subjects: []string{"work.>"}, Retention: jetstream.Limits}}}
	_, err := c.Provision(ctxT(t), conflicting)
	if err == nil || !strings.Contains(err.Error(), "stream WORK") {
		t.Fatalf("want an error naming stream WORK, got %v", err)
	}
}

func TestPublishDeDuplicatesRetries(t *testing.T) {
	c := jstest.Connect(t, jstest.Server(t))
	if _, err := c.Provision(ctxT(t), workAssets(c.Names(), time.Second, 5)); err != nil {
		t.Fatal(err)
	}
	first, err := c.Publish(ctxT(t), "work.a", []byte("x"), jetstream.PubOpts{MsgID: "job-1"})
	if err != nil || first.Duplicate {
		t.Fatalf("first publish: %+v %v", first, err)
	}
	again, err := c.Publish(ctxT(t), "work.a", []byte("x"), jetstream.PubOpts{MsgID: "job-1"})
	if err != nil || !again.Duplicate || again.Sequence != first.Sequence {
		t.Fatalf("retry must be a duplicate of seq %d: %+v %v", first.Sequence, again, err)
	}
	info, err := c.StreamInfo(ctxT(t), "WORK")
	if err != nil || info.Messages != 1 {
		t.Fatalf("want 1 message, got %+v %v", info, err)
	}
}

func TestJobLeaseRetryExtendAndDeadLetter(t *testing.T) {
	c := jstest.Connect(t, jstest.Server(t))
	// The lease is long enough that a loaded machine still renews it in time (Extend every 100 ms).
	assets := workAssets(c.Names(), time.Second, 10)
	assets.Merge(jetstream.DeadLetterAssets(c.Names(), 0))
	if _, err := c.Provision(ctxT(t), assets); err != nil {
		t.Fatal(err)
	}
	cons, err := c.Consumer(ctxT(t), "WORK", "WORKERS")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctxT(t), "work.q1", []byte("payload"), jetstream.PubOpts{Header: jetstream.Header{"X-Kind": {"test"}}}); err != nil {
		t.Fatal(err)
	}
	fetchOne := func() *jetstream.Job {
		t.Helper()
		var job *jetstream.Job
		jstest.Eventually(t, 10*time.Second, func() error {
			jobs, err := cons.Fetch(ctxT(t), 1, 200*time.Millisecond)
			if err != nil {
				return err
			}
			if len(jobs) != 1 {
				return errors.New("no job yet")
			}
			job = jobs[0]
			return nil
		})
		return job
	}
	// Lease expiry: not acked → redelivered with a higher delivery count.
	j1 := fetchOne()
	if j1.Deliveries != 1 || string(j1.Data) != "payload" || j1.Header.Get("X-Kind") != "test" {
		t.Fatalf("first delivery: %+v", j1)
	}
	j2 := fetchOne()
	if j2.Deliveries != 2 || j2.Sequence != j1.Sequence {
		t.Fatalf("lease expiry must redeliver the same message: %+v", j2)
	}
	// Extend keeps the lease: while extended, nothing is redelivered.
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if err := j2.Extend(); err != nil {
			t.Fatal(err)
		}
		jobs, err := cons.FetchNoWait(1)
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) != 0 {
			t.Fatalf("extended job redelivered: %+v", jobs[0])
		}
		time.Sleep(100 * time.Millisecond) // pacing the lease renewals, not synchronisation
	}
	// Retry with delay → redelivered later.
	if err := j2.Retry(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	j3 := fetchOne()
	if j3.Deliveries != 3 {
		t.Fatalf("retry: %+v", j3)
	}
	// Dead-letter: copied with the reason, removed from the work queue; retried, one copy.
	if err := j3.DeadLetter(ctxT(t), "handler said fatal"); err != nil {
		t.Fatal(err)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		info, err := c.StreamInfo(ctxT(t), "WORK")
		if err != nil {
			return err
		}
		if info.Messages != 0 {
			return errors.New("work queue not empty after dead-letter")
		}
		return nil
	})
	dl, err := c.LastMsg(ctxT(t), jetstream.DeadLetterStream, "dlq.work.q1")
	if err != nil {
		t.Fatal(err)
	}
	if string(dl.Data) != "payload" || dl.Header.Get(jetstream.HeaderDLQReason) != "handler said fatal" ||
		dl.Header.Get("X-Kind") != "test" || dl.Header.Get(jetstream.HeaderDLQDeliveries) != "3" {
		t.Fatalf("dead letter: %q %v", dl.Data, dl.Header)
	}
	if err := schemas.Validate("jetbridge/dlq-headers.schema.json", map[string][]string(dl.Header)); err != nil {
		t.Fatal(err)
	}
}

func TestMaxDeliveriesMovedToDeadLetter(t *testing.T) {
	c := jstest.Connect(t, jstest.Server(t))
	assets := workAssets(c.Names(), 100*time.Millisecond, 2)
	assets.Merge(jetstream.DeadLetterAssets(c.Names(), 0))
	assets.Merge(c.DeadLetterMoverAssets([]string{"WORK"}))
	if _, err := c.Provision(ctxT(t), assets); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.RunDeadLetterMover(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mover: %v", err)
		}
	}()
	cons, err := c.Consumer(ctxT(t), "WORK", "WORKERS")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctxT(t), "work.poison", []byte("bad"), jetstream.PubOpts{}); err != nil {
		t.Fatal(err)
	}
	// Take it twice without acking; the server then gives up and advises; the mover moves it.
	jstest.Eventually(t, 15*time.Second, func() error {
		if _, err := cons.Fetch(ctxT(t), 1, 150*time.Millisecond); err != nil {
			return err
		}
		m, err := c.LastMsg(ctxT(t), jetstream.DeadLetterStream, "dlq.work.poison")
		if err != nil {
			return err
		}
		if m.Header.Get(jetstream.HeaderDLQReason) != "max deliveries exceeded" {
			return errors.New("wrong reason " + m.Header.Get(jetstream.HeaderDLQReason))
		}
		return nil
	})
	jstest.Eventually(t, 5*time.Second, func() error {
		info, err := c.StreamInfo(ctxT(t), "WORK")
		if err != nil {
			return err
		}
		if info.Messages != 0 {
			return errors.New("poison message still in the work queue")
		}
		return nil
	})
}

func TestKVCreateUpdateConflictAndMutate(t *testing.T) {
	c := jstest.Connect(t, jstest.Server(t))
	if _, err := c.Provision(ctxT(t), workAssets(c.Names(), time.Second, 5)); err != nil {
		t.Fatal(err)
	}
	kv, err := c.KV(ctxT(t), "STATE")
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctxT(t), "k", []byte("1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctxT(t), "k", []byte("2"), 0); !errors.Is(err, jetstream.ErrExists) {
		t.Fatalf("second create: want ErrExists, got %v", err)
	}
	rev2, err := kv.Update(ctxT(t), "k", []byte("2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctxT(t), "k", []byte("3"), rev); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("stale update: want ErrConflict, got %v", err)
	}
	if err := kv.Delete(ctxT(t), "k", rev); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("stale delete: want ErrConflict, got %v", err)
	}
	if err := kv.Delete(ctxT(t), "k", rev2); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctxT(t), "k"); !errors.Is(err, jetstream.ErrNotFound) {
		t.Fatalf("deleted key: want ErrNotFound, got %v", err)
	}
	// 20 concurrent increments through Mutate: none lost.
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := kv.Mutate(ctxT(t), "counter", func(cur []byte, exists bool) ([]byte, error) {
				n := 0
				if exists {
					n, _ = strconv.Atoi(string(cur))
				}
				return []byte(strconv.Itoa(n + 1)), nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	e, err := kv.Get(ctxT(t), "counter")
	if err != nil || string(e.Value) != "20" {
		t.Fatalf("counter = %q, %v; want 20", e.Value, err)
	}
	keys, err := kv.Keys(ctxT(t), "")
	if err != nil || len(keys) != 1 || keys[0] != "counter" {
		t.Fatalf("keys %v %v", keys, err)
	}
}

func TestRequestReplyAndQueueGroups(t *testing.T) {
	srv := jstest.Server(t)
	c := jstest.Connect(t, srv)
	if _, err := c.Request(ctxT(t), "svc.none", []byte("x"), nil); !errors.Is(err, jetstream.ErrNoResponders) {
		t.Fatalf("want ErrNoResponders, got %v", err)
	}
	var mu sync.Mutex
	served := map[string]int{}
	for _, name := range []string{"a", "b"} {
		name := name
		other := jstest.Connect(t, srv)
		sub, err := other.Subscribe("svc.echo", "group", func(m *jetstream.Msg) {
			mu.Lock()
			served[name]++
			mu.Unlock()
			_ = m.Respond(append([]byte(name+":"), m.Data...), nil)
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
		if err := other.Flush(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 50; i++ {
		rep, err := c.Request(ctxT(t), "svc.echo", []byte("hi"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(string(rep.Data), ":hi") {
			t.Fatalf("reply %q", rep.Data)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if served["a"]+served["b"] != 50 {
		t.Fatalf("each request must be served once by the group: %v", served)
	}
}

func TestClientReconnectsAfterServerRestart(t *testing.T) {
	dir := t.TempDir()
	srv := jstest.ServerIn(t, dir)
	addr := srv.ClientAddr()
	c := jstest.Connect(t, srv)
	if _, err := c.Provision(ctxT(t), workAssets(c.Names(), time.Second, 5)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctxT(t), "work.keep", []byte("kept"), jetstream.PubOpts{}); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	jstest.Eventually(t, 10*time.Second, func() error {
		if c.State().Connected {
			return errors.New("still connected")
		}
		return nil
	})
	jstest.ServerAt(t, dir, addr)
	jstest.Eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx)
	})
	m, err := c.LastMsg(ctxT(t), "WORK", "work.keep")
	if err != nil || string(m.Data) != "kept" {
		t.Fatalf("message lost across restart: %v %v", m, err)
	}
	if c.State().Reconnects == 0 {
		t.Fatal("reconnect not counted")
	}
}

func TestClusterR3WorkQueueSurvivesANodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test skipped in -short mode")
	}
	cl := jstest.StartCluster(t, 3)
	c := jstest.ConnectURL(t, cl.URLs(), "", 3)
	if _, err := c.Provision(ctxT(t), workAssets(c.Names(), 5*time.Second, 5)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctxT(t), "work.r3", []byte("replicated"), jetstream.PubOpts{MsgID: "r3-1"}); err != nil {
		t.Fatal(err)
	}
	cl.Kill(0)
	var got *jetstream.Job
	jstest.Eventually(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		cons, err := c.Consumer(ctx, "WORK", "WORKERS")
		if err != nil {
			return err
		}
		jobs, err := cons.Fetch(ctx, 1, time.Second)
		if err != nil {
			return err
		}
		if len(jobs) == 0 {
			return errors.New("no message yet")
		}
		got = jobs[0]
		return nil
	})
	if string(got.Data) != "replicated" {
		t.Fatalf("got %q", got.Data)
	}
	jstest.Eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return got.Ack(ctx)
	})
}

// Durable fan-out with groups: a limits stream, one durable consumer per group. Every group gets
// every message; inside a group each message goes to one member; a group created later still gets
// what was published before it (durable), and a member that stops consuming leaves its messages to
// the others after the lease.
func TestDurableFanOutWithGroups(t *testing.T) {
	srv := jstest.Server(t)
	c := jstest.Connect(t, srv)
	n := c.Names()
	if _, err := c.Provision(ctxT(t), jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "EVENTS",
		Subjects: []string{n.Subject("events", ">")}, MaxAge: time.Hour}}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if _, err := c.Publish(ctxT(t), "events.e"+strconv.Itoa(i), []byte(strconv.Itoa(i)), jetstream.PubOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	type got struct {
		mu   sync.Mutex
		seen map[string]int
	}
	consume := func(group string, members int) *got {
		g := &got{seen: map[string]int{}}
		for m := 0; m < members; m++ {
			member := jstest.Connect(t, srv)
			cons, err := member.EnsureConsumer(ctxT(t), jetstream.ConsumerSpec{Stream: "EVENTS", Durable: group, AckWait: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			stop, err := cons.Consume(func(j *jetstream.Job) {
				g.mu.Lock()
				g.seen[string(j.Data)]++
				g.mu.Unlock()
				_ = j.AckAsync()
			}, 4)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
		}
		return g
	}
	a := consume("GROUP_A", 3)
	b := consume("GROUP_B", 1)
	for _, g := range []*got{a, b} {
		jstest.Eventually(t, 30*time.Second, func() error {
			g.mu.Lock()
			defer g.mu.Unlock()
			if len(g.seen) != 20 {
				return errors.New("group has " + strconv.Itoa(len(g.seen)) + " of 20")
			}
			return nil
		})
		g.mu.Lock()
		for k, v := range g.seen {
			if v != 1 {
				t.Errorf("message %s delivered %d times inside one group", k, v)
			}
		}
		g.mu.Unlock()
	}
}

func TestGetMsgNotFound(t *testing.T) {
	c := jstest.Connect(t, jstest.Server(t))
	if _, err := c.Provision(ctxT(t), workAssets(c.Names(), time.Second, 5)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetMsg(ctxT(t), "WORK", 42); !errors.Is(err, jetstream.ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
	if _, err := c.LastMsg(ctxT(t), "WORK", "work.none"); !errors.Is(err, jetstream.ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
}

func TestKVWriteLeanExpiresAndDetectsConflicts(t *testing.T) {
	c := jstest.Connect(t, jstest.Server(t))
	if _, err := c.Provision(ctxT(t), jetstream.Assets{Buckets: []jetstream.BucketSpec{{Name: "TTLS", LimitMarkerTTL: time.Second}}}); err != nil {
		t.Fatal(err)
	}
	kv, err := c.KV(ctxT(t), "TTLS")
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctxT(t), "k", []byte("v1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.WriteLean(ctxT(t), "k", []byte("v2"), rev+100, time.Second); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("stale WriteLean: want ErrConflict, got %v", err)
	}
	if _, err := kv.WriteLean(ctxT(t), "k", []byte("v2"), rev, time.Second); err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctxT(t), "k"); err != nil || string(e.Value) != "v2" {
		t.Fatalf("after WriteLean: %q %v", e.Value, err)
	}
	jstest.Eventually(t, 15*time.Second, func() error {
		if _, err := kv.Get(ctxT(t), "k"); !errors.Is(err, jetstream.ErrNotFound) {
			return fmt.Errorf("key not expired yet (%v)", err)
		}
		return nil
	})
	// A conditional publish that loses reports ErrConflict too.
	if _, err := c.Publish(ctxT(t), "$KV."+c.Names().Asset("TTLS")+".other", []byte("x"), jetstream.PubOpts{ExpectLastSubjectSeq: 999}); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("want ErrConflict, got %v", err)
	}
}

// TestProvisionKeepsKeyTTLs: a bucket whose per-key TTLs another pod switched on keeps them when
// a pod that does not need them provisions it (the server refuses to switch them off).
func TestProvisionKeepsKeyTTLs(t *testing.T) {
	c := jstest.Connect(t, jstest.Server(t))
	ctx := ctxT(t)
	if _, err := c.Provision(ctx, jetstream.Assets{Buckets: []jetstream.BucketSpec{{Name: "KT"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Provision(ctx, jetstream.Assets{Buckets: []jetstream.BucketSpec{{Name: "KT", LimitMarkerTTL: time.Minute}}}); err != nil {
		t.Fatalf("switching TTLs on: %v", err)
	}
	if _, err := c.Provision(ctx, jetstream.Assets{Buckets: []jetstream.BucketSpec{{Name: "KT"}}}); err != nil {
		t.Fatalf("a pod without TTLs: %v", err)
	}
	kv, err := c.KV(ctx, "KT")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "k", []byte("v"), time.Second); err != nil {
		t.Fatalf("a key with a TTL after the second provision: %v", err)
	}
}

// TestProvisionKeyTTLsRace: a pod with per-key TTLs and one without provisioning the same bucket
// at the same moment both succeed (the one without reads the bucket again when the other switched
// TTLs on between its read and its update).
func TestProvisionKeyTTLsRace(t *testing.T) {
	srv := jstest.Server(t)
	a, b := jstest.Connect(t, srv), jstest.Connect(t, srv)
	ctx := ctxT(t)
	for i := range 20 {
		name := fmt.Sprint("KR", i)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, spec := range []jetstream.BucketSpec{{Name: name, LimitMarkerTTL: time.Minute}, {Name: name}} {
			c := []*jetstream.Client{a, b}[j]
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[j] = c.Provision(ctx, jetstream.Assets{Buckets: []jetstream.BucketSpec{spec}})
			}()
		}
		wg.Wait()
		for j, err := range errs {
			if err != nil {
				t.Fatalf("bucket %s, provisioner %d: %v", name, j, err)
			}
		}
	}
}

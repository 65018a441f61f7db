package tracker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestTwoPods: an item claimed through pod A is finished through pod B; a pod killed mid-claim
// loses nothing: the lease brings the item back and pod B hands it out again.
func TestTwoPods(t *testing.T) {
	srv := jstest.Server(t)
	jsA, jsB := jstest.Connect(t, srv), jstest.Connect(t, srv)
	args := []string{"--tracker-lease=3s", "--tracker-sweep-interval=100ms"}
	podA := bridgetest.Start(t, jsA, New(), args...)
	podB := bridgetest.Start(t, jsB, New(), args...)
	secret := addPipeline(t, podA, "p1")
	ids := queueItems(t, podB, map[string]any{"item": "https://one/", "pipeline_type": "brozzler"},
		map[string]any{"item": "https://two/", "pipeline_type": "brozzler"})

	ca := connect(t, podA.Addrs["tracker"], "p1", secret, true)
	cb := connect(t, podB.Addrs["tracker"], "p1", secret, true)
	first := ca.claim("brozzler")
	if first.Item.ID != ids[0] {
		t.Fatalf("claim via A: %+v", first.Item)
	}
	// pings through pod B renew the lease of the claim made through pod A
	lease0 := getItem(t, podA, ids[0]).Claim.LeaseUntil
	jstest.Eventually(t, 5*time.Second, func() error {
		cb.expect(cb.call("System:ping", nil), 204)
		if l := getItem(t, podA, ids[0]).Claim.LeaseUntil; l <= lease0 {
			return fmt.Errorf("lease not renewed: %v", l)
		}
		return nil
	})
	cb.expect(cb.call("Item:store", map[string]any{"id": ids[0], "result_type": "final_url", "attempt": 0, "result": "https://one/"}), 201)
	cb.expect(cb.call("Item:finish", map[string]any{"id": ids[0]}), 204)
	if r := getItem(t, podA, ids[0]); r.Status != StatusDone {
		t.Fatalf("after finish via B: %+v", r)
	}

	// second item: claimed via A, then A dies (no drain) with its NATS connection
	second := ca.claim("brozzler")
	if second.Item.ID != ids[1] {
		t.Fatalf("second claim: %+v", second.Item)
	}
	podA.Kill(t)
	jsA.Close()
	var again claimed
	jstest.Eventually(t, 15*time.Second, func() error {
		again = cb.claim("brozzler")
		if again.Item.ID == "" {
			return fmt.Errorf("item not back yet")
		}
		return nil
	})
	if again.Item.ID != ids[1] || again.Item.CurrentAttempt != 1 {
		t.Fatalf("after pod A died: %+v", again.Item)
	}
	rec := getItem(t, podB, ids[1])
	if len(rec.Attempts) != 2 || rec.Attempts[0].Error == nil || *rec.Attempts[0].Error != "lease expired" {
		t.Fatalf("record: %+v", rec)
	}
	// the expired lease was also advertised to p1's connection on pod B
	jstest.Eventually(t, 5*time.Second, func() error {
		cb.call("System:ping", nil)
		if len(cb.advisories) == 0 {
			return fmt.Errorf("no advisory")
		}
		return nil
	})
	cb.expect(cb.call("Item:finish", map[string]any{"id": ids[1]}), 204)
}

// TestLeaseExpiryAdvisory: a claim whose lease runs out is requeued with an Item:revoked advisory
// to the claimant; a pipeline that pings keeps its claim.
func TestLeaseExpiryAdvisory(t *testing.T) {
	e := newEnv(t, "--tracker-lease=1500ms", "--tracker-sweep-interval=50ms")
	secret := addPipeline(t, e.pod, "p1")
	ids := queueItems(t, e.pod, map[string]any{"item": "https://lost/", "pipeline_type": "t"},
		map[string]any{"item": "https://kept/", "pipeline_type": "t"})
	lost := connect(t, e.pod.Addrs["tracker"], "p1", secret, true)
	if cl := lost.claim("t"); cl.Item.ID != ids[0] {
		t.Fatalf("claim: %+v", cl)
	}
	secret2 := addPipeline(t, e.pod, "p2")
	keeper := connect(t, e.pod.Addrs["tracker"], "p2", secret2, true)
	if cl := keeper.claim("t"); cl.Item.ID != ids[1] {
		t.Fatalf("claim: %+v", cl)
	}
	// the keeper pings every 200 ms for more than two leases
	stop := time.Now().Add(3500 * time.Millisecond)
	for time.Now().Before(stop) {
		keeper.expect(keeper.call("System:ping", nil), 204)
		time.Sleep(200 * time.Millisecond) // the client's ping cadence, not synchronisation
	}
	if r := getItem(t, e.pod, ids[1]); r.Status != StatusClaimed || len(r.Attempts) != 1 {
		t.Fatalf("pinged claim lost: %+v", r)
	}
	keeper.expect(keeper.call("Item:finish", map[string]any{"id": ids[1]}), 204)

	// the other one expired: the advisory arrives unsolicited, seq null
	_ = lost.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var adv map[string]any
	if len(lost.advisories) > 0 {
		adv = lost.advisories[0]
	} else {
		_, data, err := lost.c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if err := jsonUnmarshal(data, &adv); err != nil {
			t.Fatal(err)
		}
	}
	want := fmt.Sprintf(`map[payload:map[attempt:0 id:%s reason:lease expired] seq:<nil> type:Item:revoked]`, ids[0])
	if fmt.Sprint(adv) != want {
		t.Fatalf("advisory %v, want %s", adv, want)
	}
	r := getItem(t, e.pod, ids[0])
	if r.Status != StatusTodo || r.Attempts[0].Error == nil {
		t.Fatalf("after expiry: %+v", r)
	}
	// the late finish of the revoked claim is refused
	lost.expect(lost.call("Item:finish", map[string]any{"id": ids[0]}), 409)
	// max tries via expiries: 3 attempts → error
	for i := 1; i < 3; i++ {
		jstest.Eventually(t, 10*time.Second, func() error {
			if cl := lost.claim("t"); cl.Item.ID != ids[0] {
				return fmt.Errorf("not claimable yet")
			}
			return nil
		})
	}
	jstest.Eventually(t, 10*time.Second, func() error {
		if r := getItem(t, e.pod, ids[0]); r.Status != StatusError {
			return fmt.Errorf("status %s", r.Status)
		}
		return nil
	})
}

// TestConcurrentPipelines: 50 pipelines, spread over two pods, claim 5,000 items; every item is
// claimed exactly once at a time and finished exactly once. With -short: 1,000 items.
func TestConcurrentPipelines(t *testing.T) {
	n := 5000
	if testing.Short() {
		n = 1000
	}
	e := newEnv(t, "--tracker-argon2-memory=64")
	// a second pod on the same NATS: pipelines alternate between the two
	podB := bridgetest.Start(t, jstest.Connect(t, e.srv), New(), "--tracker-argon2-memory=64")
	addrs := []string{e.pod.Addrs["tracker"], podB.Addrs["tracker"]}
	const pipes = 50
	secrets := make([]string, pipes)
	for i := range secrets {
		secrets[i] = addPipeline(t, e.pod, fmt.Sprintf("p%d", i))
	}
	items := make([]map[string]any, n)
	for i := range items {
		items[i] = map[string]any{"item": fmt.Sprintf("https://x/%d", i), "pipeline_type": "brozzler", "priority": i % 3}
	}
	start := time.Now()
	ids := queueItems(t, e.pod, items...)
	t.Logf("queued %d items in %v", n, time.Since(start))
	clients := make([]*wsClient, pipes)
	var cw sync.WaitGroup
	for p := 0; p < pipes; p++ {
		cw.Add(1)
		go func() {
			defer cw.Done()
			c, _, err := dialWS(addrs[p%2], fmt.Sprintf("p%d", p), secrets[p])
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(func() { c.Close() })
			_ = c.WriteMessage(1, []byte(`{"v": "20260412.01"}`))
			clients[p] = &wsClient{c: c}
		}()
	}
	cw.Wait()
	if t.Failed() {
		t.FailNow()
	}
	start = time.Now()
	var mu sync.Mutex
	holder := map[string]string{}
	claims := map[string]int{}
	finishes := map[string]int{}
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, pipes)
	for p := 0; p < pipes; p++ {
		name := fmt.Sprintf("p%d", p)
		c := clients[p]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for done.Load() < int64(n) {
				r, err := c.tryCall("Item:claim", map[string]any{"pipeline_type": "brozzler"})
				if err != nil {
					errs <- err
					return
				}
				var cl claimed
				_ = jsonUnmarshal(r.Payload, &cl)
				if cl.Item.ID == "" {
					continue
				}
				id := cl.Item.ID
				mu.Lock()
				if h, ok := holder[id]; ok {
					mu.Unlock()
					errs <- fmt.Errorf("%s claimed %s while %s holds it", name, id, h)
					return
				}
				holder[id] = name
				claims[id]++
				mu.Unlock()
				r, err = c.tryCall("Item:finish", map[string]any{"id": id})
				if err != nil || r.Status != 204 {
					errs <- fmt.Errorf("finish %s: %v %s", id, err, r.Raw)
					return
				}
				mu.Lock()
				delete(holder, id)
				finishes[id]++
				mu.Unlock()
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	t.Logf("%d pipelines claimed and finished %d items in %v (%.0f items/s)", pipes, n, elapsed, float64(n)/elapsed.Seconds())
	for _, id := range ids {
		if claims[id] != 1 || finishes[id] != 1 {
			t.Fatalf("item %s claimed %d times, finished %d times", id, claims[id], finishes[id])
		}
	}
	var q struct {
		PipelineTypes map[string]map[string]int `json:"pipeline_types"`
	}
	admin(t, e.pod, "GET", "/queues", nil, &q)
	if q.PipelineTypes["brozzler"]["done"] != n {
		t.Fatalf("queues: %v", q)
	}
}

// Item:store checks the claim against the pod's copy of the record, which can lag a claim made
// through another pod; a copy that says "not yours" is checked against the bucket before a 409.
func TestStoreWithALaggingCopy(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	a := New()
	pod := bridgetest.Start(t, js, a)
	secret := addPipeline(t, pod, "p2")
	ids := queueItems(t, pod, map[string]any{"item": "https://lag/", "pipeline_type": "brozzler"})
	c := connect(t, pod.Addrs["tracker"], "p2", secret, true)
	if got := c.claim("brozzler"); got.Item.ID != ids[0] {
		t.Fatalf("claim: %+v", got.Item)
	}
	// make this pod's copy an older one: the item claimed by p1 (as before a requeue and the
	// claim by p2 through another pod reached this pod's watch)
	x := a.q.index
	x.mu.Lock()
	ci, ok := x.m[ids[0]]
	if !ok || ci.rec == nil {
		x.mu.Unlock()
		t.Fatalf("claim not in the index with its record: %+v", ci)
	}
	stale := ci.rec.clone()
	stale.Claim.Pipeline = "p1"
	ci.rec, ci.val = stale, encodeRecord(stale)
	x.mu.Unlock()
	c.expect(c.call("Item:store", map[string]any{"id": ids[0], "result_type": "status_code", "attempt": 0, "result": 200}), 201)
	// the bucket still refuses what is really not p2's
	c.expect(c.call("Item:store", map[string]any{"id": ids[0], "result_type": "status_code", "attempt": 3, "result": 200}), 409)
}

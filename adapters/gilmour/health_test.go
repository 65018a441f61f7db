package gilmour

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

func nodeStatus(t *testing.T, url, id string) string {
	t.Helper()
	code, b := call(t, "GET", url+"/nodes/"+id, nil)
	if code != 200 {
		t.Fatalf("GET node: %d %s", code, b)
	}
	return decode[NodeDetail](t, b).Status
}

func waitStatus(t *testing.T, url, id, want string) {
	t.Helper()
	jstest.Eventually(t, 10*time.Second, func() error {
		if s := nodeStatus(t, url, id); s != want {
			return fmt.Errorf("status %s, want %s", s, want)
		}
		return nil
	})
}

// TestHealthTransitions: ok → unavailable (service gone: 404; signals held) → ok (signals
// delivered, service back) → unreachable → dirty.
func TestHealthTransitions(t *testing.T) {
	e := newEnv(t)
	n := newNode(t)
	n.handle("/svc", echoHandler("svc"))
	n.handle("/slot", func(HandlerCall) (int, any) { return 200, "" })
	id := n.register(e.url, map[string]any{
		"services": []map[string]any{{"topic": "hsvc", "group": "g", "path": "/svc"}},
		"slots":    []map[string]any{{"topic": "hsig", "path": "/slot"}, {"topic": "hsig", "group": "hg", "path": "/slot"}},
	})
	// a second node, always healthy, to send from
	other := newNode(t)
	sender := other.register(e.url, nil)
	waitServed(t, e.url, id, "hsvc")
	if code, _ := call(t, "POST", e.url+"/signal/"+sender, map[string]any{"topic": "hsig", "message": "before"}); code != 200 {
		t.Fatal(code)
	}
	n.waitCalls("/slot", 2, 10*time.Second) // once for the node, once for its group

	n.health.Store(503)
	waitStatus(t, e.url, id, StatusUnavailable)
	e.waitView(id, StatusUnavailable) // this pod paused the node's subscriptions
	waitServedCode(t, e.url, sender, "hsvc", 404)
	for i := 0; i < 5; i++ {
		if code, _ := call(t, "POST", e.url+"/signal/"+sender, map[string]any{"topic": "hsig", "message": i}); code != 200 {
			t.Fatal(code)
		}
	}
	// the signals wait in JetStream: nothing reaches the node while it is unavailable
	jstest.Eventually(t, 10*time.Second, func() error {
		w, err := e.js.SubjectCounts(t.Context(), SlotStream, "gilmour.slot.hsig")
		if err != nil {
			return err
		}
		if w["gilmour.slot.hsig"] != 5 {
			return fmt.Errorf("stored: %v", w)
		}
		return nil
	})
	if got := len(n.callsOf("/slot")); got != 2 {
		t.Fatalf("node unavailable but got %d slot calls", got)
	}
	_, b := call(t, "GET", e.pod.AdminURL+"/api/v1/gilmour/nodes", nil)
	an := decode[AdminNodes](t, b)
	for _, x := range an.Nodes {
		if x.ID == id && (x.Status != StatusUnavailable || x.LastHealthCheck == nil) {
			t.Fatalf("admin: %+v", x)
		}
	}

	n.health.Store(0)
	waitStatus(t, e.url, id, StatusOK)
	got := n.waitCalls("/slot", 2+10, 10*time.Second)
	count := map[string]int{}
	for _, hc := range got[2:] {
		count[string(hc.Data)]++
	}
	for i := 0; i < 5; i++ {
		if count[fmt.Sprint(i)] != 2 {
			t.Fatalf("held signals delivered: %v", count)
		}
	}
	waitServed(t, e.url, sender, "hsvc")

	// port closed: unavailable, then dirty after --gilmour-dirty-after (2 s)
	n.srv.Close()
	waitStatus(t, e.url, id, StatusUnavailable)
	waitStatus(t, e.url, id, StatusDirty)
	waitServedCode(t, e.url, sender, "hsvc", 404)
	// DELETE frees a dirty node too
	if code, _ := call(t, "DELETE", e.url+"/nodes/"+id, nil); code != 200 {
		t.Fatal(code)
	}
}

// TestHealthOnePodChecks: with two pods, one pod holds the node's lease and checks it; when it
// dies the other takes over.
func TestHealthOnePodChecks(t *testing.T) {
	e := newEnv(t)
	p2, js2, _ := e.secondPod()
	n := newNode(t)
	id := n.register(e.url, nil)
	kv, err := jstest.Connect(t, e.srv).KV(t.Context(), Bucket)
	if err != nil {
		t.Fatal(err)
	}
	updates, err := kv.Watch(t.Context(), leaseKey(id), false)
	if err != nil {
		t.Fatal(err)
	}
	var next func() leaseRecord
	next = func() leaseRecord {
		t.Helper()
		select {
		case u := <-updates:
			if u.Key == "" {
				return next()
			}
			return decode[leaseRecord](t, u.Value)
		case <-time.After(10 * time.Second):
			t.Fatal("no lease update")
		}
		return leaseRecord{}
	}
	first := next()
	for i := 0; i < 10; i++ {
		if l := next(); l.Pod != first.Pod || l.LastResult != healthOK {
			t.Fatalf("lease moved from %s to %+v while its holder lives", first.Pod, l)
		}
	}
	// kill the holder; the other pod takes over after the lease lapses (3 intervals)
	survivor := e.pod.Env.PodID
	if first.Pod == e.pod.Env.PodID {
		survivor = p2.Env.PodID
		e.pod.Kill(t)
		e.js.Close()
	} else {
		p2.Kill(t)
		js2.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for next().Pod != survivor {
		if time.Now().After(deadline) {
			t.Fatal("no takeover")
		}
	}
}

// TestSignalsWaitForUnreachableNode: a node whose port goes away loses no signal: deliveries
// that fail to connect are not dead-lettered, and everything arrives when it is back.
func TestSignalsWaitForUnreachableNode(t *testing.T) {
	e := newEnv(t, "--gilmour-dirty-after=60s")
	n := newNode(t)
	n.handle("/slot", func(HandlerCall) (int, any) { return 200, "" })
	id := n.register(e.url, map[string]any{"slots": []map[string]any{{"topic": "later", "group": "g", "path": "/slot"}}})
	sender := newNode(t).register(e.url, nil)
	n.srv.Close()
	// some signals race the health check (they find the port closed), the rest find the node paused
	for i := 0; i < 5; i++ {
		if code, b := call(t, "POST", e.url+"/signal/"+sender, map[string]any{"topic": "later", "message": i}); code != 200 {
			t.Fatalf("%d %s", code, b)
		}
	}
	waitStatus(t, e.url, id, StatusUnavailable)
	for i := 5; i < 10; i++ {
		if code, b := call(t, "POST", e.url+"/signal/"+sender, map[string]any{"topic": "later", "message": i}); code != 200 {
			t.Fatalf("%d %s", code, b)
		}
	}
	// the node comes back on the same port
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", n.port))
	if err != nil {
		t.Skipf("port %d not reusable: %v", n.port, err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(n.serve))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	waitStatus(t, e.url, id, StatusOK)
	got := n.waitCalls("/slot", 10, 20*time.Second)
	seen := map[string]bool{}
	for _, hc := range got {
		seen[string(hc.Data)] = true
	}
	if len(seen) != 10 {
		t.Fatalf("delivered %v", seen)
	}
	if _, err := e.js.LastMsg(t.Context(), "DLQ", "dlq.gilmour.slot.later"); err == nil {
		t.Fatal("a signal was dead-lettered while its node was unreachable")
	}
}

// TestGroupSkipsUnavailableMember: while one member of an exclusion group is unavailable, the
// group's signals go to the other member.
func TestGroupSkipsUnavailableMember(t *testing.T) {
	e := newEnv(t)
	a, b := newNode(t), newNode(t)
	for _, n := range []*testNode{a, b} {
		n.handle("/slot", func(HandlerCall) (int, any) { return 200, "" })
	}
	slot := map[string]any{"slots": []map[string]any{{"topic": "shared", "group": "gg", "path": "/slot"}}}
	ida := a.register(e.url, slot)
	b.register(e.url, slot)
	a.health.Store(500)
	e.waitView(ida, StatusUnavailable)
	before := len(a.callsOf("/slot"))
	for i := 0; i < 10; i++ {
		if code, body := call(t, "POST", e.url+"/signal/"+ida, map[string]any{"topic": "shared", "message": i}); code != 200 {
			t.Fatalf("%d %s", code, body)
		}
	}
	b.waitCalls("/slot", 10, 10*time.Second)
	if got := len(a.callsOf("/slot")); got != before {
		t.Fatalf("unavailable member got %d signals", got-before)
	}
}

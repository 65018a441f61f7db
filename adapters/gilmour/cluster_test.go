package gilmour

import (
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestRegisterOnAcallOnB: a service node registered through pod A is called through pod B, and
// a signal sent through B reaches a slot registered through A.
func TestRegisterOnAcallOnB(t *testing.T) {
	e := newEnv(t)
	_, _, urlB := e.secondPod()
	n := newNode(t)
	n.handle("/svc", echoHandler("served"))
	n.handle("/slot", func(HandlerCall) (int, any) { return 200, "" })
	id := n.register(e.url, map[string]any{
		"services": []map[string]any{{"topic": "cross", "group": "g", "path": "/svc"}},
		"slots":    []map[string]any{{"topic": "cross.sig", "group": "sg", "path": "/slot"}},
	})
	waitServed(t, urlB, id, "cross")
	code, r := request(t, urlB, id, map[string]any{"topic": "cross", "message": map[string]any{"x": 1}})
	if code != 200 || string(r.Messages[0].Data) != `{"served":true,"x":1}` {
		t.Fatalf("via B: %d %+v", code, r)
	}
	// the node's detail is the same through B
	if s := nodeStatus(t, urlB, id); s != StatusOK {
		t.Fatal(s)
	}
	const N = 20
	for i := 0; i < N; i++ {
		if code, b := call(t, "POST", urlB+"/signal/"+id, map[string]any{"topic": "cross.sig", "message": i}); code != 200 {
			t.Fatalf("signal via B: %d %s", code, b)
		}
	}
	got := n.waitCalls("/slot", N, 10*time.Second)
	seen := map[string]bool{}
	for _, hc := range got {
		if seen[string(hc.Data)] {
			t.Fatalf("signal %s delivered twice to group sg across two pods", hc.Data)
		}
		seen[string(hc.Data)] = true
	}
}

// TestPodKilledDuringDelivery: the pod delivering a signal dies mid-call; the other pod delivers
// it again after the ack wait — nothing is lost.
func TestPodKilledDuringDelivery(t *testing.T) {
	srv := jstest.Server(t)
	jsA := jstest.Connect(t, srv)
	e := &env{t: t, srv: srv, js: jsA}
	e.pod = startPod(t, jsA)
	e.url = "http://" + e.pod.Addrs["gilmour"]

	n := newNode(t)
	inCall := make(chan struct{}, 1)
	release := make(chan struct{})
	defer close(release)
	first := true
	n.handle("/slot", func(HandlerCall) (int, any) {
		n.mu.Lock()
		f := first
		first = false
		n.mu.Unlock()
		if f {
			inCall <- struct{}{}
			<-release // the node is still working when pod A dies
			return 200, ""
		}
		return 200, ""
	})
	id := n.register(e.url, map[string]any{"slots": []map[string]any{{"topic": "precious", "group": "keep", "path": "/slot"}}})
	if code, b := call(t, "POST", e.url+"/signal/"+id, map[string]any{"topic": "precious", "message": "do not lose me"}); code != 200 {
		t.Fatalf("signal: %d %s", code, b)
	}
	select {
	case <-inCall:
	case <-time.After(10 * time.Second):
		t.Fatal("signal never delivered")
	}
	jsB := jstest.Connect(t, srv)
	startPod(t, jsB)
	e.pod.Kill(t)
	jsA.Close()
	got := n.waitCalls("/slot", 2, 15*time.Second)
	if string(got[1].Data) != `"do not lose me"` || got[1].Sender != got[0].Sender {
		t.Fatalf("redelivery: %+v", got)
	}
}

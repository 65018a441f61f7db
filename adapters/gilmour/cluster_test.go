package gilmour

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
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

// TestDeleteDoesNotDisturbRunningRequests: DELETE /nodes/:id while one of its handlers runs; the
// request still gets its answer, and afterwards nothing of the node is left.
func TestDeleteDoesNotDisturbRunningRequests(t *testing.T) {
	e := newEnv(t)
	n := newNode(t)
	inCall := make(chan struct{}, 1)
	release := make(chan struct{})
	n.handle("/slow", func(hc HandlerCall) (int, any) {
		if strings.Contains(string(hc.Data), "slow") {
			inCall <- struct{}{}
			<-release
		}
		return 200, map[string]string{"finished": "yes"}
	})
	n.handle("/slot", func(HandlerCall) (int, any) { return 200, "" })
	id := n.register(e.url, map[string]any{
		"services": []map[string]any{{"topic": "long", "group": "g", "path": "/slow"}},
		"slots":    []map[string]any{{"topic": "gone", "path": "/slot"}, {"topic": "gone", "group": "gg", "path": "/slot"}},
	})
	waitServed(t, e.url, id, "long")
	type result struct {
		code int
		r    PublishResponse
	}
	done := make(chan result, 1)
	go func() {
		code, r := request(t, e.url, id, map[string]any{"topic": "long", "message": "slow", "timeout": 20})
		done <- result{code, r}
	}()
	select {
	case <-inCall:
	case <-time.After(10 * time.Second):
		t.Fatal("handler not called")
	}
	if code, b := call(t, "DELETE", e.url+"/nodes/"+id, nil); code != 200 {
		t.Fatalf("DELETE: %d %s", code, b)
	}
	close(release)
	select {
	case res := <-done:
		if res.code != 200 || string(res.r.Messages[0].Data) != `{"finished":"yes"}` {
			t.Fatalf("running request disturbed: %d %+v", res.code, res.r)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("running request never answered")
	}
	// everything freed: no listener for the topic, no slot consumers, no KV keys
	other := newNode(t)
	oid := other.register(e.url, nil)
	waitServedCode(t, e.url, oid, "long", 404)
	ctx := t.Context()
	for _, s := range []Sub{{Topic: "gone", Path: "/slot"}, {Topic: "gone", Group: "gg", Path: "/slot"}} {
		if _, err := e.js.Consumer(ctx, SlotStream, slotKeyOf(id, s).durable()); err == nil {
			t.Fatalf("slot consumer for %+v still exists", s)
		}
	}
	kv, err := e.js.KV(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := kv.Keys(ctx, "*."+id)
	if len(keys) != 0 {
		t.Fatalf("keys left: %v", keys)
	}
}

// TestSubjectPrefixAndHost: with --subject-prefix every subject is prefixed (a plain NATS client
// serves gilmour requests on "acme.gilmour.request.<topic>"), and a node registered with "host"
// is called there.
func TestSubjectPrefixAndHost(t *testing.T) {
	srv := jstest.Server(t)
	js := jstest.ConnectURL(t, srv.ClientURL(), "acme", 1)
	p := startPod(t, js)
	url := "http://" + p.Addrs["gilmour"]
	n := newNode(t)
	n.handle("/svc", echoHandler("svc"))
	n.handle("/slot", func(HandlerCall) (int, any) { return 200, "" })
	id := n.register(url, map[string]any{"host": "localhost",
		"services": []map[string]any{{"topic": "pre.svc", "group": "g", "path": "/svc"}},
		"slots":    []map[string]any{{"topic": "pre.*", "path": "/slot"}}})
	if d := decode[NodeDetail](t, func() []byte { _, b := call(t, "GET", url+"/nodes/"+id, nil); return b }()); d.Host != "localhost" {
		t.Fatalf("host: %+v", d)
	}
	waitServed(t, url, id, "pre.svc")
	plain := jstest.Connect(t, srv)
	sub, err := plain.Subscribe("acme.gilmour.request.pre.native", "g", func(m *jetstream.Msg) {
		_ = m.Respond([]byte(`{"data":"prefixed","code":200}`), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = plain.Flush(ctx)
	code, r := request(t, url, id, map[string]any{"topic": "pre.native"})
	if code != 200 || string(r.Messages[0].Data) != `"prefixed"` {
		t.Fatalf("prefixed native service: %d %+v", code, r)
	}
	if err := plain.PublishCore("acme.gilmour.slot.pre.sig", []byte(`{"data":1}`), nil); err != nil {
		t.Fatal(err)
	}
	if got := n.waitCalls("/slot", 1, 10*time.Second); got[0].Topic != "pre.sig" {
		t.Fatalf("prefixed signal: %+v", got[0])
	}
}

package gilmour

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestNATSNativeService: a plain NATS client queue-subscribed to gilmour.request.<topic> serves
// requests made over HTTP, sharing the exclusion group with HTTP nodes; a plain NATS requester
// calls an HTTP node; failures are published on gilmour.errors.
func TestNATSNativeService(t *testing.T) {
	e := newEnv(t)
	nc := jstest.Connect(t, e.srv) // a plain NATS client
	sub, err := nc.Subscribe("gilmour.request.native.echo", "natives", func(m *jetstream.Msg) {
		var env Envelope
		_ = json.Unmarshal(m.Data, &env)
		out, _ := json.Marshal(map[string]any{"data": map[string]any{"got": env.Data}, "code": 200,
			"sender": "gilmour.response." + env.Sender})
		_ = m.Respond(out, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	teapot, err := nc.Subscribe("gilmour.request.native.teapot", "natives", func(m *jetstream.Msg) {
		_ = m.Respond([]byte(`{"data":"short and stout","code":418,"sender":"x"}`), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer teapot.Unsubscribe()
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	if err := nc.Flush(fctx); err != nil { // the subscriptions reached the server
		t.Fatal(err)
	}

	n := newNode(t)
	n.handle("/svc", echoHandler("http"))
	n.handle("/bad", func(HandlerCall) (int, any) { return 500, "kaput" })
	id := n.register(e.url, map[string]any{"services": []map[string]any{
		{"topic": "http.svc", "group": "g", "path": "/svc"}, {"topic": "http.bad", "group": "g", "path": "/bad"}}})

	code, r := request(t, e.url, id, `{"topic":"native.echo","message":{"k":"v"}}`)
	if code != 200 || string(r.Messages[0].Data) != `{"got":{"k":"v"}}` {
		t.Fatalf("native service: %d %+v", code, r)
	}
	code, r = request(t, e.url, id, `{"topic":"native.teapot"}`)
	if code != 418 || r.Code != 418 || string(r.Messages[0].Data) != `"short and stout"` {
		t.Fatalf("native 418: %d %+v", code, r)
	}

	// plain NATS requester → HTTP node
	waitServed(t, e.url, id, "http.svc")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := nc.Request(ctx, "gilmour.request.http.svc", []byte(`{"data":{"from":"nats"},"code":0,"sender":"abc"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	renv := DecodeEnvelope(rep.Data)
	if renv.Code != 200 || string(renv.Data) != `{"from":"nats","http":true}` || renv.Sender != "gilmour.response.abc" {
		t.Fatalf("NATS → HTTP node: %s", rep.Data)
	}

	// errors on gilmour.errors
	errs := make(chan []byte, 4)
	esub, err := nc.Subscribe("gilmour.errors", "", func(m *jetstream.Msg) { errs <- m.Data })
	if err != nil {
		t.Fatal(err)
	}
	defer esub.Unsubscribe()
	if err := nc.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitServedCode(t, e.url, id, "http.bad", 500)
	select {
	case b := <-errs:
		var p map[string]any
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"code", "sender", "topic", "request_data", "user_data", "backtrace", "timestamp", "multi_process"} {
			if _, ok := p[k]; !ok {
				t.Fatalf("error packet lacks %s: %s", k, b)
			}
		}
		if p["code"] != 500.0 || p["topic"] != "http.bad" || p["user_data"] != "kaput" {
			t.Fatalf("error packet: %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no error packet on gilmour.errors")
	}
}

// TestNATSNativeSignal: a plain NATS publish to gilmour.slot.<topic> is a signal for HTTP nodes
// (an envelope, or a raw payload that becomes the data).
func TestNATSNativeSignal(t *testing.T) {
	e := newEnv(t)
	nc := jstest.Connect(t, e.srv)
	n := newNode(t)
	n.handle("/slot", func(HandlerCall) (int, any) { return 200, "" })
	n.register(e.url, map[string]any{"slots": []map[string]any{{"topic": "native.*", "path": "/slot"}}})
	if err := nc.PublishCore("gilmour.slot.native.one", []byte(`{"data":{"n":1},"code":0,"sender":"s1"}`), nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := nc.Publish(ctx, "gilmour.slot.native.two.deep", []byte(`plain text`), jetstream.PubOpts{}); err != nil {
		t.Fatal(err)
	}
	got := n.waitCalls("/slot", 2, 10*time.Second)
	if got[0].Topic != "native.one" {
		got[0], got[1] = got[1], got[0] // deliveries run concurrently
	}
	if got[0].Topic != "native.one" || string(got[0].Data) != `{"n":1}` || got[0].Sender != "s1" {
		t.Fatalf("envelope signal: %+v", got[0])
	}
	if got[1].Topic != "native.two.deep" || string(got[1].Data) != `"plain text"` {
		t.Fatalf("raw signal: %+v", got[1])
	}
}

// TestSignalDeadLetter: a slot handler that keeps failing is retried with backoff, then the
// signal goes to the dead-letter stream with the reason.
func TestSignalDeadLetter(t *testing.T) {
	e := newEnv(t)
	n := newNode(t)
	n.handle("/slot", func(HandlerCall) (int, any) { return 500, "nope" })
	id := n.register(e.url, map[string]any{"slots": []map[string]any{{"topic": "doomed", "group": "g", "path": "/slot"}}})
	if code, b := call(t, "POST", e.url+"/signal/"+id, map[string]any{"topic": "doomed", "message": "x"}); code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	got := n.waitCalls("/slot", 3, 10*time.Second) // --gilmour-slot-max-deliver=3
	for _, hc := range got {
		if hc.Sender != got[0].Sender {
			t.Fatalf("retries of another signal: %+v", got)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var m *jetstream.Msg
	jstest.Eventually(t, 10*time.Second, func() error {
		var err error
		m, err = e.js.LastMsg(ctx, jetstream.DeadLetterStream, "dlq.gilmour.slot.doomed")
		return err
	})
	if m.Header.Get(jetstream.HeaderDLQReason) == "" || !strings.HasPrefix(m.Header.Get(jetstream.HeaderDLQConsumer), "GILMOUR_G_") || DecodeEnvelope(m.Data).Sender != got[0].Sender {
		t.Fatalf("dead letter: %v %s", m.Header, m.Data)
	}
	if len(n.callsOf("/slot")) != 3 {
		t.Fatalf("delivered %d times, want 3", len(n.callsOf("/slot")))
	}
}

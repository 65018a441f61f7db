package gilmour

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
	"github.com/jetbridge/jetbridge/schemas"
)

func validate(t *testing.T, schema string, v any) {
	t.Helper()
	if err := schemas.Validate("gilmour/"+schema+".schema.json", v); err != nil {
		t.Errorf("%v\nvalue: %s", err, v)
	}
}

// TestSchemasGolden validates the golden bodies and every payload the proxy really produces
// (HTTP answers, node callbacks, NATS envelopes, error packets, KV values) against schemas/gilmour.
func TestSchemasGolden(t *testing.T) {
	for _, b := range goldenNodeCreate {
		validate(t, "node-create", []byte(b))
	}
	for _, b := range goldenSubs {
		validate(t, "subscription-body", []byte(b))
	}
	for _, b := range goldenRequests {
		validate(t, "publish-request", []byte(b))
	}
	for _, b := range goldenSignals {
		validate(t, "signal-request", []byte(b))
	}
	for _, b := range goldenEnvelope[:2] {
		validate(t, "envelope", []byte(b))
	}
	// schemas reject what the decoders reject
	for _, bad := range []struct{ schema, body string }{
		{"node-create", `{"port":true}`}, {"node-create", `{}`}, {"publish-request", `{"topic":"a*"}`},
		{"publish-request", `{"message":1}`}, {"signal-request", `{"topic":"a b"}`},
		{"composition", `{"fork":[{"topic":"a"}]}`}, {"subscription-body", `{"topic":"a","group":"g"}`},
	} {
		if err := schemas.Validate("gilmour/"+bad.schema+".schema.json", []byte(bad.body)); err == nil {
			t.Errorf("%s accepted %s", bad.schema, bad.body)
		}
	}

	e := newEnv(t)
	nc := jstest.Connect(t, e.srv)
	n := newNode(t)
	n.handle("/svc", echoHandler("x"))
	n.handle("/bad", func(HandlerCall) (int, any) { return 500, "no" })
	n.handle("/slot", func(HandlerCall) (int, any) { return 200, "" })
	n.lambda("/lam", func(d json.RawMessage) (int, any) { return 200, []byte(d) })
	body := `{"port":` + itoa(n.port) + `,"services":[{"topic":"s","group":"g","path":"/svc"},{"topic":"bad","group":"g","path":"/bad"}],"slots":[{"topic":"sig.*","path":"/slot"}]}`
	validate(t, "node-create", []byte(body))
	code, b := call(t, "POST", e.url+"/nodes", body)
	if code != 200 {
		t.Fatal(code, string(b))
	}
	validate(t, "create-response", b)
	id := decode[CreateResponse](t, b).ID
	_, b = call(t, "GET", e.url+"/nodes/"+id, nil)
	validate(t, "node-detail", b)
	_, b = call(t, "GET", e.url+"/nodes/"+id+"/services", nil)
	validate(t, "subscription-list", b)
	_, b = call(t, "GET", e.url+"/nodes/"+id+"/slots", nil)
	validate(t, "subscription-list", b)
	waitServed(t, e.url, id, "s")
	_, b = call(t, "POST", e.url+"/request/"+id, `{"composition":{"pipe":[{"topic":"s"},{"lambda":"/lam"}]},"message":{"a":1}}`)
	validate(t, "publish-response", b)
	_, b = call(t, "POST", e.url+"/signal/"+id, `{"topic":"sig.a","message":1}`)
	validate(t, "status-response", b)
	n.waitCalls("/slot", 1, 10*time.Second)
	n.mu.Lock()
	validate(t, "handler-call", n.raw["/svc"][0])
	validate(t, "handler-call", n.raw["/slot"][0])
	validate(t, "lambda-call", n.raw["/lam"][0])
	n.mu.Unlock()
	_, b = call(t, "GET", e.url+"/nodes/nope", nil)
	validate(t, "status-response", b)

	// NATS side: request envelope, reply envelope, stored signal, error packet
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reqs := make(chan []byte, 16)
	spy, _ := nc.Subscribe("gilmour.request.>", "", func(m *jetstream.Msg) { reqs <- m.Data })
	errs := make(chan []byte, 16)
	esub, _ := nc.Subscribe("gilmour.errors", "", func(m *jetstream.Msg) { errs <- m.Data })
	_ = nc.Flush(ctx)
	_, b = call(t, "POST", e.url+"/request/"+id, `{"topic":"bad"}`)
	validate(t, "publish-response", b)
	validate(t, "envelope", <-reqs)
	select {
	case p := <-errs:
		validate(t, "error-packet", p)
	case <-ctx.Done():
		t.Fatal("no error packet")
	}
	_ = spy.Unsubscribe()
	_ = esub.Unsubscribe()
	rep, err := nc.Request(ctx, "gilmour.request.s", []byte(`{"data":1,"code":0,"sender":"x"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "envelope", rep.Data)
	m, err := nc.GetMsg(ctx, SlotStream, 1)
	if err == nil { // may already be gone (interest retention)
		validate(t, "envelope", m.Data)
	}

	// KV values and admin
	kv, err := nc.KV(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	en, err := kv.Get(ctx, nodeKey(id))
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "node-record", en.Value)
	jstest.Eventually(t, 10*time.Second, func() error {
		en, err = kv.Get(ctx, leaseKey(id))
		return err
	})
	validate(t, "lease", en.Value)
	_, b = call(t, "GET", e.pod.AdminURL+"/api/v1/gilmour/nodes", nil)
	validate(t, "admin-nodes", b)
	if !strings.Contains(string(b), id) {
		t.Fatal(string(b))
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

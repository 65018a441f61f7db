package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

const schemaBase = "https://jetbridge.dev/schemas/sink/"

func compileSchema(t *testing.T, name string) *jsonschema.Schema {
	t.Helper()
	dir := filepath.Join("..", "..", "schemas", "sink")
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("schemas: %v", err)
	}
	c := jsonschema.NewCompiler()
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := c.AddResource(schemaBase+filepath.Base(f), doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	s, err := c.Compile(schemaBase + name)
	if err != nil {
		t.Fatalf("compile %s: %v", name, err)
	}
	return s
}

func validate(t *testing.T, schema string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if err := compileSchema(t, schema).Validate(doc); err != nil {
		t.Fatalf("%s does not validate %s: %v", schema, b, err)
	}
}

func invalid(t *testing.T, schema string, raw string) {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader([]byte(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if err := compileSchema(t, schema).Validate(doc); err == nil {
		t.Fatalf("%s accepted %s", schema, raw)
	}
}

func headerMap(h jetstream.Header) map[string]string {
	m := map[string]string{}
	for k, v := range h {
		if len(v) > 0 && k != "Nats-Msg-Id" {
			m[k] = v[0]
		}
	}
	return m
}

// TestSchemas checks real payloads (admin API answers, KV values, NATS headers written by a
// running pod) against schemas/sink.
func TestSchemas(t *testing.T) {
	e := newEnv(t)
	p, js := e.pod("--sink-freshness-flush=50ms")
	cert := e.pki.client(t, "meter-1")
	add := AddClientRequest{ID: "meter-1", CertPEM: string(cert.CertPEM)}
	validate(t, "client-add-request.json", add)
	var rec ClientRecord
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients", add, &rec); code != 201 {
		t.Fatal(code)
	}
	validate(t, "client-record.json", rec)

	c := connect(t, p.Addrs["sink"], e.pki, cert, 1, nil)
	c.sendRaw(unhex(t, "4007 01 01 03010203 ac02 ed85cc8306 026869"))
	c.expect(TypeAck)
	in, err := js.LastMsg(context.Background(), StreamIn, js.Subject("sink", "in", "meter-1", "1"))
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "event-headers.json", headerMap(in.Header))

	// the example of the issue
	req := map[string]any{"event_type_id": 1, "schema_version": 1, "key": "AQID", "offset": 1, "timestamp": 1618150125, "data": "aGk="}
	validate(t, "event-request.json", req)
	validate(t, "event-response.json", postEvent(t, p.AdminURL, "meter-1", req))
	out := c.expect(TypePublish)
	c.nackMsg(out.ID, "422", "no")
	jstest.Eventually(t, 5*time.Second, func() error {
		_, err := js.LastMsg(context.Background(), jetstream.DeadLetterStream, js.Subject("dlq", "sink", "out", "meter-1"))
		return err
	})
	dl, _ := js.LastMsg(context.Background(), jetstream.DeadLetterStream, js.Subject("dlq", "sink", "out", "meter-1"))
	validate(t, "event-headers.json", headerMap(dl.Header))

	validate(t, "quarantine-request.json", QuarantineRequest{Machine: "403", Human: "blocked"})
	validate(t, "policy.json", Policy{MinApplicationVersion: "1.2.0"})
	jstest.Eventually(t, 5*time.Second, func() error {
		var ci ClientInfo
		apiDo(t, "GET", p.AdminURL+"/api/v1/sink/clients/meter-1", nil, &ci)
		if len(ci.Freshness) == 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	var list ClientList
	apiDo(t, "GET", p.AdminURL+"/api/v1/sink/clients", nil, &list)
	validate(t, "client-list.json", list)
	validate(t, "client-info.json", list.Clients[0])

	// KV values
	kvClients, _ := js.KV(context.Background(), BucketClients)
	kvState, _ := js.KV(context.Background(), BucketState)
	for key, schema := range map[string]string{"client.meter-1": "client-record.json", "cert." + rec.Fingerprint: "client-cert-index.json"} {
		en, err := kvClients.Get(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		_ = json.Unmarshal(en.Value, &v)
		validate(t, schema, v)
	}
	for _, k := range []string{ownerKey("meter-1"), offsetKey("meter-1", 1, []byte{1, 2, 3})} {
		en, err := kvState.Get(context.Background(), k)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		var v any
		_ = json.Unmarshal(en.Value, &v)
		schema := "connection-owner.json"
		if k != ownerKey("meter-1") {
			schema = "offset-counter.json"
		}
		validate(t, schema, v)
	}

	// bad payloads are refused by the schemas
	invalid(t, "event-request.json", `{"key":"AQID"}`)
	invalid(t, "event-request.json", `{"event_type_id":1,"offset":0}`)
	invalid(t, "client-add-request.json", `{"id":"bad id","cert_pem":"x"}`)
	invalid(t, "event-headers.json", `{"Sink-Event-Type":"-1"}`)
	invalid(t, "quarantine-request.json", `{}`)
	invalid(t, "policy.json", `{"min_application_version":"one"}`)
}

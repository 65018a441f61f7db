package gilmour

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

func TestRouteTable(t *testing.T) {
	e := newEnv(t)
	n := newNode(t)
	n.handle("/echo", echoHandler("echoed"))
	n.handle("/slot", func(HandlerCall) (int, any) { return 200, "" })

	// C1 with the spec body
	id := n.register(e.url, map[string]any{
		"health_check": "/health",
		"services":     []map[string]any{{"topic": "echo", "group": "g", "path": "/echo", "timeout": 5}},
		"slots":        []map[string]any{{"topic": "news.*", "path": "slot"}},
	})

	// C2
	code, b := call(t, "GET", e.url+"/nodes/"+id, nil)
	if code != 200 {
		t.Fatalf("C2: %d %s", code, b)
	}
	d := decode[NodeDetail](t, b)
	if d.ID != id || d.Port != n.port || d.HealthCheck != "/health" || d.Status != "ok" || d.Host != "127.0.0.1" ||
		len(d.Services) != 1 || len(d.Slots) != 1 || d.Slots[0].Path != "/slot" {
		t.Fatalf("C2: %+v", d)
	}

	// P1 with and without the trailing slash
	waitServed(t, e.url, id, "echo")
	for _, suffix := range []string{"", "/"} {
		code, b = call(t, "POST", e.url+"/request/"+id+suffix, `{"topic":"echo","message":{"a":1},"timeout":5}`)
		if code != 200 {
			t.Fatalf("P1%s: %d %s", suffix, code, b)
		}
		if want := `{"messages":[{"data":{"a":1,"echoed":true},"code":200}],"code":200,"length":1}`; string(b) != want+"\n" {
			t.Fatalf("P1%s: %s, want %s", suffix, b, want)
		}
	}
	calls := n.callsOf("/echo")
	calls = calls[len(calls)-1:]
	if calls[0].Topic != "echo" || calls[0].Timeout != 5 || calls[0].Sender == "" || string(calls[0].Data) != `{"a":1}` {
		t.Fatalf("handler call: %+v", calls[0])
	}

	// C7 (spec body and the topic-keyed map variant), C8
	code, b = call(t, "POST", e.url+"/nodes/"+id+"/services", `{"topic":"two","group":"g","path":"/echo"}`)
	if code != 200 || string(b) != `{"status":"ok"}`+"\n" {
		t.Fatalf("C7: %d %s", code, b)
	}
	code, b = call(t, "POST", e.url+"/nodes/"+id+"/services", `{"three":{"group":"g","path":"/echo","timeout":"3"}}`)
	if code != 200 {
		t.Fatalf("C7 map: %d %s", code, b)
	}
	code, b = call(t, "GET", e.url+"/nodes/"+id+"/services", nil)
	svcs := decode[map[string][]Sub](t, b)["services"]
	if code != 200 || len(svcs) != 3 || svcs[2].Topic != "three" || svcs[2].Timeout != 3 {
		t.Fatalf("C8: %d %s", code, b)
	}
	waitServed(t, e.url, id, "three")

	// C9 removes, then the topic has no listener (404)
	code, b = call(t, "DELETE", e.url+"/nodes/"+id+"/services?topic=three", nil)
	if code != 200 {
		t.Fatalf("C9: %d %s", code, b)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		code, r := request(t, e.url, id, map[string]any{"topic": "three", "timeout": 2})
		if code != 404 || r.Code != 404 || string(r.Messages[0].Data) != `"No active listeners for: three"` {
			return fmt.Errorf("after C9: %d %+v", code, r)
		}
		return nil
	})

	// C4, C5, C6 (path given without the leading slash, as impl #1 clients sent it)
	code, b = call(t, "POST", e.url+"/nodes/"+id+"/slots", `{"topic":"alerts","group":"ops","path":"/slot","timeout":2}`)
	if code != 200 {
		t.Fatalf("C4: %d %s", code, b)
	}
	code, b = call(t, "GET", e.url+"/nodes/"+id+"/slots", nil)
	slots := decode[map[string][]Sub](t, b)["slots"]
	if code != 200 || len(slots) != 2 || slots[1].Group != "ops" {
		t.Fatalf("C5: %d %s", code, b)
	}
	code, _ = call(t, "DELETE", e.url+"/nodes/"+id+"/slots?topic=alerts&path=slot", nil)
	_, b = call(t, "GET", e.url+"/nodes/"+id+"/slots", nil)
	if slots = decode[map[string][]Sub](t, b)["slots"]; code != 200 || len(slots) != 1 {
		t.Fatalf("C6: %d %s", code, b)
	}

	// P2 signal
	code, b = call(t, "POST", e.url+"/signal/"+id, `{"topic":"news.sport","message":{"score":3}}`)
	if code != 200 || string(b) != `{"status":"ok"}`+"\n" {
		t.Fatalf("P2: %d %s", code, b)
	}
	got := n.waitCalls("/slot", 1, 10*time.Second)
	if got[0].Topic != "news.sport" || string(got[0].Data) != `{"score":3}` {
		t.Fatalf("slot call: %+v", got[0])
	}

	// admin
	code, b = call(t, "GET", e.pod.AdminURL+"/api/v1/gilmour/nodes", nil)
	an := decode[AdminNodes](t, b)
	if code != 200 || len(an.Nodes) != 1 || an.Nodes[0].ID != id || an.Nodes[0].Status != "ok" {
		t.Fatalf("admin: %d %s", code, b)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		_, b = call(t, "GET", e.pod.AdminURL+"/api/v1/gilmour/nodes", nil)
		if an = decode[AdminNodes](t, b); an.Nodes[0].LastHealthCheck == nil {
			return fmt.Errorf("no health check yet: %s", b)
		}
		return nil
	})

	// C3, then the node is gone
	code, b = call(t, "DELETE", e.url+"/nodes/"+id, nil)
	if code != 200 || string(b) != `{"status":"ok"}`+"\n" {
		t.Fatalf("C3: %d %s", code, b)
	}
	for _, r := range []struct{ m, p string }{{"GET", "/nodes/" + id}, {"DELETE", "/nodes/" + id},
		{"GET", "/nodes/" + id + "/slots"}, {"POST", "/request/" + id}, {"POST", "/signal/" + id}} {
		code, b = call(t, r.m, e.url+r.p, `{"topic":"echo"}`)
		if code != 404 || !strings.Contains(string(b), `"node not found"`) {
			t.Fatalf("%s %s after delete: %d %s", r.m, r.p, code, b)
		}
	}
	var st map[string]any
	_ = json.Unmarshal(b, &st)
}

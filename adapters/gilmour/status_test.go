package gilmour

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestStatusCodes covers every status code of the Decisions.
func TestStatusCodes(t *testing.T) {
	e := newEnv(t, "--gilmour-max-body=4096")
	n := newNode(t)
	released := make(chan struct{})
	n.handle("/slow", func(HandlerCall) (int, any) {
		select {
		case <-released:
		case <-time.After(10 * time.Second):
		}
		return 200, "late"
	})
	n.handle("/fail", func(HandlerCall) (int, any) { return 503, map[string]string{"error": "boom"} })
	n.handle("/text", func(HandlerCall) (int, any) { return 200, "plain text" })
	n.handle("/ok", echoHandler("ok"))
	id := n.register(e.url, map[string]any{"services": map[string]any{
		"slow": map[string]any{"group": "g", "path": "/slow", "timeout": 1},
		"fail": map[string]any{"group": "g", "path": "/fail"},
		"text": map[string]any{"group": "g", "path": "/text"},
		"ok":   map[string]any{"group": "g", "path": "/ok"},
	}})
	defer close(released)
	waitServed(t, e.url, id, "ok")

	// 200 with a non-JSON body returned as a string
	code, r := request(t, e.url, id, map[string]any{"topic": "text"})
	if code != 200 || string(r.Messages[0].Data) != `"plain text"` {
		t.Fatalf("text: %d %+v", code, r)
	}
	// 504: handler timeout (1 s) shorter than the requester's (5 s)
	start := time.Now()
	code, r = request(t, e.url, id, map[string]any{"topic": "slow", "timeout": 5})
	if code != 504 || r.Code != 504 || string(r.Messages[0].Data) != `"Execution timed out"` {
		t.Fatalf("504: %d %+v", code, r)
	}
	if el := time.Since(start); el > 4*time.Second {
		t.Fatalf("504 took %v", el)
	}
	// 499: requester timeout (1 s) shorter than the handler's (600 s default)
	code, _ = call(t, "POST", e.url+"/nodes/"+id+"/services", `{"topic":"slower","group":"g","path":"/slow"}`)
	if code != 200 {
		t.Fatal(code)
	}
	waitServedCode(t, e.url, id, "slower", 499)
	// 500: handler answered non-2xx; its body is the data
	code, r = request(t, e.url, id, map[string]any{"topic": "fail"})
	if code != 500 || string(r.Messages[0].Data) != `{"error":"boom"}` {
		t.Fatalf("500: %d %+v", code, r)
	}
	// 404: no listeners
	code, r = request(t, e.url, id, map[string]any{"topic": "nobody.home"})
	if code != 404 || string(r.Messages[0].Data) != `"No active listeners for: nobody.home"` || r.Length != 1 {
		t.Fatalf("404: %d %+v", code, r)
	}
	// 404: unknown node on every route
	for _, p := range []string{"/nodes/nope", "/nodes/nope/slots", "/nodes/nope/services"} {
		if code, b := call(t, "GET", e.url+p, nil); code != 404 || string(b) != `{"status":"node not found"}`+"\n" {
			t.Fatalf("%s: %d %s", p, code, b)
		}
	}
	// 413: body over --gilmour-max-body
	huge := `{"topic":"ok","message":"` + strings.Repeat("x", 5000) + `"}`
	if code, b := call(t, "POST", e.url+"/request/"+id, huge); code != 413 {
		t.Fatalf("413: %d %s", code, b)
	}
	if code, b := call(t, "POST", e.url+"/nodes", `{"port":1,"x":"`+strings.Repeat("x", 5000)+`"}`); code != 413 {
		t.Fatalf("413 nodes: %d %s", code, b)
	}
	// 400: malformed body, wildcard service, missing group
	for _, c := range []struct{ path, body, want string }{
		{"/request/" + id, `{"topic":`, "malformed JSON"},
		{"/nodes/" + id + "/services", `{"topic":"a.*","group":"g","path":"/x"}`, "wildcards are not allowed"},
		{"/nodes/" + id + "/services", `{"topic":"a","path":"/x"}`, "missing group"},
		{"/signal/" + id, `{"topic":"a.*"}`, "wildcards are not allowed"},
	} {
		code, b := call(t, "POST", e.url+c.path, c.body)
		if code != 400 || !strings.Contains(string(b), c.want) {
			t.Fatalf("%s %s: %d %s", c.path, c.body, code, b)
		}
	}
	// 502: the first health ping fails (nothing listens on the port)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	code, b := call(t, "POST", e.url+"/nodes", `{"port":`+strconv.Itoa(port)+`}`)
	if code != 502 || !strings.Contains(string(b), "health check failed") {
		t.Fatalf("502: %d %s", code, b)
	}
	// 502: health answers 500
	bad := newNode(t)
	bad.health.Store(500)
	code, b = call(t, "POST", e.url+"/nodes", fmt.Sprintf(`{"port":"%d"}`, bad.port))
	if code != 502 {
		t.Fatalf("502 on 500: %d %s", code, b)
	}
	// unknown route
	if code, _ := call(t, "GET", e.url+"/nope", nil); code != 404 {
		t.Fatalf("unknown route: %d", code)
	}
}

func waitServedCode(t *testing.T, url, id, topic string, want int) {
	t.Helper()
	jstest.Eventually(t, 10*time.Second, func() error {
		code, r := request(t, url, id, map[string]any{"topic": topic, "timeout": 1})
		if code != want || r.Code != want {
			return fmt.Errorf("%s: %d %+v, want %d", topic, code, r, want)
		}
		if want == 499 && string(r.Messages[0].Data) != `"Execution timed out"` {
			return fmt.Errorf("499 data: %s", r.Messages[0].Data)
		}
		return nil
	})
}

// TestBadInputsOverHTTP sends bad bodies to every route that takes one: the answer is 400 (or
// 413, 404) with the reason in status, and nothing is written.
func TestBadInputsOverHTTP(t *testing.T) {
	e := newEnv(t, "--gilmour-max-body=2048")
	n := newNode(t)
	id := n.register(e.url, nil)
	big := `{"topic":"a","message":"` + strings.Repeat("x", 3000) + `"}`
	routes := []string{"/nodes", "/nodes/" + id + "/slots", "/nodes/" + id + "/services", "/request/" + id, "/signal/" + id}
	bodies := []struct {
		body string
		code int
	}{
		{``, 400}, {`{`, 400}, {`null`, 400}, {`"str"`, 400}, {`[`, 400}, {`{"topic":5,"port":"x"}`, 400},
		{`{"topic":"a b","port":"x","group":"g h","path":"/a b"}`, 400}, {`{"topic":"a.>","group":"g","path":"/p","port":0}`, 400},
		{`{"topic":"a..b","group":"g","path":"/p","port":99999}`, 400},
		{big, 413},
	}
	for _, r := range routes {
		for _, b := range bodies {
			code, out := call(t, "POST", e.url+r, b.body)
			if code != b.code {
				t.Errorf("POST %s %.40q: %d %s, want %d", r, b.body, code, out, b.code)
				continue
			}
			var st StatusResponse
			if err := json.Unmarshal(out, &st); err != nil || st.Status == "" || st.Status == "ok" {
				t.Errorf("POST %s %.40q: body %s", r, b.body, out)
			}
		}
	}
	// unknown node with a valid body
	for _, r := range []string{"/nodes/unknown/slots", "/nodes/unknown/services", "/request/unknown", "/signal/unknown"} {
		code, out := call(t, "POST", e.url+r, `{"topic":"a","group":"g","path":"/a"}`)
		if code != 404 || string(out) != `{"status":"node not found"}`+"\n" {
			t.Errorf("POST %s: %d %s", r, code, out)
		}
	}
	if code, out := call(t, "POST", e.url+"/nodes/"+id+"/services", `{"topic":"a.*","group":"g","path":"/p"}`); code != 400 {
		t.Errorf("wildcard service: %d %s", code, out)
	}
	if code, _ := call(t, "DELETE", e.url+"/nodes/"+id+"/slots", nil); code != 400 {
		t.Errorf("DELETE slots without topic: %d", code)
	}
	// nothing was written: the node is unchanged and is the only one
	_, out := call(t, "GET", e.url+"/nodes/"+id, nil)
	if d := decode[NodeDetail](t, out); len(d.Slots) != 0 || len(d.Services) != 0 {
		t.Fatalf("node changed: %s", out)
	}
	_, out = call(t, "GET", e.pod.AdminURL+"/api/v1/gilmour/nodes", nil)
	if an := decode[AdminNodes](t, out); len(an.Nodes) != 1 {
		t.Fatalf("nodes: %s", out)
	}
}

// TestInflightLimitAndMetrics: over --gilmour-max-inflight the proxy answers 503; per-topic
// metrics are exported.
func TestInflightLimitAndMetrics(t *testing.T) {
	e := newEnv(t, "--gilmour-max-inflight=1")
	n := newNode(t)
	inCall := make(chan struct{}, 1)
	release := make(chan struct{})
	n.handle("/slow", func(hc HandlerCall) (int, any) {
		if strings.Contains(string(hc.Data), "hold") {
			inCall <- struct{}{}
			<-release
		}
		return 200, "done"
	})
	id := n.register(e.url, map[string]any{"services": []map[string]any{{"topic": "metered", "group": "g", "path": "/slow"}}})
	waitServed(t, e.url, id, "metered")
	done := make(chan int, 1)
	go func() {
		code, _ := request(t, e.url, id, map[string]any{"topic": "metered", "message": "hold", "timeout": 20})
		done <- code
	}()
	<-inCall
	code, b := call(t, "GET", e.url+"/nodes/"+id, nil)
	if code != 503 || !strings.Contains(string(b), "too many requests in flight") {
		t.Fatalf("over the limit: %d %s", code, b)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Fatalf("held request: %d", code)
	}
	mfs, err := e.pod.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() != "jetbridge_gilmour_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "topic" && l.GetValue() == "metered" {
					found = true
				}
			}
		}
	}
	if !found {
		t.Fatal("no per-topic request metric")
	}
}

// TestHandlerTimeoutClosesConnection: on a handler timeout the proxy closes the connection to the
// handler (so that its late write fails) and answers 504.
func TestHandlerTimeoutClosesConnection(t *testing.T) {
	e := newEnv(t)
	closed := make(chan struct{}, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {})
	mux.HandleFunc("POST /stuck", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body) // the server notices a closed connection once the body is read
		select {
		case <-r.Context().Done():
			closed <- struct{}{}
		case <-time.After(20 * time.Second):
		}
	})
	port := newHTTPTestServer(t, mux)
	code, b := call(t, "POST", e.url+"/nodes", fmt.Sprintf(`{"port":%d,"services":[{"topic":"stuck","group":"g","path":"/stuck","timeout":1}]}`, port))
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	id := decode[CreateResponse](t, b).ID
	jstest.Eventually(t, 10*time.Second, func() error {
		code, r := request(t, e.url, id, map[string]any{"topic": "stuck", "timeout": 10})
		if code != 504 {
			return fmt.Errorf("%d %+v", code, r)
		}
		return nil
	})
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's connection was not closed")
	}
}

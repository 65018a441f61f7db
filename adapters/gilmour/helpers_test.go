package gilmour

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// fastFlags make health checks and redeliveries quick in tests.
var fastFlags = []string{"--gilmour-health-interval=100ms", "--gilmour-dirty-after=2s",
	"--gilmour-slot-ack-wait=1s", "--gilmour-slot-retry=50ms", "--gilmour-slot-max-deliver=3"}

type env struct {
	t   *testing.T
	srv *jetstream.Embedded
	js  *jetstream.Client
	pod *bridgetest.Pod
	ad  *Adapter
	url string
}

// waitView waits until this env's pod sees node id with status (its subscriptions follow).
func (e *env) waitView(id, status string) {
	e.t.Helper()
	jstest.Eventually(e.t, 10*time.Second, func() error {
		e.ad.mu.Lock()
		r, ok := e.ad.nodes[id]
		e.ad.mu.Unlock()
		if !ok || r.Status != status {
			return fmt.Errorf("pod sees %s as %q", id, r.Status)
		}
		return nil
	})
	e.ad.reconcile() // serialised with the watch's own: once it returns, the view is applied
}

func newEnv(t *testing.T, args ...string) *env {
	t.Helper()
	srv := jstest.Server(t)
	js := jstest.Connect(t, srv)
	ad := New()
	p := bridgetest.Start(t, js, ad, append(append([]string{}, fastFlags...), args...)...)
	return &env{t: t, srv: srv, js: js, pod: p, ad: ad, url: "http://" + p.Addrs["gilmour"]}
}

// secondPod starts another pod on the same NATS server.
func (e *env) secondPod(args ...string) (*bridgetest.Pod, *jetstream.Client, string) {
	e.t.Helper()
	js := jstest.Connect(e.t, e.srv)
	p := bridgetest.Start(e.t, js, New(), append(append([]string{}, fastFlags...), args...)...)
	return p, js, "http://" + p.Addrs["gilmour"]
}

// call does an HTTP request and returns the status and the raw body.
func call(t testing.TB, method, url string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = bytes.NewReader([]byte(b))
	case []byte:
		r = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func decode[T any](t testing.TB, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

// testNode is an HTTP Gilmour node served by httptest.
type testNode struct {
	t      *testing.T
	srv    *httptest.Server
	port   int
	health atomic.Int32 // status of GET /health (0 = 200)

	mu       sync.Mutex
	handlers map[string]func(HandlerCall) (int, any)
	calls    map[string][]HandlerCall
	raw      map[string][][]byte
	lambdas  map[string]func(json.RawMessage) (int, any)
}

func newNode(t *testing.T) *testNode {
	n := &testNode{t: t, handlers: map[string]func(HandlerCall) (int, any){}, calls: map[string][]HandlerCall{},
		raw: map[string][][]byte{}, lambdas: map[string]func(json.RawMessage) (int, any){}}
	n.srv = httptest.NewServer(http.HandlerFunc(n.serve))
	t.Cleanup(n.srv.Close)
	_, p, _ := net.SplitHostPort(n.srv.Listener.Addr().String())
	n.port, _ = strconv.Atoi(p)
	return n
}

func (n *testNode) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/health" {
		if s := n.health.Load(); s != 0 {
			w.WriteHeader(int(s))
			return
		}
		_, _ = io.WriteString(w, "OK")
		return
	}
	body, _ := io.ReadAll(r.Body)
	n.mu.Lock()
	n.raw[r.URL.Path] = append(n.raw[r.URL.Path], body)
	lam := n.lambdas[r.URL.Path]
	h := n.handlers[r.URL.Path]
	n.mu.Unlock()
	var code int
	var out any
	switch {
	case lam != nil:
		var lc LambdaCall
		if err := json.Unmarshal(body, &lc); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		code, out = lam(lc.Data)
	case h != nil:
		var hc HandlerCall
		if err := json.Unmarshal(body, &hc); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		n.mu.Lock()
		n.calls[r.URL.Path] = append(n.calls[r.URL.Path], hc)
		n.mu.Unlock()
		code, out = h(hc)
	default:
		http.NotFound(w, r)
		return
	}
	w.WriteHeader(code)
	switch o := out.(type) {
	case string:
		_, _ = io.WriteString(w, o)
	case []byte:
		_, _ = w.Write(o)
	default:
		_ = json.NewEncoder(w).Encode(o)
	}
}

func (n *testNode) handle(path string, h func(HandlerCall) (int, any)) {
	n.mu.Lock()
	n.handlers[path] = h
	n.mu.Unlock()
}

func (n *testNode) lambda(path string, h func(json.RawMessage) (int, any)) {
	n.mu.Lock()
	n.lambdas[path] = h
	n.mu.Unlock()
}

func (n *testNode) callsOf(path string) []HandlerCall {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]HandlerCall(nil), n.calls[path]...)
}

// waitCalls waits until path was called at least k times.
func (n *testNode) waitCalls(path string, k int, within time.Duration) []HandlerCall {
	n.t.Helper()
	var got []HandlerCall
	jstest.Eventually(n.t, within, func() error {
		got = n.callsOf(path)
		if len(got) < k {
			return fmt.Errorf("%s: %d calls, want %d", path, len(got), k)
		}
		return nil
	})
	return got
}

// register registers the node through the proxy at url and returns its id.
func (n *testNode) register(url string, body map[string]any) string {
	n.t.Helper()
	if body == nil {
		body = map[string]any{}
	}
	body["port"] = n.port
	code, b := call(n.t, "POST", url+"/nodes", body)
	if code != 200 {
		n.t.Fatalf("register: %d %s", code, b)
	}
	cr := decode[CreateResponse](n.t, b)
	if cr.ID == "" || cr.Status != "ok" {
		n.t.Fatalf("register: %s", b)
	}
	return cr.ID
}

// echoHandler answers the input map plus key=true.
func echoHandler(key string) func(HandlerCall) (int, any) {
	return func(hc HandlerCall) (int, any) {
		m := map[string]any{}
		_ = json.Unmarshal(hc.Data, &m)
		if m == nil {
			m = map[string]any{}
		}
		m[key] = true
		return 200, m
	}
}

// request posts P1 and returns the status and the response.
func request(t testing.TB, url, id string, body any) (int, PublishResponse) {
	t.Helper()
	code, b := call(t, "POST", url+"/request/"+id, body)
	var r PublishResponse
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("request answer %d %s: %v", code, b, err)
	}
	return code, r
}

// waitServed waits until a request to topic is answered with 200 (subscriptions are set up
// asynchronously after registration).
func waitServed(t testing.TB, url, id, topic string) {
	t.Helper()
	jstest.Eventually(t, 10*time.Second, func() error {
		code, r := request(t, url, id, map[string]any{"topic": topic, "message": map[string]any{}, "timeout": 2})
		if code != 200 {
			return fmt.Errorf("%s: %d %+v", topic, code, r)
		}
		return nil
	})
}

// startPod starts a pod with the fast test flags on js.
func startPod(t *testing.T, js *jetstream.Client, args ...string) *bridgetest.Pod {
	t.Helper()
	return bridgetest.Start(t, js, New(), append(append([]string{}, fastFlags...), args...)...)
}

// newHTTPTestServer serves h on loopback until the test ends and returns its port.
func newHTTPTestServer(t testing.TB, h http.Handler) int {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	_, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(p)
	return port
}

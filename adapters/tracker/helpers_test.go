package tracker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// env is one NATS server with one tracker pod.
type testEnv struct {
	t   testing.TB
	srv *jetstream.Embedded
	js  *jetstream.Client
	pod *bridgetest.Pod
	a   *Adapter
}

func newEnv(t testing.TB, args ...string) *testEnv {
	t.Helper()
	srv := jstest.Server(t)
	js := jstest.Connect(t, srv)
	a := New()
	return &testEnv{t: t, srv: srv, js: js, pod: bridgetest.Start(t, js, a, args...), a: a}
}

// admin calls the pod's admin API.
func admin(t testing.TB, pod *bridgetest.Pod, method, path string, in any, out any) int {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, pod.AdminURL+"/api/v1/tracker"+path, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, path, data, err)
		}
	}
	return resp.StatusCode
}

func addPipeline(t testing.TB, pod *bridgetest.Pod, name string) string {
	t.Helper()
	var out struct{ Name, Secret string }
	if st := admin(t, pod, "POST", "/pipelines", map[string]any{"name": name}, &out); st != 201 || out.Secret == "" {
		t.Fatalf("add pipeline %s: %d %+v", name, st, out)
	}
	return out.Secret
}

func queueItems(t testing.TB, pod *bridgetest.Pod, items ...map[string]any) []string {
	t.Helper()
	var out struct{ IDs []string }
	if st := admin(t, pod, "POST", "/items", map[string]any{"items": items}, &out); st != 201 {
		t.Fatalf("queue: %d", st)
	}
	return out.IDs
}

func getItem(t testing.TB, pod *bridgetest.Pod, id string) Record {
	t.Helper()
	var r Record
	if st := admin(t, pod, "GET", "/items/"+id, nil, &r); st != 200 {
		t.Fatalf("get item %s: %d", id, st)
	}
	return r
}

// wsClient reproduces the reference client (client/worker/tracker.py): Basic auth from the URL
// userinfo, hello first, one request in flight, frames with seq null are advisories.
type wsClient struct {
	t          testing.TB
	c          *websocket.Conn
	seq        int64
	advisories []map[string]any
}

func dialWS(addr, user, pass string) (*websocket.Conn, *http.Response, error) {
	h := http.Header{}
	if user != "" {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 1024}
	return d.Dial("ws://"+addr+"/", h)
}

func connect(t testing.TB, addr, user, pass string, hello bool) *wsClient {
	t.Helper()
	c, resp, err := dialWS(addr, user, pass)
	if err != nil {
		st := 0
		if resp != nil {
			st = resp.StatusCode
		}
		t.Fatalf("dial %s as %s: %v (HTTP %d)", addr, user, err, st)
	}
	t.Cleanup(func() { c.Close() })
	w := &wsClient{t: t, c: c}
	if hello {
		w.raw(`{"v": "20260412.01"}`)
	}
	return w
}

func (w *wsClient) raw(frame string) {
	w.t.Helper()
	if err := w.c.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		w.t.Fatalf("write %s: %v", frame, err)
	}
}

type reply struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
	Message string          `json:"message"`
	Seq     *int64          `json:"seq"`
	HasSeq  bool            `json:"-"`
	HasPay  bool            `json:"-"`
	Raw     string          `json:"-"`
}

// read returns the next frame that is not an advisory (advisories are kept).
func (w *wsClient) read() reply {
	w.t.Helper()
	for {
		_ = w.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, data, err := w.c.ReadMessage()
		if err != nil {
			w.t.Fatalf("read: %v", err)
		}
		var top map[string]json.RawMessage
		if err := json.Unmarshal(data, &top); err != nil {
			w.t.Fatalf("server sent invalid JSON %q", data)
		}
		seq, hasSeq := top["seq"]
		if hasSeq && string(seq) == "null" {
			var adv map[string]any
			_ = json.Unmarshal(data, &adv)
			w.advisories = append(w.advisories, adv)
			continue
		}
		var r reply
		_ = json.Unmarshal(data, &r)
		r.HasSeq = hasSeq
		_, r.HasPay = top["payload"]
		r.Raw = string(data)
		return r
	}
}

// send writes one frame exactly as given and returns the answer.
func (w *wsClient) send(frame string) reply {
	w.t.Helper()
	w.raw(frame)
	return w.read()
}

// call sends {"type":…,"request":…,"seq":n} like the reference client and checks the seq echo.
func (w *wsClient) call(typ string, req any) reply {
	w.t.Helper()
	w.seq++
	b, _ := json.Marshal(req)
	if req == nil {
		b = []byte("null")
	}
	r := w.send(fmt.Sprintf(`{"type":%q,"request":%s,"seq":%d}`, typ, b, w.seq))
	if r.Seq == nil || *r.Seq != w.seq {
		w.t.Fatalf("%s: desync, sent seq %d, got %s", typ, w.seq, r.Raw)
	}
	if !r.HasPay {
		w.t.Fatalf("%s: answer without payload: %s", typ, r.Raw)
	}
	return r
}

type claimed struct {
	Item struct {
		ID             string          `json:"id"`
		Item           string          `json:"item"`
		Status         string          `json:"status"`
		CurrentAttempt int             `json:"_current_attempt"`
		Metadata       json.RawMessage `json:"metadata"`
		PipelineType   string          `json:"pipeline_type"`
		RunOn          string          `json:"run_on"`
		Priority       int             `json:"priority"`
		Attempts       []Attempt       `json:"attempts"`
	} `json:"item"`
	InfoURL string `json:"info_url"`
	Message string `json:"message"`
}

// claim returns the claimed item (id "" when none).
func (w *wsClient) claim(ptype string) claimed {
	w.t.Helper()
	r := w.call("Item:claim", map[string]any{"pipeline_type": ptype})
	if r.Status != 200 {
		w.t.Fatalf("claim: %s", r.Raw)
	}
	var c claimed
	if string(r.Payload) != "null" {
		if err := json.Unmarshal(r.Payload, &c); err != nil {
			w.t.Fatalf("claim payload %s: %v", r.Payload, err)
		}
	}
	return c
}

func (w *wsClient) expect(r reply, status int) {
	w.t.Helper()
	if r.Status != status {
		w.t.Fatalf("want status %d, got %s", status, r.Raw)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// tryCall is call without testing.T (for goroutines).
func (w *wsClient) tryCall(typ string, req any) (reply, error) {
	w.seq++
	b, _ := json.Marshal(req)
	if err := w.c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":%q,"request":%s,"seq":%d}`, typ, b, w.seq))); err != nil {
		return reply{}, err
	}
	for {
		_ = w.c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, data, err := w.c.ReadMessage()
		if err != nil {
			return reply{}, err
		}
		var r reply
		if err := json.Unmarshal(data, &r); err != nil {
			return reply{}, err
		}
		r.Raw = string(data)
		if r.Seq == nil {
			continue
		}
		if *r.Seq != w.seq {
			return r, fmt.Errorf("desync: sent %d got %s", w.seq, data)
		}
		return r, nil
	}
}

func (e *testEnv) podAdapter() *Adapter { return e.a }

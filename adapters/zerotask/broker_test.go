package zerotask

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/adapters/zerotask/ztclient"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// testArgs are fast timings for tests.
var testArgs = []string{"--zerotask-lease=300ms", "--zerotask-node-timeout=2s", "--zerotask-heartbeat=500ms"}

func startPod(t testing.TB, js *jetstream.Client, extra ...string) *bridgetest.Pod {
	t.Helper()
	return bridgetest.Start(t, js, New(), append(append([]string(nil), testArgs...), extra...)...)
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func req(t testing.TB, p *bridgetest.Pod) *ztclient.Req {
	t.Helper()
	r, err := ztclient.DialReq(ctxT(t, 5*time.Second), p.Addrs["zerotask"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func sub(t testing.TB, p *bridgetest.Pod) *ztclient.Sub {
	t.Helper()
	s, err := ztclient.DialSub(ctxT(t, 5*time.Second), p.Addrs["zerotask-pub"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func call(t testing.TB, r *ztclient.Req, method string, params any) json.RawMessage {
	t.Helper()
	var out json.RawMessage
	if err := r.Call(ctxT(t, 10*time.Second), MethodPrefix+method, params, &out); err != nil {
		t.Fatalf("%s %v: %v", method, params, err)
	}
	return out
}

func callErr(t testing.TB, r *ztclient.Req, method string, params any) int {
	t.Helper()
	err := r.Call(ctxT(t, 10*time.Second), MethodPrefix+method, params, nil)
	var e *ztclient.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s %v: want a JSON-RPC error, got %v", method, params, err)
	}
	return e.Code
}

func str(t testing.TB, raw json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("%s is not a string", raw)
	}
	return s
}

func waitFor(t testing.TB, s *ztclient.Sub, method, taskID string) {
	t.Helper()
	_, err := s.Wait(ctxT(t, 10*time.Second), func(n ztclient.Notification) bool {
		var p struct {
			TaskID string `json:"task_id"`
		}
		_ = json.Unmarshal(n.Params, &p)
		return n.Method == method && p.TaskID == taskID
	})
	if err != nil {
		t.Fatalf("waiting for %s %s: %v", method, taskID, err)
	}
}

func TestFlowGoClient(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js)
	node, nsub := req(t, p), sub(t, p)
	client, csub := req(t, p), sub(t, p)
	nid := str(t, call(t, node, "node_connect", []any{}))
	cid := str(t, call(t, client, "client_connect", []any{}))
	if len(nid) != 20 || len(cid) != 20 {
		t.Fatalf("ids %q %q", nid, cid)
	}
	tid := str(t, call(t, client, "client_new_task", map[string]any{"client_id": cid, "method": "add", "params": []int{5, 6}}))
	if !strings.HasPrefix(tid, cid+"-") {
		t.Fatalf("task id %q", tid)
	}
	waitFor(t, nsub, "zerotask.node.task_ready", tid)
	if st := call(t, client, "client_task_status", []any{cid, tid}); string(st) != "1000" {
		t.Fatalf("status %s", st)
	}
	if code := callErr(t, client, "client_task_result", []any{cid, tid}); code != CodeNotComplete {
		t.Fatalf("early result: %d", code)
	}
	obj := call(t, node, "node_task_request", map[string]any{"node_id": nid, "task_id": tid})
	var task map[string]any
	_ = json.Unmarshal(obj, &task)
	if task["method"] != "add" || task["_status"] != float64(3000) || task["_node"] != nid || !strings.HasSuffix(tid, fmt.Sprint(task["id"])) {
		t.Fatalf("task object %s", obj)
	}
	if again := call(t, node, "node_task_request", []any{nid, tid}); string(again) != "null" {
		t.Fatalf("second request got %s", again)
	}
	if err := node.Notify(ctxT(t, 5*time.Second), MethodPrefix+"node_task_finished", map[string]any{"node_id": nid, "task_id": tid, "result": 11}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, csub, "zerotask.client.task_result_ready", tid)
	if st := call(t, client, "client_task_status", []any{cid, tid}); string(st) != "7000" {
		t.Fatalf("status %s", st)
	}
	if res := call(t, client, "client_task_result", map[string]any{"client_id": cid, "task_id": tid}); string(res) != "11" {
		t.Fatalf("result %s", res)
	}
	// Kept (until the result TTL) after the fetch.
	if res := call(t, client, "client_task_result", []any{cid, tid}); string(res) != "11" {
		t.Fatalf("second result %s", res)
	}
}

// With NATS gone, a call that needs JetStream fails with -32603 (nothing half-written is
// acknowledged) and the broker keeps answering.
func TestInternalErrorWithoutNATS(t *testing.T) {
	srv := jstest.Server(t)
	js := jstest.Connect(t, srv)
	p := startPod(t, js, "--zerotask-request-timeout=1s")
	c := req(t, p)
	cid := str(t, call(t, c, "client_connect", []any{}))
	srv.Shutdown()
	err := c.Call(ctxT(t, 20*time.Second), MethodPrefix+"client_new_task", []any{cid, "add", []int{1}}, nil)
	var e *ztclient.Error
	if !errors.As(err, &e) || e.Code != CodeInternal {
		t.Fatalf("want -32603, got %v", err)
	}
	if code := callErr(t, c, "nope", []any{}); code != CodeMethodNotFound {
		t.Fatalf("broker stopped answering: %d", code)
	}
}

// ztclient.CallRaw (the load generators' call): raw results, results larger than its reply
// buffer, JSON-RPC errors as *ztclient.Error.
func TestCallRaw(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js)
	r := req(t, p)
	ctx := ctxT(t, 10*time.Second)
	res, err := r.CallRaw(ctx, MethodPrefix+"client_connect", []byte(`[]`))
	if err != nil || len(res) != 22 || res[0] != '"' {
		t.Fatalf("client_connect: %s %v", res, err)
	}
	cid := string(res)
	big := `"` + strings.Repeat("x", 9000) + `"`
	tid, err := r.CallRaw(ctx, MethodPrefix+"client_new_task", []byte(`[`+cid+`, "echo", [`+big+`]]`))
	if err != nil {
		t.Fatal(err)
	}
	t1 := string(tid)
	n := req(t, p)
	nid, err := n.CallRaw(ctx, "node_connect", []byte(`[]`))
	if err != nil {
		t.Fatal(err)
	}
	nidS := string(nid)
	task, err := n.CallRaw(ctx, "node_task_request", []byte(`[`+nidS+`, `+t1+`]`))
	if err != nil || !strings.Contains(string(task), big) {
		t.Fatalf("task request: %.60s… %v", task, err)
	}
	if res, err := n.CallRaw(ctx, "node_task_finished", []byte(`[`+nidS+`, `+t1+`, `+big+`]`)); err != nil || string(res) != "true" {
		t.Fatalf("finished: %s %v", res, err)
	}
	if res, err := r.CallRaw(ctx, "client_task_result", []byte(`[`+cid+`, `+t1+`]`)); err != nil || string(res) != big {
		t.Fatalf("result: %.60s… %v", res, err)
	}
	_, err = r.CallRaw(ctx, "no_such_method", []byte(`[]`))
	var rpcErr *ztclient.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != CodeMethodNotFound {
		t.Fatalf("unknown method: %v", err)
	}
	if res, err := r.CallRaw(ctx, "client_task_status", []byte(`[`+cid+`, `+t1+`]`)); err != nil || string(res) != "7000" {
		t.Fatalf("status after the error: %s %v", res, err)
	}
}

package zerotask

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/adapters/zerotask/ztclient"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
	"github.com/jetbridge/jetbridge/schemas"
)

func validate(t testing.TB, schema string, v any) {
	t.Helper()
	if err := schemas.Validate("zerotask/"+schema, v); err != nil {
		t.Errorf("%s: %v\nvalue: %s", schema, err, v)
	}
}

// Every request, params, reply, result, notification and stored payload of a full run, in both
// signatures, validated against schemas/zerotask.
func TestSchemas(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js, "--zerotask-max-attempts=1")
	s := sub(t, p)
	node := req(t, p)
	rpc := func(r *ztclient.Req, method string, params any, notify bool) json.RawMessage {
		t.Helper()
		body := map[string]any{"jsonrpc": "2.0", "method": MethodPrefix + method, "params": params}
		if !notify {
			body["id"] = "s1"
		}
		frame, _ := json.Marshal(body)
		validate(t, "request.schema.json", frame)
		pj, _ := json.Marshal(params)
		name := method
		switch method {
		case "task_status":
			name = "node_task_status"
		case "broker_node_status":
			name = "node_status"
		}
		validate(t, name+".params.schema.json", pj)
		var rep []byte
		if r == nil {
			rep = []byte(post(t, p, string(frame)))
		} else {
			var err error
			if rep, err = r.Roundtrip(ctxT(t, 10*time.Second), frame); err != nil {
				t.Fatal(err)
			}
		}
		validate(t, "response.schema.json", rep)
		var resp struct {
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if notify {
			return nil
		}
		if err := json.Unmarshal(rep, &resp); err != nil || resp.Error != nil {
			t.Fatalf("%s: %s", method, rep)
		}
		validate(t, name+".result.schema.json", []byte(resp.Result))
		return resp.Result
	}
	nid := str(t, rpc(node, "node_connect", []any{}, false))
	cid := str(t, rpc(nil, "client_connect", map[string]any{"client_id": nil}, false))
	tid := str(t, rpc(nil, "client_new_task", map[string]any{"client_id": cid, "method": "add", "params": []int{5, 6}}, false))
	tid2 := str(t, rpc(nil, "client_new_task", []any{cid, "div", map[string]int{"a": 1}, "t2"}, false))
	rpc(nil, "client_task_status", []any{cid, tid}, false)
	rpc(node, "node_heartbeat", []any{}, false)
	rpc(node, "node_status", map[string]any{"node_id": nid, "workers": 1}, true)
	rpc(node, "broker_node_status", map[string]any{"workers": 2}, false)
	rpc(node, "node_task_request", []any{nid, tid}, false)
	rpc(node, "node_task_request", map[string]any{"task_id": tid}, false) // null: already assigned
	rpc(node, "task_status", []any{tid, StatusRunning}, false)
	rpc(node, "node_task_status", map[string]any{"node_id": nid, "task_id": tid, "status": 5000, "progress": 0.5}, false)
	rpc(node, "node_task_finished", map[string]any{"task_id": tid, "task_result": 11}, true)
	rpc(node, "node_task_request", []any{tid2}, false)
	rpc(node, "node_task_failed", []any{nid, tid2, map[string]any{"code": -32603, "message": "division by zero"}}, false)
	rpc(nil, "client_task_result", []any{cid, tid}, false)

	// Notifications seen on the PUB socket.
	seen := map[string]bool{}
	for len(seen) < 3 {
		select {
		case f := <-s.C:
			validate(t, "notification.schema.json", f)
			var n ztclient.Notification
			_ = json.Unmarshal(f, &n)
			seen[n.Method] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("notifications seen: %v", seen)
		}
	}
	// Stored payloads.
	ctx := ctxT(t, 10*time.Second)
	for _, b := range []struct{ bucket, schema string }{{bucketTasks, "task.schema.json"}, {bucketNodes, "peer.schema.json"}, {bucketClient, "peer.schema.json"}} {
		kv, err := js.KV(ctx, b.bucket)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := kv.Keys(ctx, "")
		if err != nil || len(keys) == 0 {
			t.Fatalf("%s keys: %v %v", b.bucket, keys, err)
		}
		for _, k := range keys {
			e, err := kv.Get(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			validate(t, b.schema, e.Value)
		}
	}
	tid3 := str(t, rpc(nil, "client_new_task", []any{cid, "lost", nil}, false))
	m, err := js.LastMsg(ctx, streamQueue, js.Subject("zerotask", "queue", "lost", key(tid3)))
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "queue-message.schema.json", m.Data)
	rpc(node, "node_task_request", []any{nid, tid3}, false)
	rpc(node, "node_disconnect", []any{nid}, false) // attempts exhausted: dead-lettered
	m, err = js.LastMsg(ctx, jetstream.DeadLetterStream, js.Subject("dlq", "zerotask", "queue", "lost", key(tid3)))
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "queue-message.schema.json", m.Data)
	h := map[string][]string{}
	for k, v := range m.Header {
		if strings.HasPrefix(k, "Jetbridge-Dlq") {
			h[k] = v
		}
	}
	if err := schemas.Validate("jetbridge/dlq-headers.schema.json", h); err != nil {
		t.Error(err)
	}
	// Admin API.
	var raw json.RawMessage
	getJSON(t, p.AdminURL+"/api/v1/zerotask/tasks", &raw)
	validate(t, "admin-tasks.schema.json", []byte(raw))
	getJSON(t, p.AdminURL+"/api/v1/zerotask/nodes", &raw)
	validate(t, "admin-nodes.schema.json", []byte(raw))
	// Errors and batches.
	for _, f := range []string{`{`, `[]`, `{"jsonrpc": "2.0", "method": "nope", "id": 1}`, `[{"jsonrpc": "2.0", "method": "nope", "id": 1}, {"jsonrpc": "2.0", "method": "nope"}]`} {
		validate(t, "response.schema.json", []byte(post(t, p, f)))
	}
	// The schemas refuse what the broker refuses.
	for schema, bad := range map[string]string{
		"request.schema.json":                   `{"jsonrpc": "2.0", "params": []}`,
		"client_new_task.params.schema.json":    `["c"]`,
		"node_task_request.result.schema.json":  `{"method": "x"}`,
		"client_task_status.result.schema.json": `4000`,
		"notification.schema.json":              `{"jsonrpc": "2.0", "method": "zerotask.node.task_ready", "params": {}}`,
		"task.schema.json":                      `{"id": "a-b", "status": 1000}`,
	} {
		if err := schemas.Validate("zerotask/"+schema, []byte(bad)); err == nil {
			t.Errorf("%s accepted %s", schema, bad)
		}
	}
	// Golden frames of the original clients.
	for _, g := range goldenFrames {
		validate(t, "request.schema.json", []byte(g))
	}
}

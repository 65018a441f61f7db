package zerotask

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/adapters/conformance"
	"github.com/jetbridge/jetbridge/adapters/zerotask/ztclient"
	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
)

// Conformance timings: the watchdog looks at a task every confLease; a node whose pod died is
// lost once its record is confNodeTimeout old, so a task held by it comes back within about
// confNodeTimeout + confLease.
const (
	confLease       = 300 * time.Millisecond
	confNodeTimeout = 3 * time.Second
	confMaxAttempts = 3
	confClientID    = "confclient"
	confMethod      = "conf.work"
)

// TestConformance runs the shared suite over ZeroMQ, as the original clients and nodes talk:
//   - Submit: one client (a REQ socket, always the same client id) sends client_new_task with the
//     suite's key as its own task_id, so the full id "<client>-<key>" is the idempotency key; a
//     retried submission (maybe through another pod) is answered -32020 "exists", which the client
//     takes as "already accepted" once client_task_status confirms the task is there.
//   - Receive on pod p: a node (REQ + SUB on p) waits for zerotask.node.task_ready and asks
//     node_task_request; the payload is the task's single string param.
//   - Complete: node_task_finished. Fail: the node dies (its connection closes) or disconnects
//     (node_disconnect), alternately; its task is requeued, and after --zerotask-max-attempts
//     assignments it fails and is copied to dlq.zerotask.queue.<method>.<task>.
func TestConformance(t *testing.T) {
	conformance.Run(t, &confDriver{}, conformance.Options{
		Lease:       confNodeTimeout + confLease,
		MaxAttempts: confMaxAttempts,
		DeadLetter:  "dlq.zerotask.queue.>",
	})
}

type confDriver struct {
	mu     sync.Mutex
	client *confClient                   // the client, connected to one pod at a time
	nodes  map[*bridgetest.Pod]*confNode // one node per pod
	fails  int
}

type confClient struct {
	pod *bridgetest.Pod
	req *ztclient.Req
}

type confNode struct {
	id  string
	req *ztclient.Req
	sub *ztclient.Sub
}

func (n *confNode) close() {
	n.req.Close()
	n.sub.Close()
}

func (d *confDriver) NewAdapter() (bridge.Adapter, []string) {
	return New(), []string{"--zerotask-lease=" + confLease.String(), "--zerotask-node-timeout=" + confNodeTimeout.String(),
		"--zerotask-max-attempts=3", "--zerotask-heartbeat=500ms", "--zerotask-request-timeout=5s"}
}

// Setup starts a subtest afresh (its own NATS server and pods).
func (d *confDriver) Setup(t *testing.T, p *bridgetest.Pod) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.client, d.nodes, d.fails = nil, map[*bridgetest.Pod]*confNode{}, 0
}

func confCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func rpcCode(err error) int {
	var e *ztclient.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// clientOn returns the client connected to p. A client moving to another pod closes its old
// connection first; until the old pod has seen it close, its id is still taken (-32010), so the
// client tries again.
func (d *confDriver) clientOn(t *testing.T, p *bridgetest.Pod) *ztclient.Req {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.client != nil && d.client.pod == p {
		return d.client.req
	}
	if d.client != nil {
		d.client.req.Close()
		d.client = nil
	}
	r := req(t, p)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var id string
		err := r.Call(confCtx(t, 10*time.Second), MethodPrefix+"client_connect", []any{confClientID}, &id)
		if err == nil {
			if id != confClientID {
				t.Fatalf("client_connect: id %q, want %q", id, confClientID)
			}
			break
		}
		if rpcCode(err) != CodeInvalidClient || time.Now().After(deadline) {
			t.Fatalf("client_connect on the new pod: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.client = &confClient{pod: p, req: r}
	return r
}

func (d *confDriver) Submit(t *testing.T, p *bridgetest.Pod, key string, payload []byte) {
	t.Helper()
	r := d.clientOn(t, p)
	full := confClientID + "-" + key
	var id string
	err := r.Call(confCtx(t, 10*time.Second), MethodPrefix+"client_new_task",
		map[string]any{"client_id": confClientID, "method": confMethod, "params": []string{string(payload)}, "task_id": key}, &id)
	switch {
	case err == nil:
		if id != full {
			t.Fatalf("client_new_task: id %q, want %q", id, full)
		}
	case rpcCode(err) == CodeInvalidTask:
		// A retry of a submission already stored: the task must be there.
		var st int
		if err := r.Call(confCtx(t, 10*time.Second), MethodPrefix+"client_task_status", []any{confClientID, full}, &st); err != nil {
			t.Fatalf("retried client_new_task answered -32020 but the task is not there: %v", err)
		}
	default:
		t.Fatalf("client_new_task %s: %v", key, err)
	}
}

// nodeOn returns the node connected to p (SUB first, so that the announcements its node_connect
// triggers reach it).
func (d *confDriver) nodeOn(t *testing.T, p *bridgetest.Pod) *confNode {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if n := d.nodes[p]; n != nil {
		return n
	}
	n := &confNode{sub: sub(t, p), req: req(t, p)}
	if err := n.req.Call(confCtx(t, 10*time.Second), MethodPrefix+"node_connect", []any{}, &n.id); err != nil || n.id == "" {
		t.Fatalf("node_connect: %v", err)
	}
	d.nodes[p] = n
	return n
}

func (d *confDriver) Receive(t *testing.T, p *bridgetest.Pod, within time.Duration) conformance.Delivery {
	t.Helper()
	n := d.nodeOn(t, p)
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		var raw []byte
		select {
		case <-timer.C:
			return nil
		case m, ok := <-n.sub.C:
			if !ok {
				t.Fatalf("node's SUB connection to the pod closed")
			}
			raw = m
		}
		var note struct {
			Method string `json:"method"`
			Params struct {
				Method string `json:"method"`
				TaskID string `json:"task_id"`
			} `json:"params"`
		}
		if json.Unmarshal(raw, &note) != nil || note.Method != eventMethods[evTaskReady] || note.Params.Method != confMethod {
			continue
		}
		var obj *struct {
			Method string            `json:"method"`
			Params []json.RawMessage `json:"params"`
			Status int               `json:"_status"`
			Node   string            `json:"_node"`
		}
		if err := n.req.Call(confCtx(t, 10*time.Second), MethodPrefix+"node_task_request", []any{n.id, note.Params.TaskID}, &obj); err != nil {
			t.Fatalf("node_task_request %s: %v", note.Params.TaskID, err)
		}
		if obj == nil {
			continue // assigned to another node, or done: an older announcement
		}
		if obj.Method != confMethod || obj.Status != StatusAssigned || obj.Node != n.id || len(obj.Params) != 1 {
			t.Fatalf("task object %+v", obj)
		}
		var payload string
		if err := json.Unmarshal(obj.Params[0], &payload); err != nil {
			t.Fatalf("task param %s: %v", obj.Params[0], err)
		}
		return &confDelivery{d: d, pod: p, node: n, task: note.Params.TaskID, payload: []byte(payload)}
	}
}

type confDelivery struct {
	d       *confDriver
	pod     *bridgetest.Pod
	node    *confNode
	task    string
	payload []byte
}

func (c *confDelivery) Payload() []byte { return c.payload }

func (c *confDelivery) Complete(t *testing.T) {
	t.Helper()
	var ok bool
	if err := c.node.req.Call(confCtx(t, 10*time.Second), MethodPrefix+"node_task_finished", []any{c.node.id, c.task, "done"}, &ok); err != nil || !ok {
		t.Fatalf("node_task_finished %s: %v (%v)", c.task, err, ok)
	}
}

// Fail loses the node: it dies (connection closed) or, every other time, says node_disconnect
// first. Its next Receive on that pod connects a new node.
func (c *confDelivery) Fail(t *testing.T) {
	t.Helper()
	c.d.mu.Lock()
	c.d.fails++
	clean := c.d.fails%2 == 0
	if c.d.nodes[c.pod] == c.node {
		delete(c.d.nodes, c.pod)
	}
	c.d.mu.Unlock()
	if clean {
		var ok bool
		if err := c.node.req.Call(confCtx(t, 10*time.Second), MethodPrefix+"node_disconnect", []any{c.node.id}, &ok); err != nil || !ok {
			t.Fatalf("node_disconnect: %v (%v)", err, ok)
		}
	}
	c.node.close()
}

package zerotask

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// post sends a JSON-RPC frame over HTTP and returns the reply body.
func post(t testing.TB, p *bridgetest.Pod, frame string) string {
	t.Helper()
	resp, err := http.Post(p.AdminURL+"/api/v1/zerotask/rpc", "application/json", strings.NewReader(frame))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST rpc: %s %s", resp.Status, b)
	}
	return string(b)
}

func httpCall(t testing.TB, p *bridgetest.Pod, method string, params any) json.RawMessage {
	t.Helper()
	return result(t, post(t, p, rpcFrame(method, params, "h")), "h")
}

func taskRecord(t testing.TB, js *jetstream.Client, id string) Task {
	t.Helper()
	kv, err := js.KV(ctxT(t, 5*time.Second), bucketTasks)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctxT(t, 5*time.Second), key(id))
	if err != nil {
		t.Fatalf("task %s: %v", id, err)
	}
	var tk Task
	if err := json.Unmarshal(e.Value, &tk); err != nil {
		t.Fatal(err)
	}
	return tk
}

// A pod that dies with a node holding a task: once the node's record is stale the watchdog on
// the surviving pod requeues the task and another node finishes it.
func TestPodDeathRequeues(t *testing.T) {
	srv := jstest.Server(t)
	jsA := jstest.Connect(t, srv)
	pa := startPod(t, jsA)
	pb := startPod(t, jstest.Connect(t, srv))
	n1 := req(t, pa)
	n1id := str(t, call(t, n1, "node_connect", []any{}))
	client, csub := req(t, pb), sub(t, pb)
	cid := str(t, call(t, client, "client_connect", []any{}))
	tid := str(t, call(t, client, "client_new_task", []any{cid, "sleep", []int{1}}))
	call(t, n1, "node_task_request", []any{n1id, tid})
	nsub := sub(t, pb)
	n2 := req(t, pb)
	n2id := str(t, call(t, n2, "node_connect", []any{}))

	pa.Kill(t)
	jsA.Close()
	// Requeued once n1's record is stale, and announced again (an earlier announcement may also
	// be in nsub's queue, so the status decides when to ask).
	jstest.Eventually(t, 15*time.Second, func() error {
		if st := call(t, client, "client_task_status", []any{cid, tid}); string(st) != "1000" {
			return fmt.Errorf("status %s", st)
		}
		return nil
	})
	waitFor(t, nsub, "zerotask.node.task_ready", tid)
	if obj := call(t, n2, "node_task_request", []any{n2id, tid}); !strings.Contains(string(obj), n2id) {
		t.Fatalf("requeued task: %s", obj)
	}
	call(t, n2, "node_task_finished", []any{n2id, tid, "done"})
	waitFor(t, csub, "zerotask.client.task_result_ready", tid)
	if r := call(t, client, "client_task_result", []any{cid, tid}); string(r) != `"done"` {
		t.Fatal(string(r))
	}
	if rec := taskRecord(t, pb.Env.JS, tid); rec.Attempts != 2 || rec.NodeID != n2id {
		t.Fatalf("record %+v", rec)
	}
}

// A node whose pod dies reconnects to another pod within the timeout and finishes its task there.
func TestNodeMovesToOtherPod(t *testing.T) {
	srv := jstest.Server(t)
	jsA := jstest.Connect(t, srv)
	pa := startPod(t, jsA, "--zerotask-node-timeout=5s")
	pb := startPod(t, jstest.Connect(t, srv), "--zerotask-node-timeout=5s")
	n1 := req(t, pa)
	nid := str(t, call(t, n1, "node_connect", []any{"mover"}))
	client := req(t, pb)
	cid := str(t, call(t, client, "client_connect", []any{}))
	tid := str(t, call(t, client, "client_new_task", []any{cid, "m", nil}))
	call(t, n1, "node_task_request", []any{nid, tid})
	pa.Kill(t)
	jsA.Close()
	n1b := req(t, pb)
	call(t, n1b, "node_task_finished", []any{nid, tid, 1})
	if r := call(t, client, "client_task_result", []any{cid, tid}); string(r) != "1" {
		t.Fatal(string(r))
	}
	if rec := taskRecord(t, pb.Env.JS, tid); rec.Attempts != 1 {
		t.Fatalf("record %+v", rec)
	}
}

// An HTTP node that stops sending heartbeats is dropped after the node timeout; its task is
// requeued and its id refused.
func TestHeartbeatLoss(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js)
	nid := str(t, httpCall(t, p, "node_connect", []any{}))
	cid := str(t, httpCall(t, p, "client_connect", []any{}))
	tid := str(t, httpCall(t, p, "client_new_task", []any{cid, "add", []int{1, 2}}))
	httpCall(t, p, "node_task_request", []any{nid, tid})
	// Heartbeats keep it for longer than the timeout.
	for i := 0; i < 6; i++ {
		if r := httpCall(t, p, "node_heartbeat", []any{nid}); string(r) != "true" {
			t.Fatal(string(r))
		}
		time.Sleep(500 * time.Millisecond) // the heartbeat period itself, not synchronisation
	}
	if st := httpCall(t, p, "client_task_status", []any{cid, tid}); string(st) != "3000" {
		t.Fatalf("assigned task of a live node: %s", st)
	}
	jstest.Eventually(t, 10*time.Second, func() error {
		if st := httpCall(t, p, "client_task_status", []any{cid, tid}); string(st) != "1000" {
			return fmt.Errorf("status %s", st)
		}
		return nil
	})
	if c := errCode(t, post(t, p, rpcFrame("node_heartbeat", []any{nid}, "x"))); c != CodeInvalidNode {
		t.Fatalf("dropped node: %d", c)
	}
}

// A task whose node is lost MaxAttempts times fails with an error and is dead-lettered.
func TestMaxAttemptsDeadLetters(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js, "--zerotask-max-attempts=2")
	cid := str(t, httpCall(t, p, "client_connect", []any{}))
	tid := str(t, httpCall(t, p, "client_new_task", []any{cid, "crash.me", []int{1}, "t.1"}))
	for i := 0; i < 2; i++ {
		nid := str(t, httpCall(t, p, "node_connect", []any{}))
		if obj := httpCall(t, p, "node_task_request", []any{nid, tid}); string(obj) == "null" {
			t.Fatalf("attempt %d: not assigned", i+1)
		}
		httpCall(t, p, "node_disconnect", []any{nid})
	}
	rep := post(t, p, rpcFrame("client_task_result", []any{cid, tid}, "r"))
	if c := errCode(t, rep); c != CodeInternal || !strings.Contains(rep, "abandoned after 2 attempts") {
		t.Fatalf("abandoned task: %s", rep)
	}
	subj := js.Subject("dlq", "zerotask", "queue", jetstream.Token("crash.me"), key(tid))
	m, err := js.LastMsg(ctxT(t, 5*time.Second), jetstream.DeadLetterStream, subj)
	if err != nil {
		t.Fatalf("dead letter on %s: %v", subj, err)
	}
	var q queueMsg
	if json.Unmarshal(m.Data, &q) != nil || q.ID != tid || m.Header.Get(jetstream.HeaderDLQReason) == "" {
		t.Fatalf("dead letter %s %v", m.Data, m.Header)
	}
	// The queue message goes once the watchdog sees the task failed.
	jstest.Eventually(t, 10*time.Second, func() error {
		info, err := js.StreamInfo(ctxT(t, 5*time.Second), streamQueue)
		if err != nil || info.Messages != 0 {
			return fmt.Errorf("queue holds %d (%v)", info.Messages, err)
		}
		return nil
	})
}

// A fetched result expires after --zerotask-result-ttl; an unfetched one stays.
func TestResultTTL(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js, "--zerotask-result-ttl=1s")
	nid := str(t, httpCall(t, p, "node_connect", []any{}))
	cid := str(t, httpCall(t, p, "client_connect", []any{}))
	var ids []string
	for i := 0; i < 2; i++ {
		tid := str(t, httpCall(t, p, "client_new_task", []any{cid, "add", []int{i}}))
		httpCall(t, p, "node_task_request", []any{nid, tid})
		httpCall(t, p, "node_task_finished", []any{nid, tid, i})
		ids = append(ids, tid)
	}
	if r := httpCall(t, p, "client_task_result", []any{cid, ids[0]}); string(r) != "0" {
		t.Fatal(string(r))
	}
	jstest.Eventually(t, 10*time.Second, func() error {
		if rep := post(t, p, rpcFrame("client_task_status", []any{cid, ids[0]}, "s")); !strings.Contains(rep, `"code": -32020`) {
			return fmt.Errorf("status of an expired result: %s", rep)
		}
		return nil
	})
	if r := httpCall(t, p, "client_task_result", []any{cid, ids[1]}); string(r) != "1" {
		t.Fatalf("unfetched result: %s", r)
	}
}

// The methods over NATS request-reply, and the notifications on NATS subjects; the admin API.
func TestNATSAndAdmin(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js)
	events := make(chan string, 16)
	s, err := js.Subscribe(js.Subject("zerotask", "events", ">"), "", func(m *jetstream.Msg) { events <- m.Subject + " " + string(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unsubscribe()
	natsCall := func(method string, params any) json.RawMessage {
		t.Helper()
		m, err := js.Request(ctxT(t, 5*time.Second), js.Subject("zerotask", "rpc"), []byte(rpcFrame(method, params, "n")), nil)
		if err != nil {
			t.Fatal(err)
		}
		return result(t, string(m.Data), "n")
	}
	nid := str(t, natsCall("node_connect", []any{"nats-node"}))
	cid := str(t, natsCall("client_connect", []any{}))
	tid := str(t, natsCall("client_new_task", []any{cid, "add", []int{1, 1}}))
	select {
	case ev := <-events:
		if !strings.Contains(ev, "events.task_ready ") || !strings.Contains(ev, tid) {
			t.Fatalf("event %s", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event on NATS")
	}
	// Admin: the waiting task and the node.
	var tasks struct {
		Tasks []TaskView `json:"tasks"`
	}
	getJSON(t, p.AdminURL+"/api/v1/zerotask/tasks?status=queued", &tasks)
	if len(tasks.Tasks) != 1 || tasks.Tasks[0].ID != tid || tasks.Tasks[0].StatusName != "queued" {
		t.Fatalf("tasks %+v", tasks)
	}
	getJSON(t, p.AdminURL+"/api/v1/zerotask/tasks?status=7000", &tasks)
	if len(tasks.Tasks) != 0 {
		t.Fatalf("finished tasks %+v", tasks)
	}
	var nodes struct {
		Nodes []NodeView `json:"nodes"`
	}
	getJSON(t, p.AdminURL+"/api/v1/zerotask/nodes", &nodes)
	if len(nodes.Nodes) != 1 || nodes.Nodes[0].ID != nid || !nodes.Nodes[0].Alive || nodes.Nodes[0].Transport != "nats" {
		t.Fatalf("nodes %+v", nodes)
	}
	if resp, err := http.Get(p.AdminURL + "/api/v1/zerotask/tasks?status=bogus"); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad status filter: %v %v", resp, err)
	}
	natsCall("node_task_request", []any{nid, tid})
	natsCall("node_task_finished", []any{nid, tid, 2})
	if r := natsCall("client_task_result", []any{cid, tid}); string(r) != "2" {
		t.Fatal(string(r))
	}
	// An oversized HTTP body is refused.
	big := bytes.Repeat([]byte("x"), p.Env.ZMQMaxMessage+1)
	resp, err := http.Post(p.AdminURL+"/api/v1/zerotask/rpc", "application/json", bytes.NewReader(big))
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: %v %v", resp, err)
	}
	resp.Body.Close()
}

func getJSON(t testing.TB, url string, out any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatal(err)
	}
}

// Tasks survive a restart of the pods (state is in JetStream only).
func TestRestartKeepsTasks(t *testing.T) {
	srv := jstest.Server(t)
	js1 := jstest.Connect(t, srv)
	p1 := startPod(t, js1)
	cid := str(t, httpCall(t, p1, "client_connect", []any{"keeper"}))
	tid := str(t, httpCall(t, p1, "client_new_task", []any{cid, "later", []int{9}}))
	p1.Shutdown(t)
	js1.Close()
	p2 := startPod(t, jstest.Connect(t, srv))
	nsub := sub(t, p2)
	node := req(t, p2)
	nid := str(t, call(t, node, "node_connect", []any{}))
	waitFor(t, nsub, "zerotask.node.task_ready", tid)
	call(t, node, "node_task_request", []any{nid, tid})
	call(t, node, "node_task_finished", []any{nid, tid, 9})
	if r := httpCall(t, p2, "client_task_result", []any{cid, tid}); string(r) != "9" {
		t.Fatal(string(r))
	}
}

// A client whose pod dies goes on with its id on another pod (its task and result are there), and
// that pod frees the id when the client's new connection closes.
func TestClientMovesToOtherPod(t *testing.T) {
	srv := jstest.Server(t)
	jsA := jstest.Connect(t, srv)
	pa := startPod(t, jsA)
	pb := startPod(t, jstest.Connect(t, srv))
	c1 := req(t, pa)
	cid := str(t, call(t, c1, "client_connect", []any{"roamer"}))
	tid := str(t, call(t, c1, "client_new_task", []any{cid, "m", []int{1}}))
	pa.Kill(t)
	jsA.Close()
	node := req(t, pb)
	nid := str(t, call(t, node, "node_connect", []any{}))
	call(t, node, "node_task_request", []any{nid, tid})
	call(t, node, "node_task_finished", []any{nid, tid, "ok"})
	c2 := req(t, pb)
	if r := call(t, c2, "client_task_result", []any{cid, tid}); string(r) != `"ok"` {
		t.Fatal(string(r))
	}
	other := req(t, pb)
	if c := callErr(t, other, "client_connect", []any{cid}); c != CodeInvalidClient {
		t.Fatalf("id held by the moved client: %d", c)
	}
	c2.Close()
	jstest.Eventually(t, 10*time.Second, func() error {
		var id string
		err := other.Call(ctxT(t, 5*time.Second), MethodPrefix+"client_connect", []any{cid}, &id)
		return err
	})
}

// A finished task's queue message goes at once (the pod holding its delivery acks it when told the
// result is ready), not at its next lease.
func TestQueueDrainsOnResult(t *testing.T) {
	srv := jstest.Server(t)
	js := jstest.Connect(t, srv)
	pa := startPod(t, js, "--zerotask-lease=1h")
	pb := startPod(t, jstest.Connect(t, srv), "--zerotask-lease=1h")
	nid := str(t, httpCall(t, pb, "node_connect", []any{}))
	cid := str(t, httpCall(t, pa, "client_connect", []any{}))
	for i := 0; i < 20; i++ {
		p := pa
		if i%2 == 1 {
			p = pb
		}
		tid := str(t, httpCall(t, p, "client_new_task", []any{cid, "add", []int{i}}))
		httpCall(t, pb, "node_task_request", []any{nid, tid})
		httpCall(t, pb, "node_task_finished", []any{nid, tid, i})
	}
	jstest.Eventually(t, 10*time.Second, func() error {
		info, err := js.StreamInfo(ctxT(t, 5*time.Second), streamQueue)
		if err != nil || info.Messages != 0 {
			return fmt.Errorf("queue holds %d (%v)", info.Messages, err)
		}
		return nil
	})
}

// A submission that stopped after storing its record (no queue message) is repaired by the
// client's retry: the retry is answered -32020 (the id exists), the task is queued once, and a
// node gets it; a retry of a queued task adds nothing.
func TestRetriedSubmissionQueuesOrphanedRecord(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js)
	cid := str(t, httpCall(t, p, "client_connect", []any{"retrier"}))
	kv, err := js.KV(ctxT(t, 5*time.Second), bucketTasks)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	orphan := Task{ID: cid + "-t1", ClientID: cid, TaskID: "t1", Method: "add", Params: json.RawMessage(`[1,2]`),
		Status: StatusQueued, Created: now, Updated: now}
	rec, _ := encodeTask(&orphan)
	if _, err := kv.Create(ctxT(t, 5*time.Second), key(orphan.ID), rec, 0); err != nil {
		t.Fatal(err)
	}
	queued := func() uint64 {
		info, err := js.StreamInfo(ctxT(t, 5*time.Second), streamQueue)
		if err != nil {
			t.Fatal(err)
		}
		return info.Messages
	}
	for range 2 {
		if rep := post(t, p, rpcFrame("client_new_task", []any{cid, "add", []int{1, 2}, "t1"}, "n")); errCode(t, rep) != CodeInvalidTask {
			t.Fatalf("retry: %s", rep)
		}
		if n := queued(); n != 1 {
			t.Fatalf("queue holds %d messages, want 1", n)
		}
	}
	nid := str(t, httpCall(t, p, "node_connect", []any{}))
	if obj := httpCall(t, p, "node_task_request", []any{nid, orphan.ID}); string(obj) == "null" {
		t.Fatal("not assigned")
	}
	httpCall(t, p, "node_task_finished", []any{nid, orphan.ID, 3})
	if r := httpCall(t, p, "client_task_result", []any{cid, orphan.ID}); string(r) != "3" {
		t.Fatal(string(r))
	}
}

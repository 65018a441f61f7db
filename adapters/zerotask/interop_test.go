package zerotask

// Interop tests against real libzmq REQ and SUB sockets through Debian's python3-zmq, sending the
// exact frames the original (Python) client and node send.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/jetbridge/jetbridge/adapters/zmtp/zmtptest"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

const python = zmtptest.Python

func requirePyzmq(t testing.TB) {
	t.Helper()
	zmtptest.RequirePyzmq(t, "zerotask pyzmq/libzmq interop")
}

// py is one Python process holding libzmq sockets (testdata/driver.py).
type py struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *bytes.Buffer
	mu     sync.Mutex
	dead   bool
}

func startPy(t testing.TB) *py {
	t.Helper()
	requirePyzmq(t)
	d := &py{t: t, lines: make(chan string, 16), stderr: &bytes.Buffer{}}
	d.cmd = exec.Command(python, "testdata/driver.py")
	d.cmd.Stderr = &lockedWriter{mu: &d.mu, w: d.stderr}
	var err error
	if d.stdin, err = d.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(d.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			d.lines <- sc.Text()
		}
	}()
	t.Cleanup(d.kill)
	return d
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// kill ends the process at once (a node that dies: the OS closes its connections).
func (d *py) kill() {
	if d.dead {
		return
	}
	d.dead = true
	_ = d.cmd.Process.Kill()
	_ = d.cmd.Wait()
}

// do runs one driver command and returns the frame it answered; it fails the test on error.
func (d *py) do(cmd map[string]any) string {
	d.t.Helper()
	frame, err := d.try(cmd)
	if err != nil {
		d.t.Fatalf("driver %v: %v", cmd, err)
	}
	return frame
}

func (d *py) try(cmd map[string]any) (string, error) {
	b, _ := json.Marshal(cmd)
	if _, err := d.stdin.Write(append(b, '\n')); err != nil {
		return "", err
	}
	select {
	case line, ok := <-d.lines:
		if !ok {
			d.mu.Lock()
			defer d.mu.Unlock()
			return "", fmt.Errorf("driver exited: %s", d.stderr.String())
		}
		var r struct {
			OK    bool   `json:"ok"`
			Frame string `json:"frame"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return "", fmt.Errorf("driver said %q", line)
		}
		if !r.OK {
			return "", fmt.Errorf("%s", r.Error)
		}
		return r.Frame, nil
	case <-time.After(30 * time.Second):
		return "", fmt.Errorf("driver silent for 30s")
	}
}

func (d *py) req(name string, p *bridgetest.Pod) {
	d.do(map[string]any{"op": "req", "sock": name, "addr": "tcp://" + p.Addrs["zerotask"]})
}

func (d *py) sub(name string, p *bridgetest.Pod) {
	d.do(map[string]any{"op": "sub", "sock": name, "addr": "tcp://" + p.Addrs["zerotask-pub"]})
}

// send sends frame verbatim on a REQ socket and returns the reply frame.
func (d *py) send(sock, frame string) string {
	d.t.Helper()
	return d.do(map[string]any{"op": "send", "sock": sock, "frame": frame})
}

// wait returns the first PUB frame containing every part.
func (d *py) wait(sock string, parts ...string) string {
	d.t.Helper()
	return d.do(map[string]any{"op": "wait", "sock": sock, "match": parts, "timeout": 15000})
}

// rpcFrame is a request as the original client writes it (Python's json.dumps of its dict).
func rpcFrame(method string, params any, id string) string {
	p, _ := json.Marshal(params)
	f := fmt.Sprintf(`{"jsonrpc": "2.0", "method": "zerotask.broker.%s", "params": %s, "id": %q}`, method, p, id)
	return string(Pythonize([]byte(f)))
}

func notifyFrame(method string, params any) string {
	p, _ := json.Marshal(params)
	return string(Pythonize([]byte(fmt.Sprintf(`{"jsonrpc": "2.0", "method": "zerotask.broker.%s", "params": %s}`, method, p))))
}

// result decodes a success reply and checks its id.
func result(t testing.TB, reply, id string) json.RawMessage {
	t.Helper()
	var r struct {
		JSONRPC string          `json:"jsonrpc"`
		Result  json.RawMessage `json:"result"`
		Error   json.RawMessage `json:"error"`
		ID      string          `json:"id"`
	}
	if err := json.Unmarshal([]byte(reply), &r); err != nil || r.JSONRPC != "2.0" || r.Error != nil || r.ID != id {
		t.Fatalf("reply %s: want a result for id %q", reply, id)
	}
	return r.Result
}

// errCode decodes an error reply.
func errCode(t testing.TB, reply string) int {
	t.Helper()
	var r struct {
		Error *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(reply), &r); err != nil || r.Error == nil || r.Error.Message == "" {
		t.Fatalf("reply %s: want an error", reply)
	}
	return r.Error.Code
}

// TestPyFlow replays §1.5 frame for frame with libzmq REQ and SUB sockets.
func TestPyFlow(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js)
	d := startPy(t)
	d.sub("nsub", p)
	d.req("node", p)
	d.sub("csub", p)
	d.req("client", p)

	// 1. node REQ node_connect [] → {"result": "<20 letters>"}
	rep := d.send("node", rpcFrame("node_connect", []any{}, "aaaaaaaaaaaaaaaaaaa1"))
	nid := str(t, result(t, rep, "aaaaaaaaaaaaaaaaaaa1"))
	if want := fmt.Sprintf(`{"jsonrpc": "2.0", "result": %q, "id": "aaaaaaaaaaaaaaaaaaa1"}`, nid); rep != want || len(nid) != 20 {
		t.Fatalf("node_connect reply %s, want %s", rep, want)
	}
	// 2. client REQ client_connect [] → client id
	cid := str(t, result(t, d.send("client", rpcFrame("client_connect", []any{}, "aaaaaaaaaaaaaaaaaaa2")), "aaaaaaaaaaaaaaaaaaa2"))
	// 3. client_new_task {client_id, method: "add", params: [5, 6]} → "cid-tid", and the PUB announces it
	rep = d.send("client", rpcFrame("client_new_task", map[string]any{"client_id": cid, "method": "add", "params": []int{5, 6}}, "aaaaaaaaaaaaaaaaaaa3"))
	tid := str(t, result(t, rep, "aaaaaaaaaaaaaaaaaaa3"))
	if !strings.HasPrefix(tid, cid+"-") || len(tid) != 41 {
		t.Fatalf("task id %q", tid)
	}
	ready := d.wait("nsub", "zerotask.node.task_ready", tid)
	if want := fmt.Sprintf(`{"jsonrpc": "2.0", "method": "zerotask.node.task_ready", "params": {"method": "add", "task_id": %q}}`, tid); ready != want {
		t.Fatalf("PUB %s, want %s", ready, want)
	}
	d.wait("nsub", "zerotask.node.broker_new_task", tid) // the spec's name too
	// 4. node_task_request {node_id, task_id} → the task object, status 3000
	rep = d.send("node", rpcFrame("node_task_request", map[string]any{"node_id": nid, "task_id": tid}, "aaaaaaaaaaaaaaaaaaa4"))
	var task struct {
		Method string `json:"method"`
		Params []int  `json:"params"`
		Status int    `json:"_status"`
		ID     string `json:"id"`
		Node   string `json:"_node"`
	}
	if err := json.Unmarshal(result(t, rep, "aaaaaaaaaaaaaaaaaaa4"), &task); err != nil || task.Method != "add" || fmt.Sprint(task.Params) != "[5 6]" ||
		task.Status != StatusAssigned || cid+"-"+task.ID != tid || task.Node != nid {
		t.Fatalf("task object %s", rep)
	}
	// 6. node_task_finished as a notification → null, and the PUB tells the client
	if rep := d.send("node", notifyFrame("node_task_finished", map[string]any{"node_id": nid, "task_id": tid, "result": 11})); rep != "null" {
		t.Fatalf("notification answered %s", rep)
	}
	done := d.wait("csub", "zerotask.client.task_result_ready", tid)
	if want := fmt.Sprintf(`{"jsonrpc": "2.0", "method": "zerotask.client.task_result_ready", "params": {"task_id": %q}}`, tid); done != want {
		t.Fatalf("PUB %s, want %s", done, want)
	}
	// 7. client_task_result → 11
	rep = d.send("client", rpcFrame("client_task_result", map[string]any{"client_id": cid, "task_id": tid}, "aaaaaaaaaaaaaaaaaaa7"))
	if rep != `{"jsonrpc": "2.0", "result": 11, "id": "aaaaaaaaaaaaaaaaaaa7"}` {
		t.Fatalf("result reply %s", rep)
	}
	// The original client's send_json of its dict works too.
	rep = d.do(map[string]any{"op": "sendjson", "sock": "client", "obj": map[string]any{"jsonrpc": "2.0",
		"method": "zerotask.broker.client_task_status", "params": map[string]any{"client_id": cid, "task_id": tid}, "id": "aaaaaaaaaaaaaaaaaaa8"}})
	if st := result(t, rep, "aaaaaaaaaaaaaaaaaaa8"); string(st) != "7000" {
		t.Fatalf("status %s", st)
	}
}

// TestPyErrors: every error code on the wire, malformed JSON followed by a good request on the
// same socket, notifications and batches.
func TestPyErrors(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js)
	d := startPy(t)
	d.req("a", p)
	d.req("b", p)
	d.req("node", p)

	// -32700: not JSON, and the broker keeps serving the same socket.
	for _, bad := range []string{`{"jsonrpc": "2.0", "method": `, "\xff\xfe", "", "nul", `{"a":1}}`} {
		if c := errCode(t, d.send("a", bad)); c != CodeParseError {
			t.Fatalf("%q: code %d", bad, c)
		}
		cid := str(t, result(t, d.send("a", rpcFrame("client_connect", []any{}, "id1")), "id1"))
		if len(cid) != 20 {
			t.Fatal(cid)
		}
	}
	cid := str(t, result(t, d.send("a", rpcFrame("client_connect", []any{"alice"}, "c1")), "c1"))
	if cid != "alice" {
		t.Fatal(cid)
	}
	cases := []struct {
		sock, frame string
		code        int
	}{
		{"a", `{"jsonrpc": "2.0", "method": "zerotask.broker.client_connect", "params": "x", "id": "r1"}`, CodeInvalidRequest},
		{"a", `{"jsonrpc": "2.0", "params": [], "id": "r2"}`, CodeInvalidRequest},
		{"a", `[1, 2]`, 0}, // batch of invalid requests: checked below
		{"a", `[]`, CodeInvalidRequest},
		{"a", `"hello"`, CodeInvalidRequest},
		{"a", `{"jsonrpc": "1.0", "method": "zerotask.broker.client_connect", "id": "r3"}`, CodeInvalidRequest},
		{"a", rpcFrame("no_such_method", []any{}, "r4"), CodeMethodNotFound},
		{"a", rpcFrame("client_new_task", []any{"alice", "add", []int{1}, "t1", "extra"}, "r5"), CodeInvalidParams},
		{"a", rpcFrame("client_new_task", map[string]any{"client_id": "alice", "method": 7}, "r6"), CodeInvalidParams},
		{"a", rpcFrame("client_new_task", map[string]any{"client_id": "alice", "bogus": 1, "method": "x"}, "r7"), CodeInvalidParams},
		{"a", rpcFrame("client_new_task", map[string]any{"client_id": "nobody", "method": "add", "params": []int{1}}, "r8"), CodeInvalidClient},
		{"b", rpcFrame("client_connect", []any{"alice"}, "r9"), CodeInvalidClient}, // taken by a connected client
		{"a", rpcFrame("client_disconnect", []any{"nobody"}, "r10"), CodeInvalidClient},
		{"a", rpcFrame("client_task_status", []any{"alice", "t1"}, "r11"), CodeInvalidTask}, // short id
		{"a", rpcFrame("client_task_status", []any{"alice", "alice-none"}, "r12"), CodeInvalidTask},
		{"a", rpcFrame("client_task_result", []any{"alice", "alice-none"}, "r13"), CodeInvalidTask},
		{"node", rpcFrame("node_task_request", []any{"ghost", "alice-t1"}, "r14"), CodeInvalidNode},
		{"node", rpcFrame("node_disconnect", []any{"ghost"}, "r15"), CodeInvalidNode},
		{"node", rpcFrame("node_heartbeat", []any{}, "r16"), CodeInvalidNode}, // no node on this socket
	}
	for _, c := range cases {
		rep := d.send(c.sock, c.frame)
		if c.code == 0 {
			var arr []json.RawMessage
			if json.Unmarshal([]byte(rep), &arr) != nil || len(arr) != 2 || errCode(t, string(arr[0])) != CodeInvalidRequest {
				t.Fatalf("%s → %s", c.frame, rep)
			}
			continue
		}
		if got := errCode(t, rep); got != c.code {
			t.Errorf("%s → %s, want code %d", c.frame, rep, c.code)
		}
		if strings.Contains(c.frame, `"id": "r`) && !strings.Contains(rep, `"id": "r`) && c.code != CodeInvalidRequest {
			t.Errorf("%s → %s: id missing", c.frame, rep)
		}
	}
	// A falsy id is left out of an error, as the original does.
	if rep := d.send("a", `{"jsonrpc": "2.0", "method": "nope", "params": [], "id": ""}`); rep != `{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found."}}` {
		t.Fatalf("falsy id: %s", rep)
	}
	// -32020 duplicate task id, -32050 not complete.
	tid := str(t, result(t, d.send("a", rpcFrame("client_new_task", []any{"alice", "add", []int{1, 2}, "t1"}, "n1")), "n1"))
	if tid != "alice-t1" {
		t.Fatal(tid)
	}
	if c := errCode(t, d.send("a", rpcFrame("client_new_task", []any{"alice", "add", []int{1, 2}, "t1"}, "n2"))); c != CodeInvalidTask {
		t.Fatalf("duplicate: %d", c)
	}
	if c := errCode(t, d.send("a", rpcFrame("client_task_result", []any{"alice", tid}, "n3"))); c != CodeNotComplete {
		t.Fatalf("not complete: %d", c)
	}
	// -32030: a node id active elsewhere.
	nid := str(t, result(t, d.send("node", rpcFrame("node_connect", []any{"worker-1"}, "n4")), "n4"))
	if c := errCode(t, d.send("b", rpcFrame("node_connect", []any{"worker-1"}, "n5"))); c != CodeInvalidNode {
		t.Fatalf("active node id: %d", c)
	}
	// The spec's signatures (no node id: the node of this socket) and node_heartbeat.
	if r := result(t, d.send("node", rpcFrame("node_heartbeat", []any{}, "n6")), "n6"); string(r) != "true" {
		t.Fatal(string(r))
	}
	if r := result(t, d.send("node", rpcFrame("node_task_request", []any{tid}, "n7")), "n7"); !strings.Contains(string(r), `"_node": "`+nid+`"`) {
		t.Fatal(string(r))
	}
	if r := result(t, d.send("node", rpcFrame("task_status", []any{tid, StatusRunning}, "n8")), "n8"); string(r) != "null" {
		t.Fatal(string(r))
	}
	if r := result(t, d.send("a", rpcFrame("client_task_status", []any{"alice", tid}, "n9")), "n9"); string(r) != "5000" {
		t.Fatalf("running: %s", r)
	}
	// -32603 on the wire: a failed task's result is the node's stored error object (Decision 3).
	if rep := d.send("node", notifyFrame("node_task_failed", []any{tid, map[string]any{"code": -32603, "message": "boom"}})); rep != "null" {
		t.Fatal(rep)
	}
	rep := d.send("a", rpcFrame("client_task_result", []any{"alice", tid}, "n10"))
	if rep != `{"jsonrpc": "2.0", "error": {"code": -32603, "message": "boom"}, "id": "n10"}` {
		t.Fatalf("failed result: %s", rep)
	}
	// Batch: results in order, notifications unanswered; all-notification batch → null.
	rep = d.send("a", `[{"jsonrpc": "2.0", "method": "zerotask.broker.client_task_status", "params": ["alice", "alice-t1"], "id": 1},`+
		`{"jsonrpc": "2.0", "method": "zerotask.broker.node_heartbeat", "params": []},`+
		`{"jsonrpc": "2.0", "method": "nope", "id": 2}]`)
	if rep != `[{"jsonrpc": "2.0", "result": 9000, "id": 1}, {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found."}, "id": 2}]` {
		t.Fatalf("batch: %s", rep)
	}
	if rep := d.send("a", `[{"jsonrpc": "2.0", "method": "zerotask.broker.nope"}]`); rep != "null" {
		t.Fatalf("notification batch: %s", rep)
	}
	// Disconnecting frees the client id for another connection.
	if r := result(t, d.send("a", rpcFrame("client_disconnect", []any{"alice"}, "n11")), "n11"); string(r) != "true" {
		t.Fatal(string(r))
	}
	if r := str(t, result(t, d.send("b", rpcFrame("client_connect", []any{"alice"}, "n12")), "n12")); r != "alice" {
		t.Fatal(r)
	}
}

// TestPyNodeDies: a node that dies with an assigned task; the task is requeued, announced again
// and finished by another node.
func TestPyNodeDies(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js)
	doomed, d := startPy(t), startPy(t)
	doomed.req("node", p)
	d.sub("sub", p)
	d.req("client", p)
	d.req("node", p)
	n1 := str(t, result(t, doomed.send("node", rpcFrame("node_connect", []any{"doomed"}, "1")), "1"))
	cid := str(t, result(t, d.send("client", rpcFrame("client_connect", []any{}, "2")), "2"))
	tid := str(t, result(t, d.send("client", rpcFrame("client_new_task", []any{cid, "add", []int{2, 3}}, "3")), "3"))
	d.wait("sub", "task_ready", tid)
	if r := result(t, doomed.send("node", rpcFrame("node_task_request", []any{n1, tid}, "4")), "4"); !strings.Contains(string(r), `"_status": 3000`) {
		t.Fatal(string(r))
	}
	n2 := str(t, result(t, d.send("node", rpcFrame("node_connect", []any{}, "5")), "5"))
	if r := result(t, d.send("node", rpcFrame("node_task_request", []any{n2, tid}, "6")), "6"); string(r) != "null" {
		t.Fatalf("assigned task given twice: %s", r)
	}
	doomed.kill()
	// Requeued at once (the connection closed) and announced again; an announcement made while the
	// task still waited may also be queued on the SUB socket, so the status decides when to ask.
	jstest.Eventually(t, 15*time.Second, func() error {
		if st := result(t, d.send("client", rpcFrame("client_task_status", []any{cid, tid}, "s")), "s"); string(st) != "1000" {
			return fmt.Errorf("status %s", st)
		}
		return nil
	})
	d.wait("sub", "zerotask.node.task_ready", tid)
	r := result(t, d.send("node", rpcFrame("node_task_request", []any{n2, tid}, "7")), "7")
	var obj map[string]any
	if json.Unmarshal(r, &obj) != nil || obj["_node"] != n2 {
		t.Fatalf("requeued task: %s", r)
	}
	d.send("node", notifyFrame("node_task_finished", []any{n2, tid, 5}))
	d.wait("sub", "task_result_ready", tid)
	if r := result(t, d.send("client", rpcFrame("client_task_result", []any{cid, tid}, "8")), "8"); string(r) != "5" {
		t.Fatal(string(r))
	}
}

// TestPyTaskBeforeNode: a task submitted before any node connects is announced to the node that
// connects later.
func TestPyTaskBeforeNode(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	p := startPod(t, js, "--zerotask-lease=1h") // only the connect-time announcement can help
	d := startPy(t)
	d.req("client", p)
	cid := str(t, result(t, d.send("client", rpcFrame("client_connect", []any{}, "1")), "1"))
	tid := str(t, result(t, d.send("client", rpcFrame("client_new_task", []any{cid, "mul", []int{3, 4}}, "2")), "2"))
	d.sub("nsub", p)
	d.req("node", p)
	nid := str(t, result(t, d.send("node", rpcFrame("node_connect", []any{}, "3")), "3"))
	d.wait("nsub", "zerotask.node.task_ready", `"mul"`, tid)
	result(t, d.send("node", rpcFrame("node_task_request", []any{nid, tid}, "4")), "4")
	d.send("node", notifyFrame("node_task_finished", []any{nid, tid, 12}))
	if r := result(t, d.send("client", rpcFrame("client_task_result", []any{cid, tid}, "5")), "5"); string(r) != "12" {
		t.Fatal(string(r))
	}
}

// TestPyTwoPods: the client on one pod, the node on another.
func TestPyTwoPods(t *testing.T) {
	srv := jstest.Server(t)
	pa := startPod(t, jstest.Connect(t, srv))
	pb := startPod(t, jstest.Connect(t, srv))
	d := startPy(t)
	d.sub("csub", pa)
	d.req("client", pa)
	d.sub("nsub", pb)
	d.req("node", pb)
	nid := str(t, result(t, d.send("node", rpcFrame("node_connect", []any{}, "1")), "1"))
	cid := str(t, result(t, d.send("client", rpcFrame("client_connect", []any{}, "2")), "2"))
	tid := str(t, result(t, d.send("client", rpcFrame("client_new_task", map[string]any{"client_id": cid, "method": "add", "params": []int{5, 6}}, "3")), "3"))
	d.wait("nsub", "zerotask.node.task_ready", tid) // published by pod A, seen on pod B's PUB
	result(t, d.send("node", rpcFrame("node_task_request", map[string]any{"node_id": nid, "task_id": tid}, "4")), "4")
	d.send("node", notifyFrame("node_task_finished", map[string]any{"node_id": nid, "task_id": tid, "result": 11}))
	d.wait("csub", "zerotask.client.task_result_ready", tid)
	if r := result(t, d.send("client", rpcFrame("client_task_result", map[string]any{"client_id": cid, "task_id": tid}, "5")), "5"); string(r) != "11" {
		t.Fatal(string(r))
	}
	// Status from the other pod's socket too.
	d.req("other", pb)
	if r := result(t, d.send("other", rpcFrame("client_task_status", []any{cid, tid}, "6")), "6"); string(r) != "7000" {
		t.Fatal(string(r))
	}
	// The client id is taken while its connection on pod A lasts, even asked on pod B.
	if c := errCode(t, d.send("other", rpcFrame("client_connect", []any{cid}, "7"))); c != CodeInvalidClient {
		t.Fatalf("taken id on the other pod: %d", c)
	}
}

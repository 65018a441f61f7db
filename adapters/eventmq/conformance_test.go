package eventmq

import (
	"encoding/json"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/adapters/conformance"
	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
)

// Conformance timings: a dispatched job's lease is renewed every confLease/3 while its worker
// lives; a job held by a pod that died comes back once confLease has passed without renewal.
const (
	confLease    = time.Second
	confRetries  = 2 // retry-count:2 → 3 attempts
	confAttempts = confRetries + 1
	confCallable = "conformance"
)

// TestConformance runs the shared suite over eMQP with Go DEALER peers, as the original client
// and JobManager talk:
//   - Submit: a client sends REQUEST on pod p's frontend with the suite's key as its msgid (the
//     JetStream de-duplication id, so a retried REQUEST is stored once) and the headers
//     reply-requested,retry-count:2; the payload is the standard job body ["run", {...}] whose
//     single argument is the suite's payload. It returns on the submission REPLY naming the key.
//   - Receive on pod p: a worker INFORMs on p's backend (queue default), waits for ACK and the
//     first HEARTBEAT, sends READY and waits for the REQUEST; with nothing within the wait it says
//     KBYE. Payload is the job's argument.
//   - Complete: the worker sends the result REPLY naming the request's msgid, then KBYE.
//   - Fail: the worker dies with the job in flight, by KBYE or, every other time, by closing its
//     connection: the job goes back to the queue and, after retry-count+1 attempts, it is copied
//     to dlq.eventmq.jobs.<queue>.<msgid> (eMQP has no negative reply: a failed attempt is a lost
//     worker, as in the original).
func TestConformance(t *testing.T) {
	conformance.Run(t, &confDriver{}, conformance.Options{
		Lease:       confLease,
		MaxAttempts: confAttempts,
		DeadLetter:  "dlq.eventmq.jobs.>",
	})
}

type confDriver struct {
	mu    sync.Mutex
	fails int
}

func (d *confDriver) NewAdapter() (bridge.Adapter, []string) {
	return New(), []string{
		"--eventmq-heartbeat-interval=100ms", "--eventmq-heartbeat-timeout=2s",
		"--eventmq-lease=" + confLease.String(), "--eventmq-poll-wait=300ms",
		// The retry-count header of the REQUEST caps the attempts, not this default.
		"--eventmq-attempts=10",
	}
}

func (d *confDriver) Setup(t *testing.T, p *bridgetest.Pod) {}

// confJob is the job body a Python client would send for conformance(payload).
func confJob(payload []byte) string { return jobPayload(confCallable, string(payload)) }

// confArg is the single argument of a job body made by confJob.
func confArg(t *testing.T, body []byte) []byte {
	t.Helper()
	var job []json.RawMessage
	if err := json.Unmarshal(body, &job); err != nil || len(job) != 2 || string(job[0]) != `"run"` {
		t.Fatalf("job body %q: %v", body, err)
	}
	var fields struct {
		Callable string   `json:"callable"`
		Args     []string `json:"args"`
	}
	if err := json.Unmarshal(job[1], &fields); err != nil || fields.Callable != confCallable || len(fields.Args) != 1 {
		t.Fatalf("job fields %s: %v", job[1], err)
	}
	return []byte(fields.Args[0])
}

func (d *confDriver) Submit(t *testing.T, p *bridgetest.Pod, key string, payload []byte) {
	t.Helper()
	c := dialPeer(t, p.Addrs[ListenFrontend], "client-"+NewID())
	defer c.d.Close()
	req := Message{Command: CmdRequest, MsgID: key, Body: [][]byte{[]byte(DefaultQueue),
		[]byte("reply-requested,retry-count:" + strconv.Itoa(confRetries)), []byte(confJob(payload))}}
	if err := c.d.Send(req.Frames()...); err != nil {
		t.Fatalf("send REQUEST %s: %v", key, err)
	}
	rep := c.recv(10*time.Second, CmdHeartbeat)
	if rep.Command != CmdReply || len(rep.Body) != 1 || string(rep.Body[0]) != key {
		t.Fatalf("want the submission REPLY of %s, got %s %q", key, rep.Command, rep.Body)
	}
}

func (d *confDriver) Receive(t *testing.T, p *bridgetest.Pod, within time.Duration) conformance.Delivery {
	t.Helper()
	w := goWorker(t, p.Addrs[ListenBackend], "")
	w.send(CmdReady)
	deadline := time.Now().Add(within)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			w.bye(t)
			return nil
		}
		fr, err := w.d.Recv(left)
		if err != nil {
			w.bye(t)
			return nil // the read deadline passed
		}
		m, err := Parse(fr)
		if err != nil {
			t.Fatalf("worker got bad frames %q: %v", fr, err)
		}
		if m.Command != CmdRequest {
			continue // HEARTBEAT
		}
		req, err := ParseRequest(m)
		if err != nil {
			t.Fatalf("worker got a bad REQUEST %q: %v", fr, err)
		}
		if !req.Headers.ReplyRequested || req.Headers.RetryCount != confRetries {
			t.Fatalf("REQUEST %s headers %q", req.MsgID, req.Headers.Raw)
		}
		return &confDelivery{d: d, w: w, msgid: req.MsgID, payload: confArg(t, req.Payload)}
	}
}

// bye says KBYE and closes the worker.
func (p *goPeer) bye(t *testing.T) {
	t.Helper()
	p.stopBeat()
	if err := p.d.Send(Encode(CmdKBYE)...); err != nil {
		t.Fatalf("send KBYE: %v", err)
	}
	p.d.Close()
}

type confDelivery struct {
	d       *confDriver
	w       *goPeer
	msgid   string
	payload []byte
}

func (c *confDelivery) Payload() []byte { return c.payload }

func (c *confDelivery) Complete(t *testing.T) {
	t.Helper()
	c.w.send(CmdReply, `{"value": "done"}`, c.msgid)
	c.w.send(CmdReady)
	c.w.bye(t)
}

func (c *confDelivery) Fail(t *testing.T) {
	t.Helper()
	c.d.mu.Lock()
	c.d.fails++
	kbye := c.d.fails%2 == 1
	c.d.mu.Unlock()
	if kbye {
		c.w.bye(t)
		return
	}
	c.w.stopBeat()
	c.w.d.Close()
}

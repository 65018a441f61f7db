package eventmq

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

func TestGoPeerSubmitDispatchResult(t *testing.T) {
	_, js := newServer(t)
	p := startPod(t, js)
	w := goWorker(t, p.Addrs[ListenBackend], `[[10, "default"]]`)
	w.send(CmdReady)
	c := dialPeer(t, p.Addrs[ListenFrontend], "client-1")
	payload := jobPayload("add", 1, 2)
	id := c.send(CmdRequest, "default", "reply-requested", payload)
	rep := c.recv(5 * time.Second)
	if rep.Command != CmdReply || len(rep.Body) != 1 || string(rep.Body[0]) != id {
		t.Fatalf("want submission REPLY for %s, got %s %q", id, rep.Command, rep.Body)
	}
	req := w.recv(5*time.Second, CmdHeartbeat)
	if req.Command != CmdRequest || req.MsgID != id || len(req.Body) != 3 ||
		string(req.Body[0]) != "default" || string(req.Body[1]) != "reply-requested" || string(req.Body[2]) != payload {
		t.Fatalf("worker got %s %s %q", req.Command, req.MsgID, req.Body)
	}
	w.send(CmdReply, `{"value": 3}`, id)
	w.send(CmdReady)
	var st JobStatus
	eventually(t, 5*time.Second, func() error {
		if code := getJSON(t, p.AdminURL+"/api/v1/eventmq/jobs/"+id, &st); code != 200 || st.Status != "done" {
			return errorf("job status %d %+v", code, st)
		}
		return nil
	})
	if st.Record == nil || string(st.Record.Result) != `{"value":3}` {
		t.Fatalf("result %+v", st.Record)
	}
	// The job is gone from the queue.
	eventually(t, 5*time.Second, func() error {
		var qs struct{ Queues []QueueStatus }
		getJSON(t, p.AdminURL+"/api/v1/eventmq/queues", &qs)
		for _, q := range qs.Queues {
			if q.Name == "default" && (q.Waiting != 0 || q.Inflight != 0 || q.Done != 1) {
				b, _ := json.Marshal(q)
				return errorf("queue %s", b)
			}
		}
		return nil
	})
}

// A worker finishes its second job first and dies: with --eventmq-exact-completion the unfinished
// first job goes back to the queue and the finished one does not.
func TestExactCompletionOutOfOrder(t *testing.T) {
	_, js := newServer(t)
	p := startPod(t, js, "--eventmq-exact-completion")
	w := goWorker(t, p.Addrs[ListenBackend], "")
	w.send(CmdReady)
	w.send(CmdReady)
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	a := c.send(CmdRequest, "default", "guarantee", jobPayload("a"))
	r1 := w.recv(5*time.Second, CmdHeartbeat)
	bID := c.send(CmdRequest, "default", "", jobPayload("b"))
	r2 := w.recv(5*time.Second, CmdHeartbeat)
	if r1.MsgID != a || r2.MsgID != bID || string(r1.Body[1]) != "guarantee,reply-requested" || string(r2.Body[1]) != "reply-requested" {
		t.Fatalf("forwarded %s %q / %s %q", r1.MsgID, r1.Body[1], r2.MsgID, r2.Body[1])
	}
	w.send(CmdReply, `{"value": null}`, bID)
	w.send(CmdReady)
	w.stopBeat()
	w.send(CmdKBYE)
	w2 := goWorker(t, p.Addrs[ListenBackend], "")
	w2.send(CmdReady)
	w2.send(CmdReady)
	got := w2.recv(5*time.Second, CmdHeartbeat)
	if got.MsgID != a {
		t.Fatalf("redelivered %s, want %s", got.MsgID, a)
	}
	for end := time.Now().Add(700 * time.Millisecond); time.Now().Before(end); {
		m, err := w2.d.Recv(time.Until(end))
		if err != nil {
			break
		}
		if mm, _ := Parse(m); mm.Command == CmdRequest {
			t.Fatalf("finished job %s delivered again", mm.MsgID)
		}
	}
	// No result stored: the client did not ask for one.
	if code := getJSON(t, p.AdminURL+"/api/v1/eventmq/jobs/"+bID, nil); code != 404 {
		t.Fatalf("job b status %d", code)
	}
}

// Pods pull only as many jobs as their workers have free slots: the rest stays in JetStream,
// and a pod without workers pulls nothing.
func TestPullOnlyFreeSlots(t *testing.T) {
	e, js := newServer(t)
	_ = e
	p := startPod(t, js)
	startPod(t, js) // a second pod with no workers
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	for i := 0; i < 10; i++ {
		c.send(CmdRequest, "default", "", jobPayload("j", i))
	}
	for i := 0; i < 10; i++ {
		c.recv(5 * time.Second)
	}
	w := goWorker(t, p.Addrs[ListenBackend], "")
	w.send(CmdReady)
	w.send(CmdReady)
	w.recv(5*time.Second, CmdHeartbeat)
	w.recv(5*time.Second, CmdHeartbeat)
	check := func() error {
		var qs struct{ Queues []QueueStatus }
		getJSON(t, p.AdminURL+"/api/v1/eventmq/queues", &qs)
		for _, q := range qs.Queues {
			if q.Name == "default" {
				if q.Waiting != 8 || q.Inflight != 2 {
					return errorf("waiting %d in flight %d", q.Waiting, q.Inflight)
				}
				return nil
			}
		}
		return errorf("no default queue in %+v", qs)
	}
	eventually(t, 5*time.Second, check)
	time.Sleep(500 * time.Millisecond) // a few poll periods later, still nothing else pulled
	if err := check(); err != nil {
		t.Fatal(err)
	}
}

// Per-queue metrics, and HEARTBEATs to an idle worker every interval.
func TestMetricsAndHeartbeatCadence(t *testing.T) {
	_, js := newServer(t)
	p := startPod(t, js)
	w := goWorker(t, p.Addrs[ListenBackend], `[[10, "metrics"]]`)
	w.send(CmdReady)
	t0 := time.Now()
	n := 0
	for time.Since(t0) < time.Second {
		if m := w.recv(2 * time.Second); m.Command == CmdHeartbeat && len(m.Body) == 1 {
			n++
		}
	}
	if n < 5 || n > 15 { // every 100 ms
		t.Fatalf("%d HEARTBEATs in 1s", n)
	}
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	id := c.send(CmdRequest, "metrics", "reply-requested", jobPayload("m"))
	req := w.recv(5*time.Second, CmdHeartbeat)
	w.send(CmdReply, `{"value": 1}`, req.MsgID)
	w.send(CmdReady)
	waitDoneGo(t, p.AdminURL, id)
	eventually(t, 5*time.Second, func() error {
		mfs, err := p.Registry.Gather()
		if err != nil {
			return err
		}
		want := map[string]bool{"jetbridge_eventmq_jobs_done_total": false, "jetbridge_eventmq_job_latency_seconds": false,
			"jetbridge_eventmq_queue_inflight": false, "jetbridge_eventmq_queue_depth": false, "jetbridge_eventmq_workers": false}
		for _, mf := range mfs {
			if _, ok := want[mf.GetName()]; !ok {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "queue" && l.GetValue() == "metrics" {
						want[mf.GetName()] = true
					}
				}
				if mf.GetName() == "jetbridge_eventmq_workers" && m.GetGauge().GetValue() == 1 {
					want[mf.GetName()] = true
				}
			}
		}
		for k, ok := range want {
			if !ok {
				return errorf("metric %s missing for queue metrics", k)
			}
		}
		return nil
	})
}

func waitDoneGo(t *testing.T, adminURL, id string) {
	t.Helper()
	eventually(t, 5*time.Second, func() error {
		var st JobStatus
		if code := getJSON(t, adminURL+"/api/v1/eventmq/jobs/"+id, &st); code != 200 || st.Status != "done" {
			return errorf("job %s: %d %+v", id, code, st)
		}
		return nil
	})
}

// Queue names and msgids that are not subject tokens (dots, spaces, wildcards) work end to end.
func TestOddQueueNames(t *testing.T) {
	_, js := newServer(t)
	p := startPod(t, js)
	const q = "reports.daily *eu>"
	w := goWorker(t, p.Addrs[ListenBackend], `[[10, "reports.daily *eu>"]]`)
	w.send(CmdReady)
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	eventually(t, 5*time.Second, func() error {
		var qs struct{ Queues []QueueStatus }
		getJSON(t, p.AdminURL+"/api/v1/eventmq/queues", &qs)
		for _, x := range qs.Queues {
			if x.Name == q {
				return nil
			}
		}
		return errorf("queues %+v", qs)
	})
	frames := Message{Command: CmdRequest, MsgID: "id.with dots*", Body: fr(q, "reply-requested", jobPayload("r"))}.Frames()
	if err := c.d.Send(frames...); err != nil {
		t.Fatal(err)
	}
	req := w.recv(5*time.Second, CmdHeartbeat)
	if req.MsgID != "id.with dots*" || string(req.Body[0]) != q {
		t.Fatalf("worker got %s %q", req.MsgID, req.Body)
	}
	w.send(CmdReply, `{"value": 1}`, req.MsgID)
	w.send(CmdReady)
	var st JobStatus
	eventually(t, 5*time.Second, func() error {
		if code := getJSON(t, p.AdminURL+"/api/v1/eventmq/jobs/id.with%20dots%2A", &st); code != 200 || st.Status != "done" || st.Queue != q {
			return errorf("%d %+v", code, st)
		}
		return nil
	})
}

// Between workers of one queue, a job goes to the highest-weight worker with a free slot.
func TestWeightsBetweenWorkers(t *testing.T) {
	_, js := newServer(t)
	p := startPod(t, js)
	low := goWorker(t, p.Addrs[ListenBackend], `[[1, "wq"]]`)
	high := goWorker(t, p.Addrs[ListenBackend], `[[10, "wq"]]`)
	low.send(CmdReady)
	high.send(CmdReady)
	eventually(t, 5*time.Second, func() error {
		var ws struct{ Workers []workerInfo }
		getJSON(t, p.AdminURL+"/api/v1/eventmq/workers", &ws)
		n := 0
		for _, w := range ws.Workers {
			n += w.AvailableSlots
		}
		if n != 2 {
			return errorf("free slots %d", n)
		}
		return nil
	})
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	j1 := c.send(CmdRequest, "wq", "", jobPayload("one"))
	if m := high.recv(5*time.Second, CmdHeartbeat); m.MsgID != j1 {
		t.Fatalf("high got %s", m.MsgID)
	}
	j2 := c.send(CmdRequest, "wq", "", jobPayload("two"))
	if m := low.recv(5*time.Second, CmdHeartbeat); m.MsgID != j2 {
		t.Fatalf("low got %s", m.MsgID)
	}
	high.send(CmdReady) // done with j1
	eventually(t, 5*time.Second, func() error {
		var ws struct{ Workers []workerInfo }
		getJSON(t, p.AdminURL+"/api/v1/eventmq/workers", &ws)
		for _, w := range ws.Workers {
			if w.Queues[0].Weight == 10 && w.AvailableSlots == 1 {
				return nil
			}
		}
		return errorf("high has no free slot yet: %+v", ws.Workers)
	})
	j3 := c.send(CmdRequest, "wq", "", jobPayload("three"))
	if m := high.recv(5*time.Second, CmdHeartbeat); m.MsgID != j3 {
		t.Fatalf("high got %s", m.MsgID)
	}
}

// A queue no worker declared for --eventmq-queue-ttl is unknown again: its REQUESTs go to default.
func TestQueueForgottenAfterTTL(t *testing.T) {
	_, js := newServer(t)
	p := startPod(t, js, "--eventmq-queue-ttl=1s")
	tmp := goWorker(t, p.Addrs[ListenBackend], `[[10, "temp"]]`)
	tmp.stopBeat()
	tmp.send(CmdKBYE)
	d := goWorker(t, p.Addrs[ListenBackend], "")
	d.send(CmdReady)
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	time.Sleep(1200 * time.Millisecond) // let the declaration age past the TTL
	id := c.send(CmdRequest, "temp", "", jobPayload("t"))
	if m := d.recv(5*time.Second, CmdHeartbeat); m.MsgID != id || string(m.Body[0]) != "temp" {
		t.Fatalf("default worker got %s %q", m.MsgID, m.Body)
	}
}

// A worker whose connection drops (no KBYE) gives its job back at once.
func TestDisconnectRequeues(t *testing.T) {
	_, js := newServer(t)
	p := startPod(t, js, "--eventmq-heartbeat-timeout=30s") // only the disconnect can tell
	w := goWorker(t, p.Addrs[ListenBackend], "")
	w.send(CmdReady)
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	id := c.send(CmdRequest, "default", "reply-requested", jobPayload("j"))
	if m := w.recv(5*time.Second, CmdHeartbeat); m.MsgID != id {
		t.Fatalf("got %s", m.MsgID)
	}
	w.stopBeat()
	w.d.Close()
	w2 := goWorker(t, p.Addrs[ListenBackend], "")
	w2.send(CmdReady)
	m := w2.recv(5*time.Second, CmdHeartbeat)
	if m.MsgID != id {
		t.Fatalf("w2 got %s", m.MsgID)
	}
	w2.send(CmdReply, `{"value": 2}`, id)
	w2.send(CmdReady)
	waitDoneGo(t, p.AdminURL, id)
	var qs struct{ Queues []QueueStatus }
	getJSON(t, p.AdminURL+"/api/v1/eventmq/queues", &qs)
	for _, q := range qs.Queues {
		if q.Name == "default" && q.Redelivered < 1 {
			t.Fatalf("redelivered %d", q.Redelivered)
		}
	}
}

// After a NATS restart (pull requests and their replies lost on the way), waiting slots pull
// again: a job submitted after the restart reaches the worker; one submitted before is kept.
func TestNATSRestart(t *testing.T) {
	dir := t.TempDir()
	srv := jstest.ServerIn(t, dir)
	addr := srv.ClientAddr()
	js := jstest.Connect(t, srv)
	p := startPod(t, js, "--eventmq-heartbeat-timeout=30s")
	w := goWorker(t, p.Addrs[ListenBackend], "")
	w.send(CmdReady)
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	first := c.send(CmdRequest, "default", "reply-requested", jobPayload("before"))
	if m := w.recv(5*time.Second, CmdHeartbeat, CmdReply); m.MsgID != first {
		t.Fatalf("got %s", m.MsgID)
	}
	srv.Shutdown()
	eventually(t, 10*time.Second, func() error {
		if js.State().Connected {
			return errorf("still connected")
		}
		return nil
	})
	jstest.ServerAt(t, dir, addr)
	eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return js.Ping(ctx)
	})
	w.send(CmdReply, `{"value": 1}`, first)
	w.send(CmdReady)
	waitDoneGo(t, p.AdminURL, first)
	second := c.send(CmdRequest, "default", "reply-requested", jobPayload("after"))
	if m := w.recv(15*time.Second, CmdHeartbeat, CmdReply); m.MsgID != second {
		t.Fatalf("got %s", m.MsgID)
	}
}

// A worker that sends its result REPLY and closes its connection at once (no KBYE) has the job
// done: its disconnection is handled after the REPLY, so the job is neither put back nor redone.
func TestReplyThenCloseCompletes(t *testing.T) {
	_, js := newServer(t)
	p := startPod(t, js)
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	for i := 0; i < 5; i++ {
		w := goWorker(t, p.Addrs[ListenBackend], "")
		w.send(CmdReady)
		id := c.send(CmdRequest, "default", "reply-requested", jobPayload("j", i))
		if m := c.recv(5*time.Second, CmdHeartbeat); m.Command != CmdReply {
			t.Fatalf("submission: got %s", m.Command)
		}
		if m := w.recv(5*time.Second, CmdHeartbeat); m.MsgID != id {
			t.Fatalf("worker got %s, want %s", m.MsgID, id)
		}
		w.send(CmdReply, `{"value": 1}`, id)
		w.stopBeat()
		w.d.Close()
		waitDoneGo(t, p.AdminURL, id)
	}
	w := goWorker(t, p.Addrs[ListenBackend], "")
	w.send(CmdReady)
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); {
		fr, err := w.d.Recv(time.Until(deadline))
		if err != nil {
			break
		}
		if m, _ := Parse(fr); m.Command == CmdRequest {
			t.Fatalf("a completed job came back: %s", m.MsgID)
		}
	}
	var qs struct{ Queues []QueueStatus }
	getJSON(t, p.AdminURL+"/api/v1/eventmq/queues", &qs)
	for _, q := range qs.Queues {
		if q.Name == "default" && (q.Redelivered != 0 || q.Done != 5) {
			t.Fatalf("queue %+v", q)
		}
	}
}

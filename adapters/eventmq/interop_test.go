package eventmq

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// slowWorkers is for tests whose raw DEALER workers do not send HEARTBEATs.
const slowWorkers = "--eventmq-heartbeat-timeout=10s"

// waitDone waits until every msgid has a stored result with status done.
func waitDone(t *testing.T, adminURL string, ids []string, within time.Duration) {
	t.Helper()
	eventually(t, within, func() error {
		for _, id := range ids {
			var st JobStatus
			if code := getJSON(t, adminURL+"/api/v1/eventmq/jobs/"+id, &st); code != 200 || st.Status != "done" {
				return fmt.Errorf("job %s: %d %+v", id, code, st)
			}
		}
		return nil
	})
}

func TestPySubmitDispatchResult(t *testing.T) {
	py := startPeers(t)
	_, js := newServer(t)
	p := startPod(t, js)
	py.jobManager("jm", p.Addrs[ListenBackend], jmOpts{queues: `[[10, "default"]]`, slots: 1})
	py.dealer("client", p.Addrs[ListenFrontend])
	payload := jobPayload("echo", "hello")
	id := py.emqp("client", CmdRequest, "default", "reply-requested", payload)
	rep := py.recvCmd("client", CmdReply, 5*time.Second)
	if len(rep) != 5 || rep[0] != "" || rep[1] != ProtocolVersion || rep[4] != id {
		t.Fatalf("submission REPLY %q", rep)
	}
	waitDone(t, p.AdminURL, []string{id}, 10*time.Second)
	st := py.jm("jm", "")
	if !st.Started || len(st.Requests) != 1 {
		t.Fatalf("job manager %+v", st)
	}
	r := st.Requests[0]
	if r[0] != id || r[1] != "default" || r[2] != "reply-requested" || r[3] != payload || r[4] != 7.0 {
		t.Fatalf("worker got %v", r)
	}
	// ACK, then HEARTBEAT right away (the JobManager waits for it before its first READY).
	if len(st.Events) < 2 || st.Events[0] != CmdAck || st.Events[1] != CmdHeartbeat {
		t.Fatalf("job manager saw %v", st.Events)
	}
	var js2 JobStatus
	getJSON(t, p.AdminURL+"/api/v1/eventmq/jobs/"+id, &js2)
	if string(js2.Record.Result) != `{"value":["hello"]}` {
		t.Fatalf("stored result %s", js2.Record.Result)
	}
}

func TestPyResultOnNATSSubject(t *testing.T) {
	py := startPeers(t)
	_, js := newServer(t)
	p := startPod(t, js)
	got := make(chan *jetstream.Msg, 4)
	sub, err := js.Subscribe(js.Subject("eventmq", "results", ">"), "", func(m *jetstream.Msg) { got <- m })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	py.jobManager("jm", p.Addrs[ListenBackend], jmOpts{slots: 1}) // '' queues → default
	py.dealer("client", p.Addrs[ListenFrontend])
	id := py.emqp("client", CmdRequest, "default", "reply-requested", jobPayload("f", 7))
	select {
	case m := <-got:
		var rec resultRecord
		if err := json.Unmarshal(m.Data, &rec); err != nil || rec.MsgID != id || m.Subject != "eventmq.results."+id {
			t.Fatalf("result on %s: %s", m.Subject, m.Data)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no result published")
	}
}

func TestPyQueueWeightsAndUnknownQueue(t *testing.T) {
	py := startPeers(t)
	_, js := newServer(t)
	p := startPod(t, js, slowWorkers)
	py.dealer("w", p.Addrs[ListenBackend])
	py.emqp("w", CmdInform, `[[1, "low"], [10, "high"]]`, TypeWorker)
	py.recvCmd("w", CmdAck, 5*time.Second)
	py.dealer("client", p.Addrs[ListenFrontend])
	eventually(t, 5*time.Second, func() error {
		var qs struct{ Queues []QueueStatus }
		getJSON(t, p.AdminURL+"/api/v1/eventmq/queues", &qs)
		n := 0
		for _, q := range qs.Queues {
			if q.Name == "high" || q.Name == "low" {
				n++
			}
		}
		if n != 2 {
			return fmt.Errorf("queues %+v", qs)
		}
		return nil
	})
	var low, high []string
	for i := 0; i < 3; i++ {
		low = append(low, py.emqp("client", CmdRequest, "low", "", jobPayload("l", i)))
		high = append(high, py.emqp("client", CmdRequest, "high", "", jobPayload("h", i)))
	}
	for i := 0; i < 6; i++ {
		py.recvCmd("client", CmdReply, 5*time.Second)
	}
	var order []string
	for i := 0; i < 6; i++ {
		py.emqp("w", CmdReady)
		fr := py.recvCmd("w", CmdRequest, 5*time.Second)
		order = append(order, fr[3])
	}
	if !slices.Equal(order[:3], high) || !slices.Equal(order[3:], low) {
		t.Fatalf("dispatch order %v, want high %v then low %v", order, high, low)
	}
	// Unknown queue: rerouted to default, frames unchanged.
	py.dealer("wd", p.Addrs[ListenBackend])
	py.emqp("wd", CmdInform, `[[10, "default"]]`, TypeWorker)
	py.recvCmd("wd", CmdAck, 5*time.Second)
	py.emqp("wd", CmdReady)
	id := py.emqp("client", CmdRequest, "no-such-queue", "", jobPayload("x"))
	fr := py.recvCmd("wd", CmdRequest, 5*time.Second)
	if len(fr) != 7 || fr[3] != id || fr[4] != "no-such-queue" {
		t.Fatalf("default worker got %q", fr)
	}
	py.emqp("w", CmdKBYE)
	py.emqp("wd", CmdKBYE)
}

func TestPyKBYEWithJobInFlight(t *testing.T) {
	py := startPeers(t)
	_, js := newServer(t)
	p := startPod(t, js, slowWorkers)
	py.dealer("a", p.Addrs[ListenBackend])
	py.emqp("a", CmdInform, "", TypeWorker)
	py.recvCmd("a", CmdAck, 5*time.Second)
	py.emqp("a", CmdReady)
	py.dealer("client", p.Addrs[ListenFrontend])
	id := py.emqp("client", CmdRequest, "default", "reply-requested", jobPayload("slow"))
	fr := py.recvCmd("a", CmdRequest, 5*time.Second)
	if fr[3] != id {
		t.Fatalf("a got %q", fr)
	}
	py.emqp("a", CmdKBYE)
	py.jobManager("b", p.Addrs[ListenBackend], jmOpts{slots: 1})
	waitDone(t, p.AdminURL, []string{id}, 10*time.Second)
	if st := py.jm("b", ""); !slices.Contains(st.Executed, id) {
		t.Fatalf("b executed %v", st.Executed)
	}
}

func TestPyHeartbeatTimeout(t *testing.T) {
	py := startPeers(t)
	_, js := newServer(t)
	p := startPod(t, js)
	py.jobManager("a", p.Addrs[ListenBackend], jmOpts{slots: 1, work: time.Hour})
	py.dealer("client", p.Addrs[ListenFrontend])
	id := py.emqp("client", CmdRequest, "default", "reply-requested", jobPayload("hang"))
	eventually(t, 5*time.Second, func() error {
		if st := py.jm("a", ""); len(st.Requests) != 1 {
			return fmt.Errorf("a has %d requests", len(st.Requests))
		}
		return nil
	})
	py.jm("a", "silent") // connected but mute: no HEARTBEAT any more
	py.jobManager("b", p.Addrs[ListenBackend], jmOpts{slots: 1})
	waitDone(t, p.AdminURL, []string{id}, 10*time.Second)
	// a is gone from ROUTER_SHOW_WORKERS; b is there.
	py.dealer("admin", p.Addrs[ListenAdmin])
	eventually(t, 5*time.Second, func() error {
		py.emqp("admin", CmdRouterShowWorkers)
		fr := py.recvCmd("admin", CmdReply, 5*time.Second)
		var v struct {
			Workers map[string]any `json:"connected_workers"`
		}
		if err := json.Unmarshal([]byte(fr[4]), &v); err != nil || len(v.Workers) != 1 {
			return fmt.Errorf("workers %s", fr[4])
		}
		return nil
	})
}

func TestPyWorkerAndClientOnTwoPods(t *testing.T) {
	py := startPeers(t)
	e, js1 := newServer(t)
	js2 := jstest.Connect(t, e)
	p1 := startPod(t, js1)
	p2 := startPod(t, js2)
	py.jobManager("jm", p2.Addrs[ListenBackend], jmOpts{queues: `[[10, "reports"]]`, slots: 2})
	eventually(t, 5*time.Second, func() error { // pod 1 learns the queue from KV
		var qs struct{ Queues []QueueStatus }
		getJSON(t, p1.AdminURL+"/api/v1/eventmq/queues", &qs)
		for _, q := range qs.Queues {
			if q.Name == "reports" {
				return nil
			}
		}
		return fmt.Errorf("pod 1 does not know queue reports: %+v", qs)
	})
	// The admin socket of pod 1 shows the worker of pod 2.
	py.dealer("admin", p1.Addrs[ListenAdmin])
	eventually(t, 5*time.Second, func() error {
		py.emqp("admin", CmdRouterShowWorkers)
		fr := py.recvCmd("admin", CmdReply, 5*time.Second)
		var v struct {
			Workers map[string]struct{ Pod string } `json:"connected_workers"`
		}
		if err := json.Unmarshal([]byte(fr[4]), &v); err != nil || len(v.Workers) != 1 {
			return fmt.Errorf("pod 1 ROUTER_SHOW_WORKERS %s", fr[4])
		}
		for _, w := range v.Workers {
			if w.Pod != p2.Env.PodID {
				return fmt.Errorf("worker on pod %s", w.Pod)
			}
		}
		return nil
	})
	py.dealer("client", p1.Addrs[ListenFrontend])
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, py.emqp("client", CmdRequest, "reports", "reply-requested", jobPayload("r", i)))
	}
	waitDone(t, p1.AdminURL, ids, 10*time.Second)
	st := py.jm("jm", "")
	for _, r := range st.Requests {
		if r[1] != "reports" {
			t.Fatalf("request %v", r)
		}
	}
}

func TestPyPodKilledWithJobsInFlight(t *testing.T) {
	py := startPeers(t)
	e, js1 := newServer(t)
	js2 := jstest.Connect(t, e)
	jsDead := jstest.Connect(t, e)
	p1 := startPod(t, jsDead, "--eventmq-lease=2s")
	p2 := startPod(t, js2, "--eventmq-lease=2s")
	py.jobManager("a", p1.Addrs[ListenBackend], jmOpts{slots: 4, work: time.Hour}) // never finishes
	py.dealer("client", p2.Addrs[ListenFrontend])
	var ids []string
	for i := 0; i < 10; i++ {
		ids = append(ids, py.emqp("client", CmdRequest, "default", "reply-requested", jobPayload("j", i)))
	}
	eventually(t, 5*time.Second, func() error {
		if st := py.jm("a", ""); len(st.Requests) != 4 {
			return fmt.Errorf("a runs %d jobs", len(st.Requests))
		}
		return nil
	})
	p1.Kill(t)
	jsDead.Close()
	py.jm("a", "close")
	py.jobManager("b", p2.Addrs[ListenBackend], jmOpts{slots: 4})
	waitDone(t, p2.AdminURL, ids, 20*time.Second)
	st := py.jm("b", "")
	seen := map[string]bool{}
	for _, id := range st.Executed {
		seen[id] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Fatalf("job %s never ran on b", id)
		}
	}
	_ = js1
}

// scheduled counts the runs a job manager executed.
func scheduledRuns(st jmState, callable string) int {
	n := 0
	for _, r := range st.Requests {
		if strings.Contains(r[3].(string), `"`+callable+`"`) {
			n++
		}
	}
	return n
}

func TestPyScheduleIntervalAndCronWithRunCount(t *testing.T) {
	py := startPeers(t)
	e, js1 := newServer(t)
	js2 := jstest.Connect(t, e)
	p1 := startPod(t, js1)
	p2 := startPod(t, js2) // two pods tick: every run still fires once
	py.jobManager("jm", p1.Addrs[ListenBackend], jmOpts{slots: 4})
	py.dealer("client", p2.Addrs[ListenFrontend])
	t0 := time.Now()
	py.emqp("client", CmdSchedule, "default", "guarantee,run_count:3", "1", jobPayload("every_second"), "")
	py.emqp("client", CmdSchedule, "default", "nohaste,run_count:2", "-1", jobPayload("cron_job"), "* * * * * *")
	eventually(t, 10*time.Second, func() error {
		st := py.jm("jm", "")
		if n, m := scheduledRuns(st, "every_second"), scheduledRuns(st, "cron_job"); n != 3 || m != 2 {
			return fmt.Errorf("interval runs %d (want 3), cron runs %d (want 2)", n, m)
		}
		return nil
	})
	if time.Since(t0) < 1500*time.Millisecond {
		t.Fatalf("3 interval runs within %v", time.Since(t0))
	}
	var sc struct{ Schedules []scheduleRecord }
	eventually(t, 5*time.Second, func() error {
		getJSON(t, p1.AdminURL+"/api/v1/eventmq/schedules", &sc)
		if len(sc.Schedules) != 0 {
			return fmt.Errorf("schedules left: %+v", sc.Schedules)
		}
		return nil
	})
	time.Sleep(1500 * time.Millisecond) // no run after the last one
	st := py.jm("jm", "")
	if n, m := scheduledRuns(st, "every_second"), scheduledRuns(st, "cron_job"); n != 3 || m != 2 {
		t.Fatalf("after the end: interval runs %d, cron runs %d", n, m)
	}
	for _, r := range st.Requests {
		if r[2] != "reply-requested" {
			t.Fatalf("scheduled REQUEST headers %q", r[2])
		}
	}
}

func TestPyUnschedule(t *testing.T) {
	py := startPeers(t)
	_, js := newServer(t)
	p := startPod(t, js)
	py.jobManager("jm", p.Addrs[ListenBackend], jmOpts{slots: 2})
	py.dealer("client", p.Addrs[ListenFrontend])
	payload := jobPayload("forever", 1)
	py.emqp("client", CmdSchedule, "default", "guarantee", "1", payload, "")
	var sc struct{ Schedules []scheduleRecord }
	eventually(t, 5*time.Second, func() error {
		getJSON(t, p.AdminURL+"/api/v1/eventmq/schedules", &sc)
		if len(sc.Schedules) != 1 {
			return fmt.Errorf("schedules %+v", sc)
		}
		return nil
	})
	want, _ := ScheduleHash([]byte(payload))
	if sc.Schedules[0].Hash != want {
		t.Fatalf("hash %s want %s", sc.Schedules[0].Hash, want)
	}
	eventually(t, 5*time.Second, func() error {
		if n := scheduledRuns(py.jm("jm", ""), "forever"); n < 2 {
			return fmt.Errorf("%d runs", n)
		}
		return nil
	})
	// UNSCHEDULE as client.schedule(..., unschedule=True) sends it: interval -1, cron ''.
	py.emqp("client", CmdUnschedule, "default", "guarantee", "-1", payload, "")
	eventually(t, 5*time.Second, func() error {
		getJSON(t, p.AdminURL+"/api/v1/eventmq/schedules", &sc)
		if len(sc.Schedules) != 0 {
			return fmt.Errorf("schedules %+v", sc)
		}
		return nil
	})
	n := scheduledRuns(py.jm("jm", ""), "forever")
	time.Sleep(1500 * time.Millisecond)
	if m := scheduledRuns(py.jm("jm", ""), "forever"); m > n+1 {
		t.Fatalf("runs went on after UNSCHEDULE: %d → %d", n, m)
	}
}

func TestPyPublishAcrossPodsAndNATS(t *testing.T) {
	py := startPeers(t)
	e, js1 := newServer(t)
	js2 := jstest.Connect(t, e)
	p1 := startPod(t, js1)
	p2 := startPod(t, js2)
	py.do(map[string]any{"op": "sub", "name": "sub", "addr": tcp(p2.Addrs[ListenPubOut]), "topic": "news"})
	natsGot := make(chan *jetstream.Msg, 64)
	sub, err := js1.Subscribe("eventmq.pub.news", "", func(m *jetstream.Msg) { natsGot <- m })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	py.dealer("pub", p1.Addrs[ListenPubIn])
	var fr []string
	for i := 0; i < 50 && fr == nil; i++ { // SUB joins late: publish until it sees one
		py.emqp("pub", CmdPublish, "news", `{"headline": "hi"}`)
		fr = py.recv("sub", 200*time.Millisecond)
	}
	if len(fr) != 2 || fr[0] != "news" || fr[1] != `{"headline": "hi"}` {
		t.Fatalf("SUB got %q", fr)
	}
	select {
	case m := <-natsGot:
		if string(m.Data) != `{"headline": "hi"}` {
			t.Fatalf("NATS got %s", m.Data)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("NATS subscriber got nothing")
	}
	// And a NATS publish reaches the SUB.
	if err := js1.PublishCore("eventmq.pub.news", []byte(`"from nats"`), nil); err != nil {
		t.Fatal(err)
	}
	for {
		fr := py.recv("sub", 5*time.Second)
		if fr == nil {
			t.Fatal("SUB did not get the NATS message")
		}
		if fr[1] == `"from nats"` && fr[0] == "news" {
			break
		}
	}
}

func TestPyAdminCommands(t *testing.T) {
	py := startPeers(t)
	_, js := newServer(t)
	p := startPod(t, js)
	py.jobManager("jm", p.Addrs[ListenBackend], jmOpts{queues: `[[10, "default"], [5, "mail"]]`, slots: 2, work: time.Hour})
	py.dealer("sched", p.Addrs[ListenFrontend])
	sid := py.emqp("sched", CmdInform, "", TypeScheduler)
	if fr := py.recvCmd("sched", CmdAck, 5*time.Second); fr[4] != sid {
		t.Fatalf("scheduler ACK %q", fr)
	}
	py.dealer("client", p.Addrs[ListenFrontend])
	py.emqp("client", CmdRequest, "default", "", jobPayload("busy"))
	py.dealer("admin", p.Addrs[ListenAdmin])
	ask := func(cmd string) map[string]any {
		id := "admin:" + NewID()
		py.sendRaw("admin", "", ProtocolVersion, cmd, id)
		fr := py.recvCmd("admin", CmdReply, 5*time.Second)
		if len(fr) != 5 {
			t.Fatalf("%s reply %q", cmd, fr)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(fr[4]), &v); err != nil {
			t.Fatalf("%s reply %q: %v", cmd, fr[4], err)
		}
		return v
	}
	eventually(t, 5*time.Second, func() error {
		v := ask(CmdStatus)
		infl, _ := v["inflight_messages_by_queue"].(map[string]any)
		if infl["default"] != 1.0 {
			return fmt.Errorf("STATUS %v", v)
		}
		for _, k := range []string{"latency_messages_by_queue", "max_latency_messages_by_queue", "waiting_messages_by_queue",
			"processed_messages_by_queue", "processed_messages_by_worker"} {
			if _, ok := v[k]; !ok {
				return fmt.Errorf("STATUS without %s: %v", k, v)
			}
		}
		return nil
	})
	v := ask(CmdRouterShowWorkers)
	workers := v["connected_workers"].(map[string]any)
	queues := v["connected_queues"].(map[string]any)
	if len(workers) != 1 || len(queues) != 2 {
		t.Fatalf("ROUTER_SHOW_WORKERS %v", v)
	}
	for _, w := range workers {
		wm := w.(map[string]any)
		if _, ok := wm["available_slots"]; !ok {
			t.Fatalf("worker entry %v", wm)
		}
	}
	v = ask(CmdRouterShowSchedulers)
	if s := v["connected_schedulers"].(map[string]any); len(s) != 1 {
		t.Fatalf("ROUTER_SHOW_SCHEDULERS %v", v)
	}
	// HELLO is ignored.
	py.sendRaw("admin", "", ProtocolVersion, CmdHello, "admin:"+NewID())
	if fr := py.recv("admin", 300*time.Millisecond); fr != nil {
		t.Fatalf("HELLO answered %q", fr)
	}
	// DISCONNECT: ACK, then KBYE to the workers and schedulers.
	did := "admin:" + NewID()
	py.sendRaw("admin", "", ProtocolVersion, CmdDisconnect, did)
	if fr := py.recvCmd("admin", CmdAck, 5*time.Second); len(fr) != 5 || fr[4] != did {
		t.Fatalf("DISCONNECT ACK %q", fr)
	}
	py.recvCmd("sched", CmdKBYE, 5*time.Second)
	eventually(t, 5*time.Second, func() error {
		if st := py.jm("jm", ""); !slices.Contains(st.Events, CmdKBYE) {
			return fmt.Errorf("job manager events %v", st.Events)
		}
		return nil
	})
	eventually(t, 5*time.Second, func() error {
		v := ask(CmdRouterShowWorkers)
		if w := v["connected_workers"].(map[string]any); len(w) != 0 {
			return fmt.Errorf("workers after DISCONNECT %v", w)
		}
		return nil
	})
}

func TestPyMalformedMessagesDoNotHarmOthers(t *testing.T) {
	py := startPeers(t)
	_, js := newServer(t)
	p := startPod(t, js)
	py.jobManager("jm", p.Addrs[ListenBackend], jmOpts{slots: 2})
	py.dealer("evil", p.Addrs[ListenFrontend])
	py.dealer("evilw", p.Addrs[ListenBackend])
	py.dealer("evila", p.Addrs[ListenAdmin])
	py.dealer("evilp", p.Addrs[ListenPubIn])
	bad := [][]string{
		{"x"},
		{"", "eMQP/0.9", "REQUEST", "id", "default", "", "[]"},
		{"", ProtocolVersion, "REQUEST", "id", "default", ""},
		{"", ProtocolVersion, "REQUEST", "id", "default", "", "not json"},
		{"", ProtocolVersion, "REQUEST", "", "default", "", "[]"},
		{"", ProtocolVersion, "request", "id"},
		{"", ProtocolVersion, "SCHEDULE", "id", "default", "", "abc", "[]", ""},
		{"", ProtocolVersion, "SCHEDULE", "id", "default", "", "-1", jobPayload("c"), "not a cron"},
		{"", ProtocolVersion, "INFORM", "id", "[[\"x\"]]", "worker"},
		{"", ProtocolVersion, "REQUEST", "id", "default", "retry-count:x", "[]"},
		{"not empty", ProtocolVersion, "REQUEST", "id", "default", "", "[]"},
	}
	for _, fr := range bad {
		for _, s := range []string{"evil", "evilw", "evila", "evilp"} {
			py.sendRaw(s, fr...)
		}
	}
	py.sendRaw("evilw", "", ProtocolVersion, "READY", "unknown-worker-ready")
	py.sendRaw("evilw", "", ProtocolVersion, "REPLY", "id", "{}", "nope")
	py.dealer("client", p.Addrs[ListenFrontend])
	id := py.emqp("client", CmdRequest, "default", "reply-requested", jobPayload("ok"))
	waitDone(t, p.AdminURL, []string{id}, 10*time.Second)
	if fr := py.recv("evil", 300*time.Millisecond); fr != nil {
		t.Fatalf("malformed REQUEST answered %q", fr)
	}
	var sc struct{ Schedules []scheduleRecord }
	getJSON(t, p.AdminURL+"/api/v1/eventmq/schedules", &sc)
	if len(sc.Schedules) != 0 {
		t.Fatalf("bad SCHEDULE stored: %+v", sc.Schedules)
	}
}

func TestPyRetryCountCapsAttempts(t *testing.T) {
	py := startPeers(t)
	_, js := newServer(t)
	p := startPod(t, js, slowWorkers)
	py.dealer("client", p.Addrs[ListenFrontend])
	id := py.emqp("client", CmdRequest, "default", "reply-requested,retry-count:1", jobPayload("poison"))
	py.recvCmd("client", CmdReply, 5*time.Second)
	// Two workers in turn take the job and die with it (KBYE): the third delivery is over the cap.
	for i := 0; i < 2; i++ {
		w := fmt.Sprintf("w%d", i)
		py.dealer(w, p.Addrs[ListenBackend])
		py.emqp(w, CmdInform, "", TypeWorker)
		py.recvCmd(w, CmdAck, 5*time.Second)
		py.emqp(w, CmdReady)
		if fr := py.recvCmd(w, CmdRequest, 5*time.Second); fr[3] != id {
			t.Fatalf("%s got %q", w, fr)
		}
		py.emqp(w, CmdKBYE)
	}
	py.jobManager("jm", p.Addrs[ListenBackend], jmOpts{slots: 1})
	var st JobStatus
	eventually(t, 10*time.Second, func() error {
		if code := getJSON(t, p.AdminURL+"/api/v1/eventmq/jobs/"+id, &st); code != 200 || st.Status != "dead" {
			return fmt.Errorf("%d %+v", code, st)
		}
		return nil
	})
	if !strings.Contains(st.Record.Reason, "attempts") {
		t.Fatalf("reason %q", st.Record.Reason)
	}
	// The copy in the dead-letter stream carries the reason.
	counts, err := js.SubjectCounts(t.Context(), jetstream.DeadLetterStream, "dlq.eventmq.jobs.default.>")
	if err != nil || len(counts) != 1 {
		t.Fatalf("dlq %v %v", counts, err)
	}
	if n := len(py.jm("jm", "").Executed); n != 0 {
		t.Fatalf("poison job ran %d times more", n)
	}
	keys := []string{}
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if !strings.HasSuffix(keys[0], id) {
		t.Fatalf("dlq subject %v", keys)
	}
}

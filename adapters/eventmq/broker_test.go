package eventmq

import (
	"encoding/json"
	"testing"
	"time"
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

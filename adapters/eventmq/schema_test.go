package eventmq

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/schemas"
)

func validate(t *testing.T, name string, v any) {
	t.Helper()
	if err := schemas.Validate("eventmq/"+name, v); err != nil {
		t.Errorf("%v", err)
	}
}

func rawGET(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

// Golden frames and everything a running pod writes to NATS or answers validate against the schemas.
func TestSchemas(t *testing.T) {
	validate(t, "job-payload.schema.json", golden["request"][6])
	validate(t, "inform-queues.schema.json", golden["inform_worker"][4])
	validate(t, "worker-result.schema.json", golden["worker_reply"][4])

	_, js := newServer(t)
	p := startPod(t, js)
	w := goWorker(t, p.Addrs[ListenBackend], `[[10, "default"], [3, "mail"]]`)
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	id := c.send(CmdRequest, "mail", "reply-requested,retry-count:2,timeout:30", jobPayload("send", "x@y"))
	c.recv(5*time.Second, CmdHeartbeat)

	// The stored job: payload and headers.
	m, err := js.LastMsg(context.Background(), StreamJobs, "eventmq.jobs.mail."+id)
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "job-payload.schema.json", m.Data)
	validate(t, "job-headers.schema.json", map[string][]string(m.Header))

	w.send(CmdReady)
	req := w.recv(5*time.Second, CmdHeartbeat)
	w.send(CmdReply, `{"value": "sent"}`, req.MsgID)
	w.send(CmdReady)
	var st JobStatus
	eventually(t, 5*time.Second, func() error {
		if getJSON(t, p.AdminURL+"/api/v1/eventmq/jobs/"+id, &st); st.Status != "done" {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	validate(t, "api-job.schema.json", rawGET(t, p.AdminURL+"/api/v1/eventmq/jobs/"+id))
	r, err := js.LastMsg(context.Background(), StreamResults, "eventmq.results."+id)
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "result.schema.json", r.Data)

	// A schedule and a scheduler.
	c.send(CmdSchedule, "default", "nohaste,run_count:5", "3600", jobPayload("hourly"), "")
	s := dialPeer(t, p.Addrs[ListenFrontend], "sched-1")
	s.send(CmdInform, "", TypeScheduler)
	s.recv(5 * time.Second)
	eventually(t, 5*time.Second, func() error {
		var sc struct{ Schedules []json.RawMessage }
		if getJSON(t, p.AdminURL+"/api/v1/eventmq/schedules", &sc); len(sc.Schedules) != 1 {
			return fmt.Errorf("schedules %d", len(sc.Schedules))
		}
		return nil
	})
	validate(t, "api-schedules.schema.json", rawGET(t, p.AdminURL+"/api/v1/eventmq/schedules"))
	for bucket, schema := range map[string]string{BucketSchedules: "schedule.schema.json", BucketQueues: "queue-record.schema.json", BucketPods: "pod-state.schema.json"} {
		kv, err := js.KV(context.Background(), bucket)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		eventually(t, 5*time.Second, func() error {
			keys, err = kv.Keys(context.Background(), "")
			if len(keys) == 0 {
				return fmt.Errorf("%s empty (%v)", bucket, err)
			}
			return nil
		})
		for _, k := range keys {
			e, err := kv.Get(context.Background(), k)
			if err != nil {
				t.Fatal(err)
			}
			validate(t, schema, e.Value)
		}
	}
	validate(t, "api-queues.schema.json", rawGET(t, p.AdminURL+"/api/v1/eventmq/queues"))
	validate(t, "api-workers.schema.json", rawGET(t, p.AdminURL+"/api/v1/eventmq/workers"))

	// Admin socket replies.
	a := dialPeer(t, p.Addrs[ListenAdmin], "")
	for cmd, schema := range map[string]string{CmdStatus: "admin-status.schema.json", CmdRouterShowWorkers: "admin-workers.schema.json",
		CmdRouterShowSchedulers: "admin-schedulers.schema.json"} {
		a.send(cmd)
		rep := a.recv(5 * time.Second)
		if rep.Command != CmdReply || len(rep.Body) != 1 {
			t.Fatalf("%s: %s %q", cmd, rep.Command, rep.Body)
		}
		validate(t, schema, rep.Body[0])
	}
}

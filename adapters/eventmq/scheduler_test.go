package eventmq

import (
	"fmt"
	"testing"
	"time"
)

func scheduleCount(t *testing.T, adminURL string) int {
	var sc struct{ Schedules []scheduleRecord }
	getJSON(t, adminURL+"/api/v1/eventmq/schedules", &sc)
	return len(sc.Schedules)
}

// nohaste: the first run comes after the interval, not at once; run_count:0 runs nothing; a
// SCHEDULE with the same job replaces the stored one.
func TestScheduleNoHasteAndReplace(t *testing.T) {
	_, js := newServer(t)
	p := startPod(t, js)
	w := goWorker(t, p.Addrs[ListenBackend], "")
	w.send(CmdReady)
	c := dialPeer(t, p.Addrs[ListenFrontend], "")
	c.send(CmdSchedule, "default", "run_count:0", "1", jobPayload("never"), "")
	t0 := time.Now()
	c.send(CmdSchedule, "default", "nohaste,run_count:1", "1", jobPayload("once"), "")
	eventually(t, 5*time.Second, func() error {
		if n := scheduleCount(t, p.AdminURL); n != 1 {
			return fmt.Errorf("%d schedules", n)
		}
		return nil
	})
	req := w.recv(5*time.Second, CmdHeartbeat)
	if time.Since(t0) < 900*time.Millisecond || string(req.Body[1]) != "reply-requested" || jobCallable(req.Body[2]) != "once" {
		t.Fatalf("run after %v: %q", time.Since(t0), req.Body)
	}
	eventually(t, 5*time.Second, func() error {
		if n := scheduleCount(t, p.AdminURL); n != 0 {
			return fmt.Errorf("%d schedules left", n)
		}
		return nil
	})
	// Same job twice: one schedule, the second one's settings.
	c.send(CmdSchedule, "default", "nohaste", "3600", jobPayload("hourly"), "")
	c.send(CmdSchedule, "default", "nohaste", "-1", jobPayload("hourly"), "0 * * * *")
	eventually(t, 5*time.Second, func() error {
		var sc struct{ Schedules []scheduleRecord }
		getJSON(t, p.AdminURL+"/api/v1/eventmq/schedules", &sc)
		if len(sc.Schedules) != 1 || sc.Schedules[0].Cron != "0 * * * *" || sc.Schedules[0].Interval != -1 {
			return fmt.Errorf("%+v", sc.Schedules)
		}
		if next := sc.Schedules[0].NextRun; next.Minute() != 0 || next.Second() != 0 || !next.After(time.Now()) {
			return fmt.Errorf("next run %v", next)
		}
		return nil
	})
}

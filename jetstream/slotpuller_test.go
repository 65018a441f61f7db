package jetstream_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// A SlotPuller gets exactly what it asks for, reports requests that expire unfilled, and its jobs
// ack, retry, extend and dead-letter like fetched ones.
func TestSlotPuller(t *testing.T) {
	c := jstest.Connect(t, jstest.Server(t))
	ctx := context.Background()
	if _, err := c.Provision(ctx, jetstream.Assets{
		Streams:   []jetstream.StreamSpec{{Name: "PULL", Subjects: []string{"pull.>"}, Retention: jetstream.WorkQueue}},
		Consumers: []jetstream.ConsumerSpec{{Stream: "PULL", Durable: "W", AckWait: 2 * time.Second}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Provision(ctx, jetstream.DeadLetterAssets(c.Names(), 0)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var jobs []*jetstream.Job
	ended := 0
	p, err := c.NewSlotPuller("PULL", "W", func(j *jetstream.Job) {
		mu.Lock()
		jobs = append(jobs, j)
		mu.Unlock()
	}, func(n int) {
		mu.Lock()
		ended += n
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := 0; i < 5; i++ {
		if _, err := c.Publish(ctx, "pull.a", []byte(fmt.Sprint(i)), jetstream.PubOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	state := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(jobs), ended
	}
	if err := p.Pull(3, time.Second); err != nil {
		t.Fatal(err)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		if n, _ := state(); n != 3 {
			return fmt.Errorf("%d jobs", n)
		}
		return nil
	})
	// Ask for 4 when 2 are left: 2 arrive, 2 are reported unfilled when the request expires.
	if err := p.Pull(4, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		if n, e := state(); n != 5 || e != 2 {
			return fmt.Errorf("%d jobs, %d unfilled", n, e)
		}
		return nil
	})
	mu.Lock()
	got := append([]*jetstream.Job(nil), jobs...)
	mu.Unlock()
	for i, j := range got {
		if string(j.Data) != fmt.Sprint(i) || j.Deliveries != 1 || j.Sequence != uint64(i+1) || j.Time.IsZero() {
			t.Fatalf("job %d: %q deliveries %d seq %d", i, j.Data, j.Deliveries, j.Sequence)
		}
	}
	if err := got[0].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if err := got[1].AckAsync(); err != nil {
		t.Fatal(err)
	}
	if err := got[2].Extend(); err != nil {
		t.Fatal(err)
	}
	if err := got[3].DeadLetter(ctx, "bad"); err != nil {
		t.Fatal(err)
	}
	if err := got[4].Retry(0); err != nil {
		t.Fatal(err)
	}
	// The retried one comes again (second delivery); the extended one stays leased.
	if err := p.Pull(1, time.Second); err != nil {
		t.Fatal(err)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		if n, _ := state(); n != 6 {
			return fmt.Errorf("%d jobs", n)
		}
		return nil
	})
	mu.Lock()
	again := jobs[5]
	mu.Unlock()
	if string(again.Data) != "4" || again.Deliveries != 2 {
		t.Fatalf("redelivered %q deliveries %d", again.Data, again.Deliveries)
	}
	counts, err := c.SubjectCounts(ctx, jetstream.DeadLetterStream, "dlq.>")
	if err != nil || counts["dlq.pull.a"] != 1 {
		t.Fatalf("dead letters %v %v", counts, err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Pull(1, time.Second); err == nil {
		t.Fatal("pull after close")
	}
}

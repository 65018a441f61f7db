package jetstream_test

import (
	"context"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// Two consumers of an interest stream give up on the same message: each stores its own
// dead-letter copy, and the message leaves the stream once both terminated it.
func TestDeadLetterForPerConsumer(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	assets := jetstream.Assets{
		Streams: []jetstream.StreamSpec{{Name: "GX", Subjects: []string{"gx.>"}, Retention: jetstream.Interest}},
		Consumers: []jetstream.ConsumerSpec{{Stream: "GX", Durable: "A", AckWait: 5 * time.Second},
			{Stream: "GX", Durable: "B", AckWait: 5 * time.Second}},
	}
	assets.Merge(jetstream.DeadLetterAssets(js.Names(), 0))
	if _, err := js.Provision(ctx, assets); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "gx.a", []byte("payload"), jetstream.PubOpts{Header: jetstream.Header{"X-Keep": {"1"}}}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"A", "B"} {
		c, err := js.Consumer(ctx, "GX", d)
		if err != nil {
			t.Fatal(err)
		}
		jobs, err := c.Fetch(ctx, 1, 5*time.Second)
		if err != nil || len(jobs) != 1 {
			t.Fatalf("fetch %s: %v %d", d, err, len(jobs))
		}
		if err := jobs[0].DeadLetterFor(ctx, d, "failed in "+d); err != nil {
			t.Fatal(err)
		}
	}
	counts, err := js.SubjectCounts(ctx, jetstream.DeadLetterStream, "dlq.gx.a")
	if err != nil {
		t.Fatal(err)
	}
	if counts["dlq.gx.a"] != 2 {
		t.Fatalf("dead-letter copies: %v, want 2 (one per consumer)", counts)
	}
	m, err := js.LastMsg(ctx, jetstream.DeadLetterStream, "dlq.gx.a")
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(jetstream.HeaderDLQConsumer) != "B" || m.Header.Get(jetstream.HeaderDLQReason) != "failed in B" ||
		m.Header.Get("X-Keep") != "1" || string(m.Data) != "payload" {
		t.Fatalf("copy: %v %s", m.Header, m.Data)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		info, err := js.StreamInfo(ctx, "GX")
		if err != nil {
			return err
		}
		if info.Messages != 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
}

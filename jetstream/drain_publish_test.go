package jetstream_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// Messages pulled ahead and not yet handled when ConsumeDrain's stop is called reach the handler,
// which can give them back for immediate redelivery to the next consumer instance.
func TestConsumeDrainHandsBufferedMessages(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx := context.Background()
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{{Name: "SX", Subjects: []string{"sx.>"}, Retention: jetstream.WorkQueue}},
		Consumers: []jetstream.ConsumerSpec{{Stream: "SX", Durable: "D", AckWait: time.Minute}}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if _, err := js.Publish(ctx, "sx.a", []byte(fmt.Sprint(i)), jetstream.PubOpts{}); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.Consumer(ctx, "SX", "D")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	stopping := false
	first := make(chan struct{})
	var seen, givenBack int
	stop, err := cons.ConsumeDrain(func(j *jetstream.Job) {
		mu.Lock()
		defer mu.Unlock()
		seen++
		if seen == 1 {
			close(first)
		}
		if stopping {
			givenBack++
			_ = j.Retry(0)
			return
		}
		_ = j.AckAsync()
	}, 20)
	if err != nil {
		t.Fatal(err)
	}
	<-first
	mu.Lock()
	stopping = true
	mu.Unlock()
	stop()
	mu.Lock()
	acked := seen - givenBack
	mu.Unlock()
	// everything not acked is available again at once (not after the one-minute AckWait)
	jstest.Eventually(t, 5*time.Second, func() error {
		jobs, err := cons.FetchNoWait(100)
		if err != nil {
			return err
		}
		for _, j := range jobs {
			_ = j.Ack(ctx)
		}
		info, err := js.StreamInfo(ctx, "SX")
		if err != nil {
			return err
		}
		if info.Messages != 0 {
			return fmt.Errorf("%d left (acked %d before stop)", info.Messages, acked)
		}
		return nil
	})
}

func TestPublishLean(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx := context.Background()
	if _, err := js.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{
		{Name: "PL", Subjects: []string{"pl.>"}},
		{Name: "PLFULL", Subjects: []string{"plfull.>"}, MaxMsgs: 1, DiscardNew: true},
	}}); err != nil {
		t.Fatal(err)
	}
	h := jetstream.Header{}
	h.Set("X-A", "1")
	a1, err := js.PublishLean(ctx, "pl.a", []byte("one"), h, "id-1")
	if err != nil || a1.Stream != "PL" || a1.Sequence != 1 || a1.Duplicate {
		t.Fatalf("first: %+v %v", a1, err)
	}
	if _, err := js.PublishLean(ctx, "pl.a", []byte("two"), nil, ""); err != nil {
		t.Fatal(err)
	}
	dup, err := js.PublishLean(ctx, "pl.a", []byte("other"), nil, "id-1")
	if err != nil || !dup.Duplicate || dup.Sequence != 1 {
		t.Fatalf("duplicate: %+v %v", dup, err)
	}
	m, err := js.GetMsg(ctx, "PL", 1)
	if err != nil || string(m.Data) != "one" || m.Header.Get("X-A") != "1" {
		t.Fatalf("stored: %+v %v", m, err)
	}
	if _, err := js.PublishLean(ctx, "plfull.a", []byte("x"), nil, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishLean(ctx, "plfull.a", []byte("y"), nil, ""); err == nil || !strings.Contains(err.Error(), "maximum messages") {
		t.Fatalf("full stream: %v", err)
	}
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := js.PublishLean(tctx, "nostream.a", []byte("x"), nil, ""); err == nil {
		t.Fatal("publish without a stream succeeded")
	}
}

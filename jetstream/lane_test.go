package jetstream_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// A lane stores one message at a time with its header and de-duplication id, says when a retry
// was a duplicate, and refuses work once closed.
func TestLanePublish(t *testing.T) {
	js, _, ctx := pipelineSetup(t)
	l, err := js.NewLane()
	if err != nil {
		t.Fatal(err)
	}
	subj := js.Subject("pipe", "lane")
	for i := 1; i <= 50; i++ {
		ack, err := l.Publish(ctx, subj, []byte(strconv.Itoa(i)), jetstream.Header{"X-N": {strconv.Itoa(i)}}, "lane-"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		if ack.Sequence != uint64(i) || ack.Stream != "PIPE" || ack.Duplicate {
			t.Fatalf("publish %d: %+v", i, ack)
		}
	}
	ack, err := l.Publish(ctx, subj, []byte("7"), nil, "lane-7")
	if err != nil || !ack.Duplicate || ack.Sequence != 7 {
		t.Fatalf("retried id: %+v %v", ack, err)
	}
	m, err := js.GetMsg(ctx, "PIPE", 50)
	if err != nil || string(m.Data) != "50" || m.Header.Get("X-N") != "50" || m.Header.Get("Nats-Msg-Id") != "lane-50" {
		t.Fatalf("stored: %+v %v", m, err)
	}
	l.Close()
	l.Close()
	if _, err := l.Publish(ctx, subj, nil, nil, ""); !errors.Is(err, jetstream.ErrLaneClosed) {
		t.Fatalf("closed lane: %v", err)
	}
}

// The late answer of a publish that was given up is not taken for the answer of the next one.
func TestLaneDiscardsLateAnswers(t *testing.T) {
	js := jstest.Connect(t, jstest.Server(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	held := make(chan *jetstream.Msg, 1)
	n := 0
	// a stand-in for the stream: holds the first request, answers the others at once
	sub, err := js.Subscribe("lane.fake", "", func(m *jetstream.Msg) {
		n++
		if n == 1 {
			held <- m
			return
		}
		_ = m.Respond([]byte(`{"stream":"FAKE","seq":`+strconv.Itoa(n)+`}`), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := js.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := js.NewLane()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = l.Publish(short, "lane.fake", []byte("a"), nil, "")
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held publish: %v", err)
	}
	first := <-held
	_ = first.Respond([]byte(`{"stream":"FAKE","seq":1}`), nil) // arrives late
	ack, err := l.Publish(ctx, "lane.fake", []byte("b"), nil, "")
	if err != nil || ack.Sequence != 2 {
		t.Fatalf("second publish got %+v %v, want seq 2", ack, err)
	}
	// an error answer is an error
	sub2, err := js.Subscribe("lane.err", "", func(m *jetstream.Msg) {
		_ = m.Respond([]byte(`{"error":{"code":503,"err_code":10077,"description":"resource limits exceeded"}}`), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Unsubscribe()
	if err := js.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Publish(ctx, "lane.err", nil, nil, ""); err == nil {
		t.Fatal("an error answer must fail the publish")
	}
}

// A subject no stream takes is retried (a leader may be being elected) and then reported as
// ErrNoResponders; the lane stays usable.
func TestLaneNoResponders(t *testing.T) {
	js, _, ctx := pipelineSetup(t)
	l, err := js.NewLane()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	if _, err := l.Publish(ctx, "lane.nobody", []byte("x"), nil, "id-1"); !errors.Is(err, jetstream.ErrNoResponders) {
		t.Fatalf("publish to nobody: %v", err)
	}
	if el := time.Since(start); el < 400*time.Millisecond {
		t.Fatalf("gave up after %v, want two retries 250 ms apart", el)
	}
	if ack, err := l.Publish(ctx, js.Subject("pipe", "after"), []byte("y"), nil, ""); err != nil || ack.Stream != "PIPE" {
		t.Fatalf("publish after no responders: %+v %v", ack, err)
	}
}

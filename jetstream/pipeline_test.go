package jetstream_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

func pipelineSetup(t *testing.T) (*jetstream.Client, *jetstream.Pipeline, context.Context) {
	t.Helper()
	js := jstest.Connect(t, jstest.Server(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if _, err := js.Provision(ctx, jetstream.Assets{
		Streams: []jetstream.StreamSpec{{Name: "PIPE", Subjects: []string{js.Subject("pipe", ">")}, Duplicates: time.Minute}},
		Buckets: []jetstream.BucketSpec{{Name: "PIPE_KV", LimitMarkerTTL: time.Minute}},
	}); err != nil {
		t.Fatal(err)
	}
	p, err := js.NewPipeline(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return js, p, ctx
}

// Many publishes in flight at once: every one is stored, acknowledged with its own sequence, in the
// order of the calls; a de-duplicated retry says so.
func TestPipelinePublish(t *testing.T) {
	js, p, ctx := pipelineSetup(t)
	subj := js.Subject("pipe", "a")
	var pend []*jetstream.Pending
	for i := range 200 {
		pd, err := p.Publish(subj, []byte{byte(i)}, jetstream.PubOpts{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		pend = append(pend, pd)
	}
	for i, pd := range pend {
		ack, err := pd.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ack.Sequence != uint64(i+1) || ack.Stream == "" || ack.Duplicate {
			t.Fatalf("publish %d: ack %+v", i, ack)
		}
	}
	m, err := js.GetMsg(ctx, "PIPE", 200)
	if err != nil || len(m.Data) != 1 || m.Data[0] != 199 {
		t.Fatalf("stored message 200: %+v %v", m, err)
	}
	for range 2 {
		pd, err := p.Publish(subj, []byte("x"), jetstream.PubOpts{MsgID: "once"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if ack, err := pd.Wait(ctx); err != nil || ack.Sequence != 201 {
			t.Fatalf("de-duplicated publish: %+v %v", ack, err)
		}
	}
	if n := p.InFlight(); n != 0 {
		t.Fatalf("%d publishes still in flight", n)
	}
}

// Callbacks get every outcome, conditions included, without a waiting goroutine each.
func TestPipelineCallbacks(t *testing.T) {
	js, p, ctx := pipelineSetup(t)
	subj := js.Subject("pipe", "cb")
	var mu sync.Mutex
	var seqs []uint64
	var errs []error
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		if _, err := p.PublishExpect(subj+"."+"k", []byte("v"), 0, 0, func(ack jetstream.PubAck, err error) {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			seqs = append(seqs, ack.Sequence)
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	// Only the first write finds the subject empty.
	if len(seqs) != 1 || len(errs) != 99 {
		t.Fatalf("%d stored, %d refused; want 1 and 99", len(seqs), len(errs))
	}
	for _, err := range errs {
		if !errors.Is(err, jetstream.ErrConflict) {
			t.Fatalf("refused write: %v, want ErrConflict", err)
		}
	}
	pd, err := p.PublishExpect(subj+".k", []byte("v2"), seqs[0], 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ack, err := pd.Wait(ctx); err != nil || ack.Sequence != seqs[0]+1 {
		t.Fatalf("write at the last sequence: %+v %v", ack, err)
	}
}

// KV writes: create only once (ErrExists after), update only at the current revision, a TTL that
// expires the value.
func TestPipelineKV(t *testing.T) {
	js, p, ctx := pipelineSetup(t)
	kv, err := js.KV(ctx, "PIPE_KV")
	if err != nil {
		t.Fatal(err)
	}
	pd, err := p.KVCreate(kv, "a", []byte("1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := pd.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := p.KVCreate(kv, "a", []byte("2"), nil)
	if _, err := again.Wait(ctx); !errors.Is(err, jetstream.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	stale, _ := p.KVWrite(kv, "a", []byte("x"), ack.Sequence+100, 0, nil)
	if _, err := stale.Wait(ctx); !errors.Is(err, jetstream.ErrConflict) {
		t.Fatalf("write at a wrong revision: %v, want ErrConflict", err)
	}
	upd, _ := p.KVWrite(kv, "a", []byte("3"), ack.Sequence, time.Second, nil)
	uack, err := upd.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, "a"); err != nil || string(e.Value) != "3" || e.Revision != uack.Sequence {
		t.Fatalf("value after the write: %+v %v", e, err)
	}
	jstest.Eventually(t, 20*time.Second, func() error {
		if _, err := kv.Get(ctx, "a"); !errors.Is(err, jetstream.ErrNotFound) {
			return errors.New("value with a 1s TTL still there")
		}
		return nil
	})
}

// No stream: no responders. Nobody answering: the publish times out, or fails when the pipeline
// closes; a Wait whose context ends stops waiting.
func TestPipelineFailures(t *testing.T) {
	js, p, ctx := pipelineSetup(t)
	pd, err := p.Publish(js.Subject("nostream"), []byte("x"), jetstream.PubOpts{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pd.Wait(ctx); !errors.Is(err, jetstream.ErrNoResponders) {
		t.Fatalf("publish without stream: %v, want ErrNoResponders", err)
	}
	// A core subscriber that never answers stands in for a server that lost the message.
	silent := js.Subject("silent")
	sub, err := js.Subscribe(silent, "", func(*jetstream.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := js.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	pd, _ = p.Publish(silent, []byte("x"), jetstream.PubOpts{}, nil)
	if _, err := pd.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait past its context: %v", err)
	}
	if n := p.InFlight(); n != 0 {
		t.Fatalf("%d in flight after the wait gave up", n)
	}

	quick, err := js.NewPipeline(100 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	pd, _ = quick.Publish(silent, []byte("x"), jetstream.PubOpts{}, nil)
	if _, err := pd.Wait(ctx); !errors.Is(err, jetstream.ErrAckTimeout) {
		t.Fatalf("unanswered publish: %v, want ErrAckTimeout", err)
	}
	got := make(chan error, 1)
	if _, err := quick.Publish(silent, []byte("x"), jetstream.PubOpts{}, func(_ jetstream.PubAck, err error) { got <- err }); err != nil {
		t.Fatal(err)
	}
	quick.Close()
	if err := <-got; !errors.Is(err, jetstream.ErrPipelineClosed) && !errors.Is(err, jetstream.ErrAckTimeout) {
		t.Fatalf("publish pending at close: %v", err)
	}
	if _, err := quick.Publish(silent, []byte("x"), jetstream.PubOpts{}, nil); !errors.Is(err, jetstream.ErrPipelineClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	var cbErr error
	if _, err := quick.Publish(silent, []byte("x"), jetstream.PubOpts{}, func(_ jetstream.PubAck, err error) { cbErr = err }); !errors.Is(err, jetstream.ErrPipelineClosed) || !errors.Is(cbErr, jetstream.ErrPipelineClosed) {
		t.Fatalf("publish with a callback after close: %v (callback: %v)", err, cbErr)
	}
	quick.Close() // twice is fine
}

// ParseAck: the usual acknowledgements by hand, the rest as parsePubAck; bad inputs are errors.
func TestParseAck(t *testing.T) {
	good := []struct {
		in   string
		want jetstream.PubAck
	}{
		{`{"stream":"KV_T","seq":42}`, jetstream.PubAck{Stream: "KV_T", Sequence: 42}},
		{`{"stream":"Q","seq":7,"duplicate":true}`, jetstream.PubAck{Stream: "Q", Sequence: 7, Duplicate: true}},
		{`{"stream":"Q","domain":"hub","seq":9}`, jetstream.PubAck{Stream: "Q", Sequence: 9}},
		{`{"stream": "Q", "seq": 18446744073709551615}`, jetstream.PubAck{Stream: "Q", Sequence: 18446744073709551615}},
	}
	for _, g := range good {
		got, err := jetstream.ParseAck([]byte(g.in))
		if err != nil || got != g.want {
			t.Errorf("ParseAck(%s) = %+v, %v; want %+v", g.in, got, err, g.want)
		}
	}
	bad := []string{``, `{`, `null`, `[]`, `{"stream":"","seq":1}`, `{"stream":"Q"}`, `{"stream":"Q","seq":0}`,
		`{"stream":"Q","seq":99999999999999999999}`, `not json`,
		`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`}
	for _, b := range bad {
		if ack, err := jetstream.ParseAck([]byte(b)); err == nil {
			t.Errorf("ParseAck(%q) = %+v, want an error", b, ack)
		}
	}
	wrong := `{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"}}`
	if _, err := jetstream.ParseAck([]byte(wrong)); !errors.Is(err, jetstream.ErrConflict) {
		t.Errorf("wrong last sequence: %v, want ErrConflict", err)
	}
}

// FuzzParseAck: never panics; whatever it accepts has a stream and a sequence, and an
// acknowledgement as the server writes it reads back as written.
func FuzzParseAck(f *testing.F) {
	for _, s := range []string{`{"stream":"KV_T","seq":42}`, `{"stream":"Q","seq":7,"duplicate":true}`,
		`{"stream":"Q","domain":"hub","seq":9}`, `{"error":{"code":400,"err_code":10071,"description":"x"}}`, `{"stream":"a\"b","seq":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ack, err := jetstream.ParseAck(b)
		if err == nil && (ack.Stream == "" || ack.Sequence == 0) {
			t.Fatalf("ParseAck(%q) accepted %+v", b, ack)
		}
		var w struct {
			Stream    string `json:"stream"`
			Seq       uint64 `json:"seq"`
			Duplicate bool   `json:"duplicate,omitempty"`
		}
		if json.Unmarshal(b, &w) != nil || w.Stream == "" || w.Seq == 0 || strings.ContainsAny(w.Stream, "\"\\") {
			return // (stream names hold no quotes or backslashes)
		}
		canon, _ := json.Marshal(w)
		got, err := jetstream.ParseAck(canon)
		if err != nil || got != (jetstream.PubAck{Stream: w.Stream, Sequence: w.Seq, Duplicate: w.Duplicate}) {
			t.Fatalf("ParseAck(%s) = %+v, %v", canon, got, err)
		}
	})
}

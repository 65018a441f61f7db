package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// streamHandles caches bound stream handles per client and logical stream name, so that calls on
// a hot path cost one API round trip instead of two (binding a handle is itself a STREAM.INFO).
var streamHandles sync.Map // streamKey → jetstream.Stream

type streamKey struct {
	c      *Client
	stream string
}

func (c *Client) streamHandle(ctx context.Context, stream string) (jetstream.Stream, error) {
	k := streamKey{c, stream}
	if s, ok := streamHandles.Load(k); ok {
		return s.(jetstream.Stream), nil
	}
	s, err := c.js.Stream(ctx, c.names.Asset(stream))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	streamHandles.Store(k, s)
	return s, nil
}

// StreamSubjectCounts is SubjectCounts in one round trip: the number of stored messages per
// subject matching filter. On error the cached handle is dropped (the stream may have been
// recreated).
func (c *Client) StreamSubjectCounts(ctx context.Context, stream, filter string) (map[string]uint64, error) {
	s, err := c.streamHandle(ctx, stream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		streamHandles.Delete(streamKey{c, stream})
		return nil, fmt.Errorf("stream %s subjects %s: %w", stream, filter, err)
	}
	return info.State.Subjects, nil
}

// PubFuture is the pending acknowledgement of a message sent with PublishAsync.
type PubFuture struct {
	subject string
	create  string // the key, when the message is a KV create (a failed condition is ErrExists)
	f       jetstream.PubAckFuture
}

// PublishAsync sends a message to be stored and returns without waiting for JetStream's
// acknowledgement: Wait gives it. Messages published by one client reach the server in the order
// of the calls, so several writes can be in flight at once and still be sent in a chosen order
// (the caller acknowledges its own client only after every Wait succeeded).
func (c *Client) PublishAsync(subject string, data []byte, o PubOpts) (*PubFuture, error) {
	msg := &nats.Msg{Subject: subject, Data: data, Header: o.Header}
	var opts []jetstream.PublishOpt
	if o.MsgID != "" {
		opts = append(opts, jetstream.WithMsgID(o.MsgID))
	}
	if o.TTL > 0 {
		opts = append(opts, jetstream.WithMsgTTL(o.TTL))
	}
	if o.ExpectSubjectEmpty {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(0))
	} else if o.ExpectLastSubjectSeq > 0 {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(o.ExpectLastSubjectSeq))
	}
	f, err := c.js.PublishMsgAsync(msg, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	return &PubFuture{subject: subject, f: f}, nil
}

// Wait returns the acknowledgement (ErrConflict when an expected-last-sequence condition failed,
// ErrExists for CreateAsync of a key that exists).
func (f *PubFuture) Wait(ctx context.Context) (PubAck, error) {
	select {
	case ack := <-f.f.Ok():
		return PubAck{Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
	case err := <-f.f.Err():
		if asyncWrongLastSeq(err) {
			if f.create != "" {
				return PubAck{}, fmt.Errorf("kv create %s: %w", f.create, ErrExists)
			}
			return PubAck{}, fmt.Errorf("publish %s: %w", f.subject, ErrConflict)
		}
		return PubAck{}, fmt.Errorf("publish %s: %w", f.subject, err)
	case <-ctx.Done():
		return PubAck{}, fmt.Errorf("publish %s: %w", f.subject, ctx.Err())
	}
}

// asyncWrongLastSeq reports a failed expected-last-sequence condition in an asynchronous
// acknowledgement (R1 and replicated streams report it with different codes).
func asyncWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// CreateAsync is Create without waiting (see PublishAsync): the key is stored only if it has
// never had a value; Wait answers ErrExists otherwise (also for a key whose value was deleted,
// which Create would accept) and the acknowledged sequence is the key's revision. No TTL.
func (k *KV) CreateAsync(key string, val []byte) (*PubFuture, error) {
	f, err := k.c.PublishAsync("$KV."+k.c.names.Asset(k.name)+"."+key, val, PubOpts{ExpectSubjectEmpty: true})
	if err != nil {
		return nil, fmt.Errorf("kv %s create %s: %w", k.name, key, err)
	}
	f.create = key
	return f, nil
}

// Taker takes one message at a time from a durable pull consumer, for hot paths where many
// goroutines each want one message now. Every request uses a standing subscription from a pool
// (at most one request in flight on each), so taking a message costs one request and its reply:
// no subscription is made and removed per fetch (as Fetch does) and no goroutine is started.
type Taker struct {
	c      *Client
	stream string
	api    string // $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>

	mu     sync.Mutex
	free   []*takeSub
	closed bool
}

type takeSub struct {
	sub   *nats.Subscription
	ch    chan *nats.Msg // small: one answer is expected at a time (a SubscribeSync would hold 64k)
	inbox string
	n     uint64 // number of the request in flight: its status replies go to inbox.<n>
}

// maxFreeTakeSubs bounds the idle subscriptions a Taker keeps.
const maxFreeTakeSubs = 16

// Taker returns a Taker on the consumer (Close it when done).
func (c *Consumer) Taker() *Taker {
	return &Taker{c: c.c, stream: c.stream,
		api: "$JS.API.CONSUMER.MSG.NEXT." + c.c.names.Asset(c.stream) + "." + c.c.names.Asset(c.name)}
}

func (t *Taker) get() (*takeSub, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, fmt.Errorf("take %s: %w", t.api, nats.ErrBadSubscription)
	}
	if n := len(t.free); n > 0 {
		s := t.free[n-1]
		t.free = t.free[:n-1]
		t.mu.Unlock()
		return s, nil
	}
	t.mu.Unlock()
	inbox := t.c.nc.NewInbox()
	ch := make(chan *nats.Msg, 8)
	sub, err := t.c.nc.ChanSubscribe(inbox+".*", ch)
	if err != nil {
		return nil, fmt.Errorf("take %s: %w", t.api, err)
	}
	return &takeSub{sub: sub, ch: ch, inbox: inbox}, nil
}

func (t *Taker) put(s *takeSub) {
	t.mu.Lock()
	if !t.closed && len(t.free) < maxFreeTakeSubs {
		t.free = append(t.free, s)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	_ = s.sub.Unsubscribe()
}

// Close removes the idle subscriptions; requests in flight end normally.
func (t *Taker) Close() {
	t.mu.Lock()
	free := t.free
	t.free, t.closed = nil, true
	t.mu.Unlock()
	for _, s := range free {
		_ = s.sub.Unsubscribe()
	}
}

// Next takes the next message, waiting up to wait for one (0 = answer at once); nil, nil when
// there is none. A consumer that is gone (or any other refusal) is an error.
func (t *Taker) Next(ctx context.Context, wait time.Duration) (*Job, error) {
	s, err := t.get()
	if err != nil {
		return nil, err
	}
	s.n++
	tok := "." + strconv.FormatUint(s.n, 10)
	var req []byte
	if wait > 0 {
		req = fmt.Appendf(nil, `{"batch":1,"expires":%d}`, wait.Nanoseconds())
	} else {
		req = []byte(`{"batch":1,"no_wait":true}`)
	}
	if err := t.c.nc.PublishRequest(t.api, s.inbox+tok, req); err != nil {
		t.put(s)
		return nil, fmt.Errorf("take %s: %w", t.api, err)
	}
	// the server answers with a message or a status; without an answer (connection trouble)
	// the subscription is dropped, since a late answer would be taken for a later request's
	wctx, cancel := context.WithTimeout(ctx, wait+5*time.Second)
	defer cancel()
	for {
		var m *nats.Msg
		select {
		case m = <-s.ch:
		case <-wctx.Done():
			_ = s.sub.Unsubscribe()
			return nil, fmt.Errorf("take %s: %w", t.api, wctx.Err())
		}
		if strings.HasPrefix(m.Reply, "$JS.ACK.") {
			t.put(s)
			return t.job(m), nil
		}
		status := m.Header.Get("Status")
		if status == "100" || !strings.HasSuffix(m.Subject, tok) {
			continue // a heartbeat, or a late status of an earlier request
		}
		t.put(s)
		switch status {
		case "404", "408":
			return nil, nil
		}
		return nil, fmt.Errorf("take %s: status %s %s", t.api, status, m.Header.Get("Description"))
	}
}

func (t *Taker) job(m *nats.Msg) *Job {
	pm := &takenMsg{m: m, nc: t.c.nc}
	j := &Job{Msg: Msg{Subject: m.Subject, Header: m.Header, Data: m.Data, Reply: m.Reply}, c: t.c, stream: t.stream, m: pm}
	if md, err := m.Metadata(); err == nil {
		j.Sequence = md.Sequence.Stream
		j.Deliveries = md.NumDelivered
		j.Pending = md.NumPending
		j.Time = md.Timestamp
	}
	return j
}

// takenMsg is a JetStream message received on a Taker's inbox (jetstream.Msg for Job); acks go
// to its reply subject.
type takenMsg struct {
	m  *nats.Msg
	nc *nats.Conn
}

func (p *takenMsg) Metadata() (*jetstream.MsgMetadata, error) {
	md, err := p.m.Metadata()
	if err != nil {
		return nil, err
	}
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Consumer: md.Sequence.Consumer, Stream: md.Sequence.Stream},
		NumDelivered: md.NumDelivered, NumPending: md.NumPending, Timestamp: md.Timestamp, Stream: md.Stream,
		Consumer: md.Consumer, Domain: md.Domain}, nil
}

func (p *takenMsg) Data() []byte                        { return p.m.Data }
func (p *takenMsg) Headers() nats.Header                { return p.m.Header }
func (p *takenMsg) Subject() string                     { return p.m.Subject }
func (p *takenMsg) Reply() string                       { return p.m.Reply }
func (p *takenMsg) Ack() error                          { return p.m.Ack() }
func (p *takenMsg) DoubleAck(ctx context.Context) error { return p.m.AckSync(nats.Context(ctx)) }
func (p *takenMsg) Nak() error                          { return p.m.Nak() }
func (p *takenMsg) NakWithDelay(d time.Duration) error  { return p.m.NakWithDelay(d) }
func (p *takenMsg) InProgress() error                   { return p.m.InProgress() }
func (p *takenMsg) Term() error                         { return p.m.Term() }
func (p *takenMsg) TermWithReason(reason string) error {
	return p.nc.Publish(p.m.Reply, []byte("+TERM "+reason))
}

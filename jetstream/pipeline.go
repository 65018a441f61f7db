package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrPipelineClosed is the outcome of a pipelined publish still waiting when its Pipeline closed.
var ErrPipelineClosed = errors.New("pipeline closed")

// ErrAckTimeout is the outcome of a pipelined publish that got no acknowledgement in time.
var ErrAckTimeout = errors.New("no acknowledgement in time")

// Pipeline sends persistent publishes without waiting for each acknowledgement: every publish
// gets its own reply subject under one inbox subscription of the pipeline, and its
// acknowledgement is parsed by hand (as Publish's) and handed to a Pending. Several writes can so
// be in flight at once from one goroutine (wait for all of them before acknowledging a client),
// and background writes cost no goroutine each. Messages published through one client reach the
// server in the order of the calls.
//
// A Pipeline has an owner that calls Close; a publish whose acknowledgement does not come within
// the pipeline's timeout (a lost connection) fails with ErrAckTimeout.
type Pipeline struct {
	c       *Client
	prefix  string
	sub     *nats.Subscription
	timeout time.Duration

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*Pending
	closed  bool

	streams    map[string]string // interned stream names of acknowledgements (onAck only)
	kvPrefixes sync.Map          // bucket → "$KV.<asset>."

	stop chan struct{}
	wg   sync.WaitGroup
}

// Pending is the acknowledgement to come of one pipelined publish.
type Pending struct {
	p       *Pipeline
	id      uint64
	subject string
	create  string // the key of a KV create (a failed condition is then ErrExists)
	sent    time.Time
	done    chan struct{}       // receives once when ack/err are set (Wait); nil with a callback
	cb      func(PubAck, error) // called instead when set
	ack     PubAck
	err     error
}

// NewPipeline starts a pipeline on c. timeout (> 0; default 30 s) bounds how long a publish waits
// for its acknowledgement.
func (c *Client) NewPipeline(timeout time.Duration) (*Pipeline, error) {
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	p := &Pipeline{c: c, prefix: c.nc.NewInbox() + ".", timeout: timeout, pending: map[uint64]*Pending{},
		stop: make(chan struct{}), streams: map[string]string{}}
	sub, err := c.nc.Subscribe(p.prefix+"*", p.onAck)
	if err != nil {
		return nil, fmt.Errorf("pipeline inbox: %w", err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	p.sub = sub
	p.wg.Add(1)
	go p.janitor()
	return p, nil
}

// Publish sends a message to be stored (o as for Client.Publish). With cb nil, the outcome is
// taken with Pending.Wait; otherwise cb receives it, on the pipeline's goroutine (it must not
// block) or, when the send itself fails, on the caller's before Publish returns.
func (p *Pipeline) Publish(subject string, data []byte, o PubOpts, cb func(PubAck, error)) (*Pending, error) {
	h := make(Header, len(o.Header)+3)
	for k, v := range o.Header {
		h[k] = v
	}
	if o.MsgID != "" {
		h[nats.MsgIdHdr] = []string{o.MsgID}
	}
	if o.TTL > 0 {
		h[jetstream.MsgTTLHeader] = []string{o.TTL.String()}
	}
	if o.ExpectSubjectEmpty {
		h[jetstream.ExpectedLastSubjSeqHeader] = []string{"0"}
	} else if o.ExpectLastSubjectSeq > 0 {
		h[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(o.ExpectLastSubjectSeq, 10)}
	}
	return p.send(&nats.Msg{Subject: subject, Data: data, Header: h}, "", cb)
}

// PublishExpect is Client.PublishExpect pipelined: stored only if subject's last sequence is
// still lastSeq (0: the subject holds no message), expiring after ttl when ttl > 0. A failed
// condition is ErrConflict.
func (p *Pipeline) PublishExpect(subject string, data []byte, lastSeq uint64, ttl time.Duration, cb func(PubAck, error)) (*Pending, error) {
	if ttl <= 0 {
		if lastSeq == 0 {
			return p.send(&nats.Msg{Subject: subject, Data: data, Header: expectEmpty}, "", cb)
		}
		// nats.go has encoded the header when the publish returns: the map is reused.
		hp := expectPool.Get().(*expectHeader)
		hp.v[0] = strconv.FormatUint(lastSeq, 10)
		pd, err := p.send(&nats.Msg{Subject: subject, Data: data, Header: hp.h}, "", cb)
		expectPool.Put(hp)
		return pd, err
	}
	h := Header{jetstream.ExpectedLastSubjSeqHeader: []string{strconv.FormatUint(lastSeq, 10)}}
	if ttl > 0 {
		h[jetstream.MsgTTLHeader] = []string{ttl.String()}
	}
	return p.send(&nats.Msg{Subject: subject, Data: data, Header: h}, "", cb)
}

// KVWrite is KV.WriteLean pipelined: val stored under key if the key's revision is still rev (0:
// the key has no stored value at all), expiring ttl from now when ttl > 0. The acknowledged
// sequence is the new revision; a failed condition is ErrConflict.
func (p *Pipeline) KVWrite(k *KV, key string, val []byte, rev uint64, ttl time.Duration, cb func(PubAck, error)) (*Pending, error) {
	return p.PublishExpect(p.kvPrefix(k)+key, val, rev, ttl, cb)
}

// kvPrefix is "$KV.<bucket asset>." of k, built once per bucket.
func (p *Pipeline) kvPrefix(k *KV) string {
	if v, ok := p.kvPrefixes.Load(k.name); ok {
		return v.(string)
	}
	v := "$KV." + k.c.names.Asset(k.name) + "."
	p.kvPrefixes.Store(k.name, v)
	return v
}

// KVCreate is KVWrite with rev 0 whose failed condition is ErrExists (as KV.CreateAsync: a key
// whose value was deleted still has its delete marker and is refused too).
func (p *Pipeline) KVCreate(k *KV, key string, val []byte, cb func(PubAck, error)) (*Pending, error) {
	m := &nats.Msg{Subject: p.kvPrefix(k) + key, Data: val, Header: expectEmpty}
	return p.send(m, key, cb)
}

// expectHeader is a reusable header holding only an expected last subject sequence.
type expectHeader struct {
	h Header
	v []string
}

var expectPool = sync.Pool{New: func() any {
	v := []string{""}
	return &expectHeader{h: Header{jetstream.ExpectedLastSubjSeqHeader: v}, v: v}
}}

// expectEmpty is the header of a publish expecting an empty subject, shared by such publishes
// (nats.go only reads a message's header).
var expectEmpty = Header{jetstream.ExpectedLastSubjSeqHeader: []string{"0"}}

func (p *Pipeline) send(m *nats.Msg, create string, cb func(PubAck, error)) (*Pending, error) {
	var pd *Pending
	if cb == nil {
		pd = pendingPool.Get().(*Pending) // (back in the pool when Wait returns)
		pd.p, pd.subject, pd.create, pd.sent = p, m.Subject, create, time.Now()
	} else {
		pd = &Pending{p: p, subject: m.Subject, create: create, cb: cb, sent: time.Now()}
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		err := fmt.Errorf("publish %s: %w", m.Subject, ErrPipelineClosed)
		if cb != nil {
			cb(PubAck{}, err)
		} else {
			pd.recycle()
		}
		return nil, err
	}
	p.next++
	pd.id = p.next
	p.pending[pd.id] = pd
	p.mu.Unlock()
	var rb [64]byte
	m.Reply = string(strconv.AppendUint(append(rb[:0], p.prefix...), pd.id, 10))
	if err := p.c.nc.PublishMsg(m); err != nil {
		err = fmt.Errorf("publish %s: %w", m.Subject, err)
		if p.take(pd.id) != nil {
			if cb != nil {
				cb(PubAck{}, err)
			} else {
				pd.recycle()
			}
		} else if cb == nil {
			<-pd.done // completed meanwhile (timed out or closed)
			pd.recycle()
		}
		return nil, err
	}
	return pd, nil
}

// onAck completes the publish an acknowledgement answers.
func (p *Pipeline) onAck(m *nats.Msg) {
	id, err := strconv.ParseUint(m.Subject[len(p.prefix):], 10, 64)
	if err != nil {
		return
	}
	pd := p.take(id)
	if pd == nil {
		return // given up (Wait's context ended, or timed out)
	}
	var ack PubAck
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		err = fmt.Errorf("publish %s: %w", pd.subject, ErrNoResponders)
	} else if name, seq, dup, ok := quickAckParts(m.Data); ok {
		stream, known := p.streams[string(name)] // (onAck runs on one goroutine)
		if !known {
			stream = string(name)
			if len(p.streams) < 64 {
				p.streams[stream] = stream
			}
		}
		ack = PubAck{Stream: stream, Sequence: seq, Duplicate: dup}
	} else if ack, err = ParseAck(m.Data); err != nil {
		if pd.create != "" && errors.Is(err, ErrConflict) {
			err = fmt.Errorf("kv create %s: %w", pd.create, ErrExists)
		} else {
			err = fmt.Errorf("publish %s: %w", pd.subject, err)
		}
	}
	pd.complete(ack, err)
}

// ParseAck reads a JetStream publish acknowledgement: the usual form by hand (quickAck), any
// other through parsePubAck. An error answer is an error (ErrConflict for a failed
// expected-last-sequence condition).
func ParseAck(b []byte) (PubAck, error) {
	if ack, ok := quickAck(b); ok {
		return ack, nil
	}
	ack, err := parsePubAck(b)
	if err == nil && ack.Sequence == 0 {
		return PubAck{}, fmt.Errorf("invalid publish acknowledgement %q", b)
	}
	return ack, err
}

// quickAck reads the usual acknowledgement, {"stream":"S","seq":N} (optionally with
// ,"duplicate":true), without a generic parser; anything else is left to parsePubAck.
func quickAck(b []byte) (PubAck, bool) {
	name, seq, dup, ok := quickAckParts(b)
	if !ok {
		return PubAck{}, false
	}
	return PubAck{Stream: string(name), Sequence: seq, Duplicate: dup}, true
}

// quickAckParts is quickAck without allocating the stream name.
func quickAckParts(b []byte) (stream []byte, seq uint64, dup, ok bool) {
	const head, mid = `{"stream":"`, `","seq":`
	if len(b) < len(head)+len(mid)+3 || string(b[:len(head)]) != head {
		return nil, 0, false, false
	}
	rest := b[len(head):]
	i := 0
	for i < len(rest) && rest[i] != '"' && rest[i] != '\\' {
		i++
	}
	if i == 0 || len(rest)-i < len(mid)+2 || string(rest[i:i+len(mid)]) != mid {
		return nil, 0, false, false
	}
	stream = rest[:i]
	rest = rest[i+len(mid):]
	n := 0
	for n < len(rest) && n < 20 && rest[n] >= '0' && rest[n] <= '9' {
		seq = seq*10 + uint64(rest[n]-'0')
		n++
	}
	if n == 0 || n == 20 || seq == 0 {
		return nil, 0, false, false
	}
	switch string(rest[n:]) {
	case "}":
	case `,"duplicate":true}`:
		dup = true
	default:
		return nil, 0, false, false
	}
	return stream, seq, dup, true
}

// take removes a publish from the waiting ones (nil if it is no longer there): whoever takes it
// completes it, exactly once.
func (p *Pipeline) take(id uint64) *Pending {
	p.mu.Lock()
	pd := p.pending[id]
	delete(p.pending, id)
	p.mu.Unlock()
	return pd
}

func (pd *Pending) complete(ack PubAck, err error) {
	if pd.cb != nil {
		pd.cb(ack, err)
		return
	}
	pd.ack, pd.err = ack, err
	pd.done <- struct{}{}
}

// pendingPool recycles the Pendings of publishes waited for (Wait returns them).
var pendingPool = sync.Pool{New: func() any { return &Pending{done: make(chan struct{}, 1)} }}

// recycle returns a waited-for Pending to the pool; nothing refers to it any more.
func (pd *Pending) recycle() {
	done := pd.done
	*pd = Pending{done: done}
	pendingPool.Put(pd)
}

// Wait returns the acknowledgement of a publish sent without callback (ErrConflict when an
// expected-last-sequence condition failed, ErrExists for a KVCreate of a key that has a value).
// When ctx ends first, the acknowledgement is no longer awaited. Wait is called once: the
// Pending is reused afterwards.
func (pd *Pending) Wait(ctx context.Context) (PubAck, error) {
	if pd.cb != nil {
		return PubAck{}, fmt.Errorf("publish %s: has a callback", pd.subject)
	}
	select {
	case <-pd.done:
	case <-ctx.Done():
		if pd.p.take(pd.id) != nil {
			err := fmt.Errorf("publish %s: %w", pd.subject, ctx.Err())
			pd.recycle()
			return PubAck{}, err
		}
		<-pd.done // completed meanwhile
	}
	ack, err := pd.ack, pd.err
	pd.recycle()
	return ack, err
}

// janitor fails publishes waiting longer than the timeout.
func (p *Pipeline) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(max(p.timeout/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			var late []*Pending
			p.mu.Lock()
			for id, pd := range p.pending {
				if now.Sub(pd.sent) > p.timeout {
					late = append(late, pd)
					delete(p.pending, id)
				}
			}
			p.mu.Unlock()
			for _, pd := range late {
				pd.complete(PubAck{}, fmt.Errorf("publish %s: %w", pd.subject, ErrAckTimeout))
			}
		}
	}
}

// InFlight is the number of publishes waiting for their acknowledgement.
func (p *Pipeline) InFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

// Close stops the pipeline: publishes still waiting fail with ErrPipelineClosed.
func (p *Pipeline) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	left := p.pending
	p.pending = map[uint64]*Pending{}
	p.mu.Unlock()
	close(p.stop)
	p.wg.Wait()
	if err := p.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		p.c.log.Debug("pipeline unsubscribe", "err", err)
	}
	for _, pd := range left {
		pd.complete(PubAck{}, fmt.Errorf("publish %s: %w", pd.subject, ErrPipelineClosed))
	}
}

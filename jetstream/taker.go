package jetstream

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

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

func (t *Taker) job(m *nats.Msg) *Job { return t.c.rawJob(t.stream, m) }

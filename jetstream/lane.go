package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrLaneClosed is the outcome of a publish on a closed Lane.
var ErrLaneClosed = errors.New("jetstream: lane closed")

// Lane is a publish path for one goroutine that stores one message at a time (a device
// connection writing an event and acknowledging it once stored). Its acknowledgements come on a
// reply subscription of its own, handed by the connection's reader straight to the waiting
// goroutine: unlike Publish, no dispatcher goroutine stands between them, which saves a
// goroutine wake-up per message. A Lane costs one subscription; its owner calls Close.
type Lane struct {
	c      *Client
	prefix string // "<inbox>."
	ch     chan *nats.Msg

	mu     sync.Mutex // Publish is not concurrent; mu guards sub against Close
	sub    *nats.Subscription
	seq    uint64
	rb     []byte
	closed bool
}

// NewLane subscribes the reply inbox of a new Lane.
func (c *Client) NewLane() (*Lane, error) {
	l := &Lane{c: c, prefix: c.nc.NewInbox() + ".", ch: make(chan *nats.Msg, 8)}
	sub, err := c.nc.ChanSubscribe(l.prefix+"*", l.ch)
	if err != nil {
		return nil, fmt.Errorf("lane inbox: %w", err)
	}
	l.sub = sub
	return l, nil
}

// Publish is Client.PublishLean through the lane: h (may be nil) is used as the message's header
// and modified (msgID, when given, is set in it); the call waits for the acknowledgement. A
// reply to an earlier publish that was given up (ctx ended) is discarded.
func (l *Lane) Publish(ctx context.Context, subject string, data []byte, h Header, msgID string) (PubAck, error) {
	if msgID != "" {
		if h == nil {
			h = Header{}
		}
		h[nats.MsgIdHdr] = []string{msgID}
	}
	for attempt := 0; ; attempt++ {
		ack, err := l.publishOnce(ctx, subject, data, h)
		if err == nil || !errors.Is(err, ErrNoResponders) || attempt >= 2 {
			return ack, err
		}
		t := time.NewTimer(250 * time.Millisecond) // a stream leader being elected
		select {
		case <-ctx.Done():
			t.Stop()
			return PubAck{}, fmt.Errorf("publish %s: %w", subject, ctx.Err())
		case <-t.C:
		}
	}
}

func (l *Lane) publishOnce(ctx context.Context, subject string, data []byte, h Header) (PubAck, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return PubAck{}, fmt.Errorf("publish %s: %w", subject, ErrLaneClosed)
	}
	l.seq++
	l.rb = strconv.AppendUint(append(l.rb[:0], l.prefix...), l.seq, 10)
	reply := string(l.rb)
	l.mu.Unlock()
	if err := l.c.nc.PublishMsg(&nats.Msg{Subject: subject, Reply: reply, Data: data, Header: h}); err != nil {
		return PubAck{}, fmt.Errorf("publish %s: %w", subject, err)
	}
	for {
		select {
		case <-ctx.Done():
			return PubAck{}, fmt.Errorf("publish %s: %w", subject, ctx.Err())
		case m, ok := <-l.ch:
			if !ok {
				return PubAck{}, fmt.Errorf("publish %s: %w", subject, ErrLaneClosed)
			}
			if m.Subject != reply {
				continue // the late answer of a publish given up earlier
			}
			if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
				return PubAck{}, fmt.Errorf("publish %s: %w", subject, ErrNoResponders)
			}
			ack, err := ParseAck(m.Data)
			if err != nil {
				return PubAck{}, fmt.Errorf("publish %s: %w", subject, err)
			}
			return ack, nil
		}
	}
}

// Close unsubscribes the lane; a later Publish fails with ErrLaneClosed.
func (l *Lane) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	_ = l.sub.Unsubscribe()
}

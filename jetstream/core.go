package jetstream

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// ErrNoResponders means a request found nobody subscribed to its subject.
var ErrNoResponders = errors.New("no responders")

// PublishCore sends a core NATS message (fire and forget, not stored).
func (c *Client) PublishCore(subject string, data []byte, h Header) error {
	if err := c.nc.PublishMsg(&nats.Msg{Subject: subject, Data: data, Header: h}); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// Request sends a core NATS request and waits for the first reply until ctx ends.
// It returns ErrNoResponders when nobody listens on subject.
func (c *Client) Request(ctx context.Context, subject string, data []byte, h Header) (*Msg, error) {
	rep, err := c.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Data: data, Header: h})
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("request %s: %w", subject, ErrNoResponders)
		}
		return nil, fmt.Errorf("request %s: %w", subject, err)
	}
	return &Msg{Subject: rep.Subject, Header: rep.Header, Data: rep.Data, raw: rep}, nil
}

// Subscription is a core NATS subscription.
type Subscription struct{ sub *nats.Subscription }

// Unsubscribe stops the subscription now.
func (s *Subscription) Unsubscribe() error {
	if s == nil || s.sub == nil {
		return nil
	}
	if err := s.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("unsubscribe %s: %w", s.sub.Subject, err)
	}
	return nil
}

// Drain stops the subscription after the messages already received are handled.
func (s *Subscription) Drain() error {
	if s == nil || s.sub == nil {
		return nil
	}
	if err := s.sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("drain %s: %w", s.sub.Subject, err)
	}
	return nil
}

// Subscribe listens on a core subject; with a non-empty queue the subscribers of the same queue
// share the messages (exclusion group). fn runs on the subscription's own goroutine, one message at a
// time; long work should be handed off.
func (c *Client) Subscribe(subject, queue string, fn func(*Msg)) (*Subscription, error) {
	h := func(m *nats.Msg) {
		fn(&Msg{Subject: m.Subject, Reply: m.Reply, Header: m.Header, Data: m.Data, raw: m})
	}
	var sub *nats.Subscription
	var err error
	if queue == "" {
		sub, err = c.nc.Subscribe(subject, h)
	} else {
		sub, err = c.nc.QueueSubscribe(subject, queue, h)
	}
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject, err)
	}
	return &Subscription{sub: sub}, nil
}

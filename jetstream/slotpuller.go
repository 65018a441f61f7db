package jetstream

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// SlotPuller pulls from a durable pull consumer through one long-lived inbox subscription, asking
// for exactly as many messages as its owner has room for (Fetch, by contrast, subscribes and
// unsubscribes on every call). Every requested message either arrives (onJob) or is reported as
// not coming (onEnd with the count: the request expired or the server ended it), so the owner
// always knows how many messages are still on their way.
type SlotPuller struct {
	c      *Client
	stream string
	api    string
	sub    *nats.Subscription
	onJob  func(*Job)
	onEnd  func(unfilled int)

	mu     sync.Mutex
	closed bool
}

// NewSlotPuller binds a SlotPuller to a provisioned durable consumer. onJob and onEnd run on the
// subscription's goroutine, one at a time.
func (c *Client) NewSlotPuller(stream, durable string, onJob func(*Job), onEnd func(unfilled int)) (*SlotPuller, error) {
	p := &SlotPuller{c: c, stream: stream, onJob: onJob, onEnd: onEnd,
		api: fmt.Sprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s", c.names.Asset(stream), c.names.Asset(durable))}
	sub, err := c.nc.Subscribe(c.nc.NewInbox(), p.handle)
	if err != nil {
		return nil, fmt.Errorf("puller %s/%s: %w", stream, durable, err)
	}
	p.sub = sub
	return p, nil
}

// Pull asks for n more messages, waiting for them at most expires on the server.
func (p *SlotPuller) Pull(n int, expires time.Duration) error {
	if n <= 0 {
		return nil
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return fmt.Errorf("pull %s: %w", p.stream, nats.ErrBadSubscription)
	}
	req, _ := json.Marshal(struct {
		Batch   int   `json:"batch"`
		Expires int64 `json:"expires"`
	}{n, int64(max(expires, 10*time.Millisecond))})
	if err := p.c.nc.PublishRequest(p.api, p.sub.Subject, req); err != nil {
		return fmt.Errorf("pull %s: %w", p.stream, err)
	}
	return nil
}

func (p *SlotPuller) handle(m *nats.Msg) {
	if len(m.Data) == 0 && m.Header != nil {
		if status := m.Header.Get("Status"); status != "" {
			if status == "100" { // idle heartbeat / flow control
				return
			}
			n, err := strconv.Atoi(m.Header.Get("Nats-Pending-Messages"))
			if err != nil {
				n = 1
			}
			if n > 0 {
				p.onEnd(n)
			}
			return
		}
	}
	if !strings.HasPrefix(m.Reply, "$JS.ACK.") {
		return
	}
	j := p.c.rawJob(p.stream, m)
	p.onJob(j)
}

// Close stops the subscription; requests still open on the server expire.
func (p *SlotPuller) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	if err := p.sub.Unsubscribe(); err != nil && err != nats.ErrConnectionClosed && err != nats.ErrBadSubscription {
		return fmt.Errorf("close puller %s: %w", p.stream, err)
	}
	return nil
}

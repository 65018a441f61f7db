package jetstream

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	pm := &pulledMsg{m: m, nc: p.c.nc}
	j := &Job{Msg: Msg{Subject: m.Subject, Header: m.Header, Data: m.Data, Reply: m.Reply}, c: p.c, stream: p.stream, m: pm}
	if md, err := pm.Metadata(); err == nil {
		j.Sequence = md.Sequence.Stream
		j.Deliveries = md.NumDelivered
		j.Pending = md.NumPending
		j.Time = md.Timestamp
	}
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

// pulledMsg is a JetStream message received on a SlotPuller's inbox; acks go to its reply subject.
type pulledMsg struct {
	m  *nats.Msg
	nc *nats.Conn
}

func (p *pulledMsg) Metadata() (*jetstream.MsgMetadata, error) {
	md, err := p.m.Metadata()
	if err != nil {
		return nil, err
	}
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Consumer: md.Sequence.Consumer, Stream: md.Sequence.Stream},
		NumDelivered: md.NumDelivered, NumPending: md.NumPending, Timestamp: md.Timestamp, Stream: md.Stream,
		Consumer: md.Consumer, Domain: md.Domain}, nil
}

func (p *pulledMsg) Data() []byte         { return p.m.Data }
func (p *pulledMsg) Headers() nats.Header { return p.m.Header }
func (p *pulledMsg) Subject() string      { return p.m.Subject }
func (p *pulledMsg) Reply() string        { return p.m.Reply }
func (p *pulledMsg) Ack() error           { return p.m.Ack() }
func (p *pulledMsg) DoubleAck(ctx context.Context) error {
	return p.m.AckSync(nats.Context(ctx))
}
func (p *pulledMsg) Nak() error                         { return p.m.Nak() }
func (p *pulledMsg) NakWithDelay(d time.Duration) error { return p.m.NakWithDelay(d) }
func (p *pulledMsg) InProgress() error                  { return p.m.InProgress() }
func (p *pulledMsg) Term() error                        { return p.m.Term() }
func (p *pulledMsg) TermWithReason(reason string) error {
	return p.nc.Publish(p.m.Reply, []byte("+TERM "+reason))
}

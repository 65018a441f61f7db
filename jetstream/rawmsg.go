package jetstream

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// rawMsg is a JetStream message received on one of our own pull inboxes (SlotPuller, Taker),
// wrapped as a jetstream.Msg so that Job's acks work on it; acks go to its reply subject.
type rawMsg struct {
	m  *nats.Msg
	nc *nats.Conn
}

func (p *rawMsg) Metadata() (*jetstream.MsgMetadata, error) {
	md, err := p.m.Metadata()
	if err != nil {
		return nil, err
	}
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Consumer: md.Sequence.Consumer, Stream: md.Sequence.Stream},
		NumDelivered: md.NumDelivered, NumPending: md.NumPending, Timestamp: md.Timestamp, Stream: md.Stream,
		Consumer: md.Consumer, Domain: md.Domain}, nil
}

func (p *rawMsg) Data() []byte                        { return p.m.Data }
func (p *rawMsg) Headers() nats.Header                { return p.m.Header }
func (p *rawMsg) Subject() string                     { return p.m.Subject }
func (p *rawMsg) Reply() string                       { return p.m.Reply }
func (p *rawMsg) Ack() error                          { return p.m.Ack() }
func (p *rawMsg) DoubleAck(ctx context.Context) error { return p.m.AckSync(nats.Context(ctx)) }
func (p *rawMsg) Nak() error                          { return p.m.Nak() }
func (p *rawMsg) NakWithDelay(d time.Duration) error  { return p.m.NakWithDelay(d) }
func (p *rawMsg) InProgress() error                   { return p.m.InProgress() }
func (p *rawMsg) Term() error                         { return p.m.Term() }
func (p *rawMsg) TermWithReason(reason string) error {
	return p.nc.Publish(p.m.Reply, []byte("+TERM "+reason))
}

// rawJob makes a Job of a message received on one of our own pull inboxes.
func (c *Client) rawJob(stream string, m *nats.Msg) *Job {
	j := &Job{Msg: Msg{Subject: m.Subject, Header: m.Header, Data: m.Data, Reply: m.Reply}, c: c, stream: stream,
		m: &rawMsg{m: m, nc: c.nc}}
	if md, err := m.Metadata(); err == nil {
		j.Sequence = md.Sequence.Stream
		j.Deliveries = md.NumDelivered
		j.Pending = md.NumPending
		j.Time = md.Timestamp
	}
	return j
}

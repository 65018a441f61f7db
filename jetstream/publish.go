package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PubOpts are the options of a persistent publish.
type PubOpts struct {
	// MsgID de-duplicates retries inside the stream's Duplicates window (Nats-Msg-Id).
	MsgID string
	// Header is sent with the message.
	Header Header
	// TTL expires the message (needs StreamSpec.AllowMsgTTL).
	TTL time.Duration
	// ExpectLastSubjectSeq makes the publish conditional on the subject's last sequence
	// (0 with ExpectSubjectEmpty false means "no condition").
	ExpectLastSubjectSeq uint64
	// ExpectSubjectEmpty makes the publish conditional on the subject having no message.
	ExpectSubjectEmpty bool
}

// PubAck is JetStream's acknowledgement of a stored message.
type PubAck struct {
	Stream    string
	Sequence  uint64
	Duplicate bool
}

// Publish stores a message in the stream that captures subject and waits for JetStream's
// acknowledgement (persist before acknowledging to a client).
func (c *Client) Publish(ctx context.Context, subject string, data []byte, o PubOpts) (PubAck, error) {
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
	ack, err := c.js.PublishMsg(ctx, msg, opts...)
	if err != nil {
		if isWrongLastSeq(err) {
			return PubAck{}, fmt.Errorf("publish %s: %w", subject, ErrConflict)
		}
		return PubAck{}, fmt.Errorf("publish %s: %w", subject, err)
	}
	return PubAck{Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// Msg is a message received from NATS (core or JetStream stored message).
type Msg struct {
	Subject string
	Reply   string
	Header  Header
	Data    []byte
	// Sequence is the stream sequence for stored messages (0 for core messages).
	Sequence uint64
	// Time is when the message was stored (zero for core messages).
	Time time.Time

	raw *nats.Msg
}

// Respond answers a request received through Subscribe.
func (m *Msg) Respond(data []byte, h Header) error {
	if m.raw == nil || m.Reply == "" {
		return fmt.Errorf("respond on %s: no reply subject", m.Subject)
	}
	return m.raw.RespondMsg(&nats.Msg{Data: data, Header: h})
}

// GetMsg reads one stored message by stream sequence.
func (c *Client) GetMsg(ctx context.Context, stream string, seq uint64) (*Msg, error) {
	s, err := c.js.Stream(ctx, c.names.Asset(stream))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	rm, err := s.GetMsg(ctx, seq)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("stream %s get %d: %w", stream, seq, ErrNotFound)
		}
		return nil, fmt.Errorf("stream %s get %d: %w", stream, seq, err)
	}
	return &Msg{Subject: rm.Subject, Header: rm.Header, Data: rm.Data, Sequence: rm.Sequence, Time: rm.Time}, nil
}

// LastMsg reads the last stored message on a subject; ErrNotFound if there is none.
func (c *Client) LastMsg(ctx context.Context, stream, subject string) (*Msg, error) {
	s, err := c.js.Stream(ctx, c.names.Asset(stream))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	rm, err := s.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		if isNotFound(err) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("stream %s last %s: %w", stream, subject, err)
	}
	return &Msg{Subject: rm.Subject, Header: rm.Header, Data: rm.Data, Sequence: rm.Sequence, Time: rm.Time}, nil
}

// DeleteMsg removes one stored message; a message already gone is not an error.
func (c *Client) DeleteMsg(ctx context.Context, stream string, seq uint64) error {
	s, err := c.js.Stream(ctx, c.names.Asset(stream))
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !isNotFound(err) {
		return fmt.Errorf("stream %s delete %d: %w", stream, seq, err)
	}
	return nil
}

// Purge removes every message on subject from stream.
func (c *Client) Purge(ctx context.Context, stream, subject string) error {
	s, err := c.js.Stream(ctx, c.names.Asset(stream))
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
		return fmt.Errorf("stream %s purge %s: %w", stream, subject, err)
	}
	return nil
}

// isWrongLastSeq reports a failed expected-last-sequence condition (R1 and replicated streams
// report it with different codes).
func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

package jetstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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
// acknowledgement (persist before acknowledging to a client). It is one request whose
// acknowledgement is parsed without reflection; a failed expected-sequence condition is
// ErrConflict; a no-responders answer (stream leader election) is retried twice, 250 ms apart.
// o.Header is not modified.
func (c *Client) Publish(ctx context.Context, subject string, data []byte, o PubOpts) (PubAck, error) {
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
	return c.publishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: h})
}

// PublishLean is Publish for hot paths that own their header map: h (may be nil) is used as
// the message's header and modified (the de-duplication id is set in it).
func (c *Client) PublishLean(ctx context.Context, subject string, data []byte, h Header, msgID string) (PubAck, error) {
	if msgID != "" {
		if h == nil {
			h = Header{}
		}
		h[nats.MsgIdHdr] = []string{msgID}
	}
	return c.publishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: h})
}

// PublishExpect stores a message only if subject's last stored sequence is still lastSeq (0: the
// subject holds no message); ttl > 0 expires it (the stream needs AllowMsgTTL). A failed
// condition is ErrConflict.
func (c *Client) PublishExpect(ctx context.Context, subject string, data []byte, lastSeq uint64, ttl time.Duration) (PubAck, error) {
	h := Header{jetstream.ExpectedLastSubjSeqHeader: []string{strconv.FormatUint(lastSeq, 10)}}
	if ttl > 0 {
		h[jetstream.MsgTTLHeader] = []string{ttl.String()}
	}
	return c.publishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: h})
}

// publishMsg sends m as a JetStream publish request and parses the acknowledgement.
func (c *Client) publishMsg(ctx context.Context, m *nats.Msg) (PubAck, error) {
	for attempt := 0; ; attempt++ {
		resp, err := c.nc.RequestMsgWithContext(ctx, m)
		if err == nil {
			ack, err := parsePubAck(resp.Data)
			if err != nil {
				return PubAck{}, fmt.Errorf("publish %s: %w", m.Subject, err)
			}
			return ack, nil
		}
		if !errors.Is(err, nats.ErrNoResponders) || attempt >= 2 {
			return PubAck{}, fmt.Errorf("publish %s: %w", m.Subject, err)
		}
		select {
		case <-ctx.Done():
			return PubAck{}, fmt.Errorf("publish %s: %w", m.Subject, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// parsePubAck reads {"stream":"S","seq":N[,"duplicate": true][,...]} by hand and falls back to
// encoding/json for anything else. A JetStream error answer becomes an error; a failed
// expected-last-sequence condition is ErrConflict.
func parsePubAck(b []byte) (PubAck, error) {
	if !bytes.Contains(b, []byte(`"error"`)) {
		var ack PubAck
		if i := bytes.Index(b, []byte(`"stream":"`)); i >= 0 {
			rest := b[i+len(`"stream":"`):]
			if j := bytes.IndexByte(rest, '"'); j > 0 {
				ack.Stream = string(rest[:j])
			}
		}
		if i := bytes.Index(b, []byte(`"seq":`)); i >= 0 {
			rest := bytes.TrimLeft(b[i+len(`"seq":`):], " ")
			n := 0
			for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
				n++
			}
			if v, err := strconv.ParseUint(string(rest[:n]), 10, 64); err == nil {
				ack.Sequence = v
			}
		}
		if i := bytes.Index(b, []byte(`"duplicate":`)); i >= 0 {
			ack.Duplicate = bytes.HasPrefix(bytes.TrimLeft(b[i+len(`"duplicate":`):], " "), []byte("true"))
		}
		if ack.Stream != "" && ack.Sequence > 0 {
			return ack, nil
		}
	}
	var r struct {
		Stream    string `json:"stream"`
		Seq       uint64 `json:"seq"`
		Duplicate bool   `json:"duplicate"`
		Error     *struct {
			Code        int                 `json:"code"`
			ErrCode     jetstream.ErrorCode `json:"err_code"`
			Description string              `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return PubAck{}, fmt.Errorf("invalid publish acknowledgement %q: %w", b, err)
	}
	if r.Error != nil {
		err := fmt.Errorf("jetstream error %d (%d): %s", r.Error.Code, r.Error.ErrCode, r.Error.Description)
		if r.Error.ErrCode == jetstream.JSErrCodeStreamWrongLastSequence || r.Error.ErrCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant {
			return PubAck{}, fmt.Errorf("%w (%v)", ErrConflict, err)
		}
		return PubAck{}, err
	}
	if r.Stream == "" {
		return PubAck{}, fmt.Errorf("invalid publish acknowledgement %q", b)
	}
	return PubAck{Stream: r.Stream, Sequence: r.Seq, Duplicate: r.Duplicate}, nil
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
	s, err := c.stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	rm, err := s.GetMsg(ctx, seq)
	if err != nil {
		c.forget(stream, err)
		if isNotFound(err) {
			return nil, fmt.Errorf("stream %s get %d: %w", stream, seq, ErrNotFound)
		}
		return nil, fmt.Errorf("stream %s get %d: %w", stream, seq, err)
	}
	return &Msg{Subject: rm.Subject, Header: rm.Header, Data: rm.Data, Sequence: rm.Sequence, Time: rm.Time}, nil
}

// LastMsg reads the last stored message on a subject; ErrNotFound if there is none.
func (c *Client) LastMsg(ctx context.Context, stream, subject string) (*Msg, error) {
	s, err := c.stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	rm, err := s.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		c.forget(stream, err)
		if isNotFound(err) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("stream %s last %s: %w", stream, subject, err)
	}
	return &Msg{Subject: rm.Subject, Header: rm.Header, Data: rm.Data, Sequence: rm.Sequence, Time: rm.Time}, nil
}

// DeleteMsg removes one stored message; a message already gone is not an error.
func (c *Client) DeleteMsg(ctx context.Context, stream string, seq uint64) error {
	s, err := c.stream(ctx, stream)
	if err != nil {
		return err
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !isNotFound(err) {
		c.forget(stream, err)
		return fmt.Errorf("stream %s delete %d: %w", stream, seq, err)
	}
	return nil
}

// Purge removes every message on subject from stream.
func (c *Client) Purge(ctx context.Context, stream, subject string) error {
	s, err := c.stream(ctx, stream)
	if err != nil {
		return err
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
		c.forget(stream, err)
		return fmt.Errorf("stream %s purge %s: %w", stream, subject, err)
	}
	return nil
}

// isWrongLastSeq reports a failed expected-last-sequence condition in an error from nats.go
// (R1 and replicated streams report it with different codes).
func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

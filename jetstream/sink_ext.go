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

// ConsumeDrain is Consume whose stop function drains instead of discarding: messages already
// pulled into the client's buffer are still passed to fn before stop returns, so that fn can hand
// them back at once (Retry) instead of leaving them leased until AckWait runs out. When stop
// returns, the pull subscription is gone from the server (messages given back afterwards are not
// redelivered to it).
func (c *Consumer) ConsumeDrain(fn func(*Job), buffer int) (stop func(), err error) {
	if buffer <= 0 {
		buffer = 1
	}
	cc, err := c.cons.Consume(func(m jetstream.Msg) { fn(c.wrap(m)) },
		jetstream.PullMaxMessages(buffer),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if !errors.Is(err, nats.ErrConnectionClosed) {
				c.c.log.Debug("consume", "consumer", c.name, "err", err)
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("consume %s/%s: %w", c.stream, c.name, err)
	}
	return func() {
		cc.Drain()
		<-cc.Closed()
	}, nil
}

// PublishLean is Publish for hot paths: one request with the de-duplication id in the headers
// (h may be nil and is modified), the PubAck parsed without reflection. A no-responders answer
// (stream leader election) is retried twice, 250 ms apart.
func (c *Client) PublishLean(ctx context.Context, subject string, data []byte, h Header, msgID string) (PubAck, error) {
	if msgID != "" {
		if h == nil {
			h = Header{}
		}
		h[nats.MsgIdHdr] = []string{msgID}
	}
	m := &nats.Msg{Subject: subject, Data: data, Header: h}
	for attempt := 0; ; attempt++ {
		resp, err := c.nc.RequestMsgWithContext(ctx, m)
		if err == nil {
			ack, err := parsePubAck(resp.Data)
			if err != nil {
				return PubAck{}, fmt.Errorf("publish %s: %w", subject, err)
			}
			return ack, nil
		}
		if !errors.Is(err, nats.ErrNoResponders) || attempt >= 2 {
			return PubAck{}, fmt.Errorf("publish %s: %w", subject, err)
		}
		select {
		case <-ctx.Done():
			return PubAck{}, fmt.Errorf("publish %s: %w", subject, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// parsePubAck reads {"stream":"S","seq":N[,"duplicate": true][,...]} by hand and falls back to
// encoding/json for anything else (errors included).
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
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return PubAck{}, fmt.Errorf("invalid publish acknowledgement %q: %w", b, err)
	}
	if r.Error != nil {
		return PubAck{}, fmt.Errorf("jetstream error %d (%d): %s", r.Error.Code, r.Error.ErrCode, r.Error.Description)
	}
	if r.Stream == "" {
		return PubAck{}, fmt.Errorf("invalid publish acknowledgement %q", b)
	}
	return PubAck{Stream: r.Stream, Sequence: r.Seq, Duplicate: r.Duplicate}, nil
}

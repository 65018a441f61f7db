package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishExpect stores a message only if subject's last stored sequence is still lastSeq (0: the
// subject holds no message), in one request with the acknowledgement parsed by hand (no
// reflection), for hot paths. ttl > 0 expires the message (the stream needs AllowMsgTTL). A failed
// condition is ErrConflict. A no-responders answer (stream leader election) is retried twice,
// 250 ms apart.
func (c *Client) PublishExpect(ctx context.Context, subject string, data []byte, lastSeq uint64, ttl time.Duration) (PubAck, error) {
	h := nats.Header{jetstream.ExpectedLastSubjSeqHeader: []string{strconv.FormatUint(lastSeq, 10)}}
	if ttl > 0 {
		h[jetstream.MsgTTLHeader] = []string{ttl.String()}
	}
	m := &nats.Msg{Subject: subject, Data: data, Header: h}
	for attempt := 0; ; attempt++ {
		resp, err := c.nc.RequestMsgWithContext(ctx, m)
		if err == nil {
			ack, err := parsePubAckExpect(resp.Data)
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

// WriteLean stores val under key with PublishExpect: rev > 0 makes the write conditional on the
// key's revision still being rev; rev == 0 on the key having no stored value at all (a key whose
// last value was deleted still has its delete marker: use Create for such keys). ttl > 0 expires
// the value ttl from now (the bucket needs LimitMarkerTTL). ErrConflict when the condition fails.
func (k *KV) WriteLean(ctx context.Context, key string, val []byte, rev uint64, ttl time.Duration) (uint64, error) {
	ack, err := k.c.PublishExpect(ctx, "$KV."+k.c.names.Asset(k.name)+"."+key, val, rev, ttl)
	if err != nil {
		return 0, fmt.Errorf("kv %s write %s: %w", k.name, key, err)
	}
	return ack.Sequence, nil
}

// parsePubAckExpect is parsePubAck that reports a failed expected-last-sequence condition as
// ErrConflict (the error path decodes the API error properly; it is rare).
func parsePubAckExpect(b []byte) (PubAck, error) {
	ack, err := parsePubAck(b)
	if err == nil {
		return ack, nil
	}
	var r struct {
		Error *struct {
			ErrCode jetstream.ErrorCode `json:"err_code"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &r) == nil && r.Error != nil &&
		(r.Error.ErrCode == jetstream.JSErrCodeStreamWrongLastSequence || r.Error.ErrCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return PubAck{}, fmt.Errorf("%w (%v)", ErrConflict, err)
	}
	return PubAck{}, err
}

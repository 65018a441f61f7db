package jetstream

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// WriteLean stores val under key in one request with the acknowledgement parsed by hand (no
// reflection), for hot paths that know the key's revision. rev > 0 makes the write conditional on
// the key's revision still being rev; rev == 0 on the key having no stored value at all (a key
// whose last value was deleted still has its delete marker: use Create for such keys). ttl > 0
// expires the value ttl from now (the bucket needs LimitMarkerTTL). ErrConflict when the
// condition fails.
func (k *KV) WriteLean(ctx context.Context, key string, val []byte, rev uint64, ttl time.Duration) (uint64, error) {
	h := nats.Header{jetstream.ExpectedLastSubjSeqHeader: []string{strconv.FormatUint(rev, 10)}}
	if ttl > 0 {
		h[jetstream.MsgTTLHeader] = []string{ttl.String()}
	}
	subj := "$KV." + k.c.names.Asset(k.name) + "." + key
	resp, err := k.c.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subj, Data: val, Header: h})
	if err != nil {
		return 0, fmt.Errorf("kv %s write %s: %w", k.name, key, err)
	}
	ack, err := parsePubAckExpect(resp.Data)
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

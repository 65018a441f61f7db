package jetstream

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// HeaderDLQConsumer names the consumer that gave up on a message (set by DeadLetterFor).
const HeaderDLQConsumer = "Jetbridge-Dlq-Consumer"

// DeadLetterFor is DeadLetter for a stream read by several durable consumers (interest
// retention, one consumer per exclusion group): the copy is de-duplicated per (stream, sequence,
// consumer), so every consumer that gives up on the same message stores its own copy, then the
// message is terminated for this consumer only.
func (j *Job) DeadLetterFor(ctx context.Context, consumer, reason string) error {
	h := Header{}
	for k, v := range j.Header {
		if k == nats.MsgIdHdr || k == "Nats-Expected-Last-Subject-Sequence" || k == "Nats-TTL" {
			continue
		}
		h[k] = append([]string(nil), v...)
	}
	h.Set(HeaderDLQReason, reason)
	h.Set(HeaderDLQStream, j.stream)
	h.Set(HeaderDLQSeq, strconv.FormatUint(j.Sequence, 10))
	h.Set(HeaderDLQSubject, j.Subject)
	h.Set(HeaderDLQDeliveries, strconv.FormatUint(j.Deliveries, 10))
	h.Set(HeaderDLQTime, time.Now().UTC().Format(time.RFC3339Nano))
	h.Set(HeaderDLQConsumer, consumer)
	subj := j.c.names.Subject("dlq", j.c.names.Unprefix(j.Subject))
	id := fmt.Sprintf("dlq:%s:%d:%s", j.stream, j.Sequence, consumer)
	if _, err := j.c.Publish(ctx, subj, j.Data, PubOpts{MsgID: id, Header: h}); err != nil {
		return fmt.Errorf("dead-letter %s #%d for %s: %w", j.Subject, j.Sequence, consumer, err)
	}
	if err := j.m.TermWithReason(reason); err != nil {
		return fmt.Errorf("term %s #%d: %w", j.Subject, j.Sequence, err)
	}
	return nil
}

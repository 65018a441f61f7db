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

// Dead-letter headers added to a message copied to the dead-letter stream.
const (
	HeaderDLQReason     = "Jetbridge-Dlq-Reason"
	HeaderDLQStream     = "Jetbridge-Dlq-Stream"
	HeaderDLQSeq        = "Jetbridge-Dlq-Seq"
	HeaderDLQSubject    = "Jetbridge-Dlq-Subject"
	HeaderDLQDeliveries = "Jetbridge-Dlq-Deliveries"
	HeaderDLQTime       = "Jetbridge-Dlq-Time"
)

// DeadLetterStream is the logical name of the stream that keeps dead-lettered messages, on
// subjects "dlq.<original subject without prefix>".
const DeadLetterStream = "DLQ"

// DeadLetterAssets declares the dead-letter stream (kept 30 days by default).
func DeadLetterAssets(n Names, maxAge time.Duration) Assets {
	if maxAge == 0 {
		maxAge = 30 * 24 * time.Hour
	}
	return Assets{Streams: []StreamSpec{{
		Name: DeadLetterStream, Description: "jetbridge dead letters: messages that failed for good, with the reason in headers",
		Subjects: []string{n.Subject("dlq", ">")}, MaxAge: maxAge, Duplicates: 10 * time.Minute,
	}}}
}

// Consumer is a durable pull consumer bound by name.
type Consumer struct {
	c      *Client
	cons   jetstream.Consumer
	stream string
	name   string
}

// Consumer binds to an existing (provisioned) durable consumer.
func (c *Client) Consumer(ctx context.Context, stream, durable string) (*Consumer, error) {
	cons, err := c.js.Consumer(ctx, c.names.Asset(stream), c.names.Asset(durable))
	if err != nil {
		return nil, fmt.Errorf("consumer %s/%s: %w", stream, durable, err)
	}
	return &Consumer{c: c, cons: cons, stream: stream, name: durable}, nil
}

// Job is one delivery of a stored message, leased to this pod until it is acked, retried,
// dead-lettered or its lease (AckWait) runs out.
type Job struct {
	Msg
	// Deliveries counts this delivery (1 on the first).
	Deliveries uint64
	// Pending is the number of messages still waiting for this consumer.
	Pending uint64

	c      *Client
	stream string
	m      jetstream.Msg
}

func (c *Consumer) wrap(m jetstream.Msg) *Job {
	j := &Job{Msg: Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data(), Reply: m.Reply()}, c: c.c, stream: c.stream, m: m}
	if md, err := m.Metadata(); err == nil {
		j.Sequence = md.Sequence.Stream
		j.Deliveries = md.NumDelivered
		j.Pending = md.NumPending
		j.Time = md.Timestamp
	}
	return j
}

// Fetch waits until at least one message is available (or wait passes, or ctx ends) and returns
// up to max jobs. An empty slice with a nil error means nothing arrived in time.
func (c *Consumer) Fetch(ctx context.Context, max int, wait time.Duration) ([]*Job, error) {
	if wait <= 0 {
		wait = 5 * time.Second
	}
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < wait {
			wait = left
		}
	}
	if wait < 10*time.Millisecond {
		wait = 10 * time.Millisecond
	}
	batch, err := c.cons.Fetch(max, jetstream.FetchMaxWait(wait))
	if err != nil {
		return nil, fmt.Errorf("fetch %s/%s: %w", c.stream, c.name, err)
	}
	var jobs []*Job
	for m := range batch.Messages() {
		jobs = append(jobs, c.wrap(m))
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		return jobs, fmt.Errorf("fetch %s/%s: %w", c.stream, c.name, err)
	}
	return jobs, nil
}

// FetchNoWait returns up to max jobs that are available right now.
func (c *Consumer) FetchNoWait(max int) ([]*Job, error) {
	batch, err := c.cons.FetchNoWait(max)
	if err != nil {
		return nil, fmt.Errorf("fetch %s/%s: %w", c.stream, c.name, err)
	}
	var jobs []*Job
	for m := range batch.Messages() {
		jobs = append(jobs, c.wrap(m))
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		return jobs, fmt.Errorf("fetch %s/%s: %w", c.stream, c.name, err)
	}
	return jobs, nil
}

// Consume keeps pull requests open and calls fn for each job on one goroutine (buffer is how many
// messages are pulled ahead; 0 means 1, i.e. no read-ahead). Stop it with the returned function,
// which waits until fn is no longer running; messages still in the read-ahead buffer are left
// leased until their AckWait runs out (see ConsumeDrain).
func (c *Consumer) Consume(fn func(*Job), buffer int) (stop func(), err error) {
	return c.consume(fn, buffer, false)
}

// ConsumeDrain is Consume whose stop function drains instead of discarding: messages already
// pulled into the client's buffer are still passed to fn before stop returns, so that fn can hand
// them back at once (Retry) instead of leaving them leased until AckWait runs out. When stop
// returns, the pull subscription is gone from the server (messages given back afterwards are not
// redelivered to it).
func (c *Consumer) ConsumeDrain(fn func(*Job), buffer int) (stop func(), err error) {
	return c.consume(fn, buffer, true)
}

func (c *Consumer) consume(fn func(*Job), buffer int, drain bool) (stop func(), err error) {
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
		if drain {
			cc.Drain()
		} else {
			cc.Stop()
		}
		<-cc.Closed()
	}, nil
}

// Pending is the number of messages not yet delivered plus those delivered and not acked.
func (c *Consumer) Pending(ctx context.Context) (waiting uint64, inFlight int, err error) {
	info, err := c.cons.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("consumer %s/%s info: %w", c.stream, c.name, err)
	}
	return info.NumPending, info.NumAckPending, nil
}

// Ack confirms the job is done and waits for the server to confirm the ack (on a work queue the
// message is deleted when this returns).
func (j *Job) Ack(ctx context.Context) error {
	if err := j.m.DoubleAck(ctx); err != nil {
		return fmt.Errorf("ack %s #%d: %w", j.Subject, j.Sequence, err)
	}
	return nil
}

// AckAsync acknowledges without waiting for the server's confirmation.
func (j *Job) AckAsync() error {
	if err := j.m.Ack(); err != nil {
		return fmt.Errorf("ack %s #%d: %w", j.Subject, j.Sequence, err)
	}
	return nil
}

// Retry gives the job back for redelivery after delay (0 = now). It counts as a delivery.
func (j *Job) Retry(delay time.Duration) error {
	var err error
	if delay > 0 {
		err = j.m.NakWithDelay(delay)
	} else {
		err = j.m.Nak()
	}
	if err != nil {
		return fmt.Errorf("retry %s #%d: %w", j.Subject, j.Sequence, err)
	}
	return nil
}

// Extend renews the lease by another AckWait.
func (j *Job) Extend() error {
	if err := j.m.InProgress(); err != nil {
		return fmt.Errorf("extend %s #%d: %w", j.Subject, j.Sequence, err)
	}
	return nil
}

// DeadLetter copies the message to the dead-letter stream with the reason, then terminates it
// (Term removes it from a work queue, so the copy comes first). Retried, it stores one copy.
func (j *Job) DeadLetter(ctx context.Context, reason string) error {
	if err := j.c.deadLetter(ctx, j.stream, &j.Msg, j.Deliveries, reason); err != nil {
		return err
	}
	if err := j.m.TermWithReason(reason); err != nil {
		return fmt.Errorf("term %s #%d: %w", j.Subject, j.Sequence, err)
	}
	return nil
}

func (c *Client) deadLetter(ctx context.Context, stream string, m *Msg, deliveries uint64, reason string) error {
	h := Header{}
	for k, v := range m.Header {
		if k == nats.MsgIdHdr || k == "Nats-Expected-Last-Subject-Sequence" || k == "Nats-TTL" {
			continue
		}
		h[k] = append([]string(nil), v...)
	}
	h.Set(HeaderDLQReason, reason)
	h.Set(HeaderDLQStream, stream)
	h.Set(HeaderDLQSeq, strconv.FormatUint(m.Sequence, 10))
	h.Set(HeaderDLQSubject, m.Subject)
	h.Set(HeaderDLQDeliveries, strconv.FormatUint(deliveries, 10))
	h.Set(HeaderDLQTime, time.Now().UTC().Format(time.RFC3339Nano))
	subj := c.names.Subject("dlq", c.names.Unprefix(m.Subject))
	id := fmt.Sprintf("dlq:%s:%d", stream, m.Sequence)
	if _, err := c.Publish(ctx, subj, m.Data, PubOpts{MsgID: id, Header: h}); err != nil {
		return fmt.Errorf("dead-letter %s #%d: %w", m.Subject, m.Sequence, err)
	}
	return nil
}

// advisoryStream is the logical name of the stream that keeps MAX_DELIVERIES advisories durable
// so that the dead-letter mover never misses one.
const advisoryStream = "ADVISORIES"

// DeadLetterMoverAssets declares the advisory stream and its consumer for the given work-queue
// streams (logical names).
func (c *Client) DeadLetterMoverAssets(streams []string) Assets {
	if len(streams) == 0 {
		return Assets{}
	}
	var subjects []string
	for _, s := range streams {
		subjects = append(subjects, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."+c.names.Asset(s)+".*")
	}
	return Assets{
		Streams: []StreamSpec{{Name: advisoryStream, Description: "max-deliveries advisories of jetbridge work queues (dead-letter pointers)",
			Subjects: subjects, Retention: WorkQueue, MaxAge: 7 * 24 * time.Hour}},
		Consumers: []ConsumerSpec{{Stream: advisoryStream, Durable: "DLQ_MOVER", AckWait: 30 * time.Second}},
	}
}

// RunDeadLetterMover moves messages that exceeded MaxDeliver to the dead-letter stream until ctx
// ends. Every pod may run it; each advisory is handled by one of them.
func (c *Client) RunDeadLetterMover(ctx context.Context) error {
	cons, err := c.Consumer(ctx, advisoryStream, "DLQ_MOVER")
	if err != nil {
		return err
	}
	stop, err := cons.Consume(func(j *Job) {
		var adv struct {
			Stream     string `json:"stream"`
			Consumer   string `json:"consumer"`
			StreamSeq  uint64 `json:"stream_seq"`
			Deliveries uint64 `json:"deliveries"`
		}
		if err := json.Unmarshal(j.Data, &adv); err != nil {
			c.log.Error("dead-letter mover: bad advisory", "err", err)
			_ = j.AckAsync()
			return
		}
		mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := c.moveToDLQ(mctx, adv.Stream, adv.StreamSeq, adv.Deliveries); err != nil {
			c.log.Warn("dead-letter mover", "stream", adv.Stream, "seq", adv.StreamSeq, "err", err)
			_ = j.Retry(time.Second)
			return
		}
		_ = j.Ack(mctx)
	}, 16)
	if err != nil {
		return err
	}
	<-ctx.Done()
	stop()
	return nil
}

func (c *Client) moveToDLQ(ctx context.Context, realStream string, seq, deliveries uint64) error {
	s, err := c.js.Stream(ctx, realStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", realStream, err)
	}
	rm, err := s.GetMsg(ctx, seq)
	if err != nil {
		if isNotFound(err) {
			return nil // already moved or acked meanwhile
		}
		return fmt.Errorf("get %s #%d: %w", realStream, seq, err)
	}
	m := &Msg{Subject: rm.Subject, Header: rm.Header, Data: rm.Data, Sequence: rm.Sequence, Time: rm.Time}
	logical := realStream
	if p := c.names.Asset(""); p != "" {
		logical = realStream[min(len(p), len(realStream)):]
	}
	if err := c.deadLetter(ctx, logical, m, deliveries, "max deliveries exceeded"); err != nil {
		return err
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s #%d: %w", realStream, seq, err)
	}
	return nil
}

func isNotFound(err error) bool {
	return errors.Is(err, jetstream.ErrMsgNotFound) || errors.Is(err, jetstream.ErrKeyNotFound) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound)
}

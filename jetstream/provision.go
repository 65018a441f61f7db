package jetstream

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Retention says when a stream forgets a message.
type Retention int

const (
	// Limits keeps messages until a limit (age, count, bytes) removes them: logs, results, events.
	Limits Retention = iota
	// WorkQueue removes a message once it is acknowledged: queues of jobs.
	WorkQueue
	// Interest keeps a message until every consumer has acknowledged it.
	Interest
)

// StreamSpec declares a stream. Name is logical; Subjects are full subjects (use Client.Subject or
// Names.Subject).
type StreamSpec struct {
	Name        string
	Description string
	Subjects    []string
	Retention   Retention
	MaxAge      time.Duration
	MaxMsgs     int64
	MaxBytes    int64
	MaxMsgSize  int32
	// MaxMsgsPerSubject keeps only the last N per subject (0 = unlimited).
	MaxMsgsPerSubject int64
	// Duplicates is the de-duplication window (default 2 minutes).
	Duplicates time.Duration
	// Memory keeps the stream in memory instead of on disk.
	Memory bool
	// DiscardNew refuses new messages when full instead of dropping old ones.
	DiscardNew bool
	// AllowMsgTTL enables per-message TTL (Nats-TTL).
	AllowMsgTTL bool
	// AllowSchedules enables message schedules (Nats-Schedule).
	AllowSchedules bool
	// AllowDirect enables direct gets.
	AllowDirect bool
}

// ConsumerSpec declares a durable pull consumer. Stream and Durable are logical names.
type ConsumerSpec struct {
	Stream         string
	Durable        string
	Description    string
	FilterSubjects []string
	// AckWait is the lease: an unacknowledged message is redelivered after it (default 30 s).
	AckWait time.Duration
	// MaxDeliver caps deliveries (0 = unlimited).
	MaxDeliver int
	// BackOff, when set, replaces AckWait per delivery attempt (len must be < MaxDeliver).
	BackOff []time.Duration
	// MaxAckPending caps the messages in flight (0 = server default 1000).
	MaxAckPending int
	// DeliverNew starts with messages stored after creation (not allowed on work queues).
	DeliverNew bool
	// InactiveThreshold deletes the consumer after that much inactivity (0 = never).
	InactiveThreshold time.Duration
	// MaxWaiting caps outstanding pull requests (0 = server default).
	MaxWaiting int
}

// BucketSpec declares a KV bucket. Name is logical.
type BucketSpec struct {
	Name         string
	Description  string
	History      uint8
	TTL          time.Duration
	MaxValueSize int32
	MaxBytes     int64
	// LimitMarkerTTL enables per-key TTL (KeyTTL) and delete markers for expirations.
	LimitMarkerTTL time.Duration
	Memory         bool
}

// Assets is what an adapter declares; the pod provisions it at start.
type Assets struct {
	Streams   []StreamSpec
	Consumers []ConsumerSpec
	Buckets   []BucketSpec
}

// Merge appends other's assets to a.
func (a *Assets) Merge(other Assets) {
	a.Streams = append(a.Streams, other.Streams...)
	a.Consumers = append(a.Consumers, other.Consumers...)
	a.Buckets = append(a.Buckets, other.Buckets...)
}

// AssetState is one provisioned asset as /api/v1/status shows it.
type AssetState struct {
	Kind  string `json:"kind"` // stream, consumer, kv
	Name  string `json:"name"` // real name
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

func (c *Client) streamConfig(s StreamSpec) jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:              c.names.Asset(s.Name),
		Description:       s.Description,
		Subjects:          s.Subjects,
		MaxAge:            s.MaxAge,
		MaxMsgs:           s.MaxMsgs,
		MaxBytes:          s.MaxBytes,
		MaxMsgSize:        s.MaxMsgSize,
		MaxMsgsPerSubject: s.MaxMsgsPerSubject,
		Duplicates:        s.Duplicates,
		Replicas:          c.replicas,
		Storage:           jetstream.FileStorage,
		AllowMsgTTL:       s.AllowMsgTTL,
		AllowMsgSchedules: s.AllowSchedules,
		AllowDirect:       s.AllowDirect,
	}
	if cfg.MaxMsgs == 0 {
		cfg.MaxMsgs = -1
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	if cfg.MaxMsgSize == 0 {
		cfg.MaxMsgSize = -1
	}
	if cfg.MaxMsgsPerSubject == 0 {
		cfg.MaxMsgsPerSubject = -1
	}
	if s.Memory {
		cfg.Storage = jetstream.MemoryStorage
	}
	if s.DiscardNew {
		cfg.Discard = jetstream.DiscardNew
	}
	switch s.Retention {
	case WorkQueue:
		cfg.Retention = jetstream.WorkQueuePolicy
	case Interest:
		cfg.Retention = jetstream.InterestPolicy
	default:
		cfg.Retention = jetstream.LimitsPolicy
	}
	return cfg
}

func (c *Client) consumerConfig(s ConsumerSpec) jetstream.ConsumerConfig {
	cfg := jetstream.ConsumerConfig{
		Durable:           c.names.Asset(s.Durable),
		Description:       s.Description,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           s.AckWait,
		MaxDeliver:        s.MaxDeliver,
		BackOff:           s.BackOff,
		MaxAckPending:     s.MaxAckPending,
		InactiveThreshold: s.InactiveThreshold,
		MaxWaiting:        s.MaxWaiting,
	}
	if cfg.AckWait == 0 && len(cfg.BackOff) == 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.MaxDeliver == 0 {
		cfg.MaxDeliver = -1
	}
	if s.DeliverNew {
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	switch len(s.FilterSubjects) {
	case 0:
	case 1:
		cfg.FilterSubject = s.FilterSubjects[0]
	default:
		cfg.FilterSubjects = s.FilterSubjects
	}
	return cfg
}

func (c *Client) bucketConfig(b BucketSpec) jetstream.KeyValueConfig {
	cfg := jetstream.KeyValueConfig{
		Bucket:         c.names.Asset(b.Name),
		Description:    b.Description,
		History:        max(b.History, 1),
		TTL:            b.TTL,
		MaxValueSize:   b.MaxValueSize,
		MaxBytes:       b.MaxBytes,
		Replicas:       c.replicas,
		Storage:        jetstream.FileStorage,
		LimitMarkerTTL: b.LimitMarkerTTL,
	}
	if cfg.MaxValueSize == 0 {
		cfg.MaxValueSize = -1
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	if b.Memory {
		cfg.Storage = jetstream.MemoryStorage
	}
	return cfg
}

// retryable reports errors that a concurrent provisioner (another pod) or a cluster still electing
// leaders can cause; the operation is simply tried again.
// jsErrMsgTTLCannotBeDisabled is the server's error code for an update that would switch a
// stream's message TTLs off.
const jsErrMsgTTLCannotBeDisabled = 10052

// errBucketChanged asks withRetry for another attempt: the bucket changed under a provisioning.
var errBucketChanged = errors.New("bucket changed while it was provisioned")

func retryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, errBucketChanged) {
		return true
	}
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) || errors.Is(err, jetstream.ErrConsumerExists) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "already in use") || strings.Contains(msg, "no responders") ||
		strings.Contains(msg, "timeout") || strings.Contains(msg, "insufficient resources") ||
		strings.Contains(msg, "no suitable peers") || strings.Contains(msg, "temporarily unavailable")
}

// withRetry runs op until it succeeds, fails with a non-retryable error, or ctx ends.
func withRetry(ctx context.Context, op func(context.Context) error) error {
	delay := 50 * time.Millisecond
	for {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := op(octx)
		cancel()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
	}
}

// Provision creates or updates every asset. It is idempotent and safe when several pods run it at
// once. A conflicting existing configuration (e.g. another retention policy) fails with the
// asset's name. Streams come first, then consumers, then buckets.
func (c *Client) Provision(ctx context.Context, a Assets) ([]AssetState, error) {
	var states []AssetState
	var errs []error
	record := func(kind, name string, err error) {
		st := AssetState{Kind: kind, Name: name, State: "ready"}
		if err != nil {
			st.State, st.Error = "failed", err.Error()
			errs = append(errs, fmt.Errorf("provision %s %s: %w", kind, name, err))
		}
		states = append(states, st)
	}
	for _, s := range a.Streams {
		cfg := c.streamConfig(s)
		err := withRetry(ctx, func(ctx context.Context) error {
			_, err := c.js.CreateOrUpdateStream(ctx, cfg)
			return err
		})
		record("stream", cfg.Name, err)
	}
	for _, s := range a.Consumers {
		cfg := c.consumerConfig(s)
		name := c.names.Asset(s.Stream) + "/" + cfg.Durable
		err := withRetry(ctx, func(ctx context.Context) error {
			_, err := c.js.CreateOrUpdateConsumer(ctx, c.names.Asset(s.Stream), cfg)
			return err
		})
		record("consumer", name, err)
	}
	for _, b := range a.Buckets {
		cfg := c.bucketConfig(b)
		ttlReads := 0
		err := withRetry(ctx, func(ctx context.Context) error {
			if b.LimitMarkerTTL == 0 {
				// per-key TTLs cannot be switched off once a bucket allows them (a pod with
				// another setting enabled them): keep the bucket's
				if kv, err := c.js.KeyValue(ctx, cfg.Bucket); err == nil {
					if st, err := kv.Status(ctx); err == nil {
						cfg.LimitMarkerTTL = st.LimitMarkerTTL()
					}
				}
			}
			kv, err := c.js.CreateOrUpdateKeyValue(ctx, cfg)
			var apiErr *jetstream.APIError
			if b.LimitMarkerTTL == 0 && errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrMsgTTLCannotBeDisabled && ttlReads < 3 {
				// another pod switched them on between the read and the update: read again
				ttlReads++
				return errBucketChanged
			}
			if err == nil {
				c.kvMu.Lock()
				c.kvs[b.Name] = kv
				c.kvMu.Unlock()
			}
			return err
		})
		record("kv", cfg.Bucket, err)
	}
	sort.SliceStable(states, func(i, j int) bool { return states[i].Kind < states[j].Kind })
	return states, errors.Join(errs...)
}

// EnsureConsumer creates or updates one durable consumer at run time (e.g. one per exclusion
// group discovered while running).
func (c *Client) EnsureConsumer(ctx context.Context, s ConsumerSpec) (*Consumer, error) {
	cfg := c.consumerConfig(s)
	var cons jetstream.Consumer
	err := withRetry(ctx, func(ctx context.Context) error {
		var err error
		cons, err = c.js.CreateOrUpdateConsumer(ctx, c.names.Asset(s.Stream), cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s/%s: %w", s.Stream, s.Durable, err)
	}
	return &Consumer{c: c, cons: cons, stream: s.Stream, name: s.Durable}, nil
}

// DeleteConsumer removes a durable consumer; a missing one is not an error.
func (c *Client) DeleteConsumer(ctx context.Context, stream, durable string) error {
	err := c.js.DeleteConsumer(ctx, c.names.Asset(stream), c.names.Asset(durable))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s/%s: %w", stream, durable, err)
	}
	return nil
}

// StreamInfo is the part of a stream's state the admin API shows.
type StreamInfo struct {
	Name      string    `json:"name"`
	Subjects  []string  `json:"subjects"`
	Messages  uint64    `json:"messages"`
	Bytes     uint64    `json:"bytes"`
	FirstSeq  uint64    `json:"first_seq"`
	LastSeq   uint64    `json:"last_seq"`
	Consumers int       `json:"consumers"`
	Created   time.Time `json:"created"`
}

// StreamInfo reads a stream's state; subjectFilter, when set, also counts messages per subject.
func (c *Client) StreamInfo(ctx context.Context, stream string) (StreamInfo, error) {
	s, err := c.stream(ctx, stream)
	if err != nil {
		return StreamInfo{}, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		c.forget(stream, err)
		return StreamInfo{}, fmt.Errorf("stream %s info: %w", stream, err)
	}
	return StreamInfo{Name: info.Config.Name, Subjects: info.Config.Subjects, Messages: info.State.Msgs,
		Bytes: info.State.Bytes, FirstSeq: info.State.FirstSeq, LastSeq: info.State.LastSeq,
		Consumers: info.State.Consumers, Created: info.Created}, nil
}

// SubjectCounts returns the number of stored messages per subject matching filter.
func (c *Client) SubjectCounts(ctx context.Context, stream, filter string) (map[string]uint64, error) {
	s, err := c.stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		c.forget(stream, err)
		return nil, fmt.Errorf("stream %s subjects %s: %w", stream, filter, err)
	}
	return info.State.Subjects, nil
}

// ListStreams returns the real names of all streams in the account.
func (c *Client) ListStreams(ctx context.Context) ([]string, error) {
	var names []string
	l := c.js.StreamNames(ctx)
	for n := range l.Name() {
		names = append(names, n)
	}
	if err := l.Err(); err != nil {
		return names, fmt.Errorf("list streams: %w", err)
	}
	sort.Strings(names)
	return names, nil
}

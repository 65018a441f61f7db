package jetstream

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PubFuture is the pending acknowledgement of a message sent with PublishAsync.
type PubFuture struct {
	subject string
	create  string // the key, when the message is a KV create (a failed condition is ErrExists)
	f       jetstream.PubAckFuture
}

// PublishAsync sends a message to be stored and returns without waiting for JetStream's
// acknowledgement: Wait gives it. Messages published by one client reach the server in the order
// of the calls, so several writes can be in flight at once and still be sent in a chosen order
// (the caller acknowledges its own client only after every Wait succeeded).
func (c *Client) PublishAsync(subject string, data []byte, o PubOpts) (*PubFuture, error) {
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
	f, err := c.js.PublishMsgAsync(msg, opts...)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", subject, err)
	}
	return &PubFuture{subject: subject, f: f}, nil
}

// Wait returns the acknowledgement (ErrConflict when an expected-last-sequence condition failed,
// ErrExists for CreateAsync of a key that exists).
func (f *PubFuture) Wait(ctx context.Context) (PubAck, error) {
	select {
	case ack := <-f.f.Ok():
		return PubAck{Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
	case err := <-f.f.Err():
		if isWrongLastSeq(err) {
			if f.create != "" {
				return PubAck{}, fmt.Errorf("kv create %s: %w", f.create, ErrExists)
			}
			return PubAck{}, fmt.Errorf("publish %s: %w", f.subject, ErrConflict)
		}
		return PubAck{}, fmt.Errorf("publish %s: %w", f.subject, err)
	case <-ctx.Done():
		return PubAck{}, fmt.Errorf("publish %s: %w", f.subject, ctx.Err())
	}
}

// CreateAsync is Create without waiting (see PublishAsync): the key is stored only if it has
// never had a value; Wait answers ErrExists otherwise (also for a key whose value was deleted,
// which Create would accept) and the acknowledged sequence is the key's revision. No TTL.
func (k *KV) CreateAsync(key string, val []byte) (*PubFuture, error) {
	f, err := k.c.PublishAsync("$KV."+k.c.names.Asset(k.name)+"."+key, val, PubOpts{ExpectSubjectEmpty: true})
	if err != nil {
		return nil, fmt.Errorf("kv %s create %s: %w", k.name, key, err)
	}
	f.create = key
	return f, nil
}

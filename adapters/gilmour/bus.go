package gilmour

// bus.go: how Gilmour maps onto NATS and JetStream — subjects, the signal stream, slot
// consumers, requests and error packets.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// Logical asset names.
const (
	// SlotStream keeps signals (gilmour.slot.>) until every slot consumer has taken them.
	SlotStream = "GILMOUR_SLOTS"
	// Bucket holds the node registry ("node.<id>") and health-check leases ("lease.<id>").
	Bucket = "GILMOUR"
)

// Subject roots (before the pod's prefix).
const (
	requestRoot = "gilmour.request"
	slotRoot    = "gilmour.slot"
	errorsSubj  = "gilmour.errors"
)

type bus struct {
	js *jetstream.Client
}

func (b bus) requestSubject(topic string) string { return b.js.Subject(requestRoot, topic) }
func (b bus) slotSubject(topic string) string    { return b.js.Subject(slotRoot, topic) }
func (b bus) errorsSubject() string              { return b.js.Subject(errorsSubj) }

// topicOf strips the prefix and the "gilmour.request." / "gilmour.slot." root from a subject.
func (b bus) topicOf(subject string) string {
	s := b.js.Names().Unprefix(subject)
	for _, root := range []string{requestRoot + ".", slotRoot + "."} {
		if strings.HasPrefix(s, root) {
			return s[len(root):]
		}
	}
	return s
}

// slotKey identifies one durable consumer of the signal stream: one per (pattern, group), or
// one per (node, pattern) for a slot without a group.
type slotKey struct {
	Pattern string
	Group   string
	Node    string // set only when Group is empty
}

func slotKeyOf(nodeID string, s Sub) slotKey {
	if s.Group != "" {
		return slotKey{Pattern: s.Topic, Group: s.Group}
	}
	return slotKey{Pattern: s.Topic, Node: nodeID}
}

// durable is the logical consumer name (hashed: patterns and groups hold any characters).
func (k slotKey) durable() string {
	h := sha256.Sum256([]byte(k.Pattern + "\x00" + k.Group + "\x00" + k.Node))
	if k.Group != "" {
		return "GILMOUR_G_" + hex.EncodeToString(h[:12])
	}
	return "GILMOUR_N_" + hex.EncodeToString(h[:12])
}

func (b bus) consumerSpec(k slotKey, ackWait time.Duration) jetstream.ConsumerSpec {
	filter, _ := GlobFilter(k.Pattern)
	desc := fmt.Sprintf("gilmour slot %q group %q", k.Pattern, k.Group)
	if k.Node != "" {
		desc = fmt.Sprintf("gilmour slot %q of node %s", k.Pattern, k.Node)
	}
	return jetstream.ConsumerSpec{
		Stream: SlotStream, Durable: k.durable(), Description: desc,
		FilterSubjects: []string{b.slotSubject(filter)},
		AckWait:        ackWait,
		DeliverNew:     true,
		MaxAckPending:  1024,
	}
}

// request sends data to topic over core request-reply and returns the first reply.
func (b bus) request(ctx context.Context, topic string, data json.RawMessage, timeout time.Duration) Message {
	env := Envelope{Data: data, Code: 200, Sender: NewID()}
	rctx := ctx
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > timeout {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	rep, err := b.js.Request(rctx, b.requestSubject(topic), EncodeEnvelope(env), nil)
	switch {
	case err == nil:
		e := DecodeEnvelope(rep.Data)
		return Message{Data: e.Data, Code: e.Code}
	case errors.Is(err, jetstream.ErrNoResponders):
		return Message{Data: StringData("No active listeners for: " + topic), Code: 404}
	case rctx.Err() != nil:
		return Message{Data: StringData("Execution timed out"), Code: 499}
	default:
		return Message{Data: StringData(err.Error()), Code: 500}
	}
}

// publishSignal stores a signal and waits for JetStream's ack.
func (b bus) publishSignal(ctx context.Context, topic string, data json.RawMessage) error {
	env := Envelope{Data: data, Code: 200, Sender: NewID()}
	if _, err := b.js.Publish(ctx, b.slotSubject(topic), EncodeEnvelope(env), jetstream.PubOpts{}); err != nil {
		return fmt.Errorf("signal %s: %w", topic, err)
	}
	return nil
}

// publishError broadcasts an error packet on gilmour.errors (core NATS, like the Go library).
func (b bus) publishError(topic, sender string, code int, request, user json.RawMessage, trace string) {
	p := ErrorPacket{Code: code, Sender: sender, Topic: topic, RequestData: request, UserData: user,
		Backtrace: trace, Timestamp: time.Now().UTC().Format(time.RFC3339), MultiProcess: false}
	if len(p.RequestData) == 0 {
		p.RequestData = jsonNull
	}
	if len(p.UserData) == 0 {
		p.UserData = jsonNull
	}
	data, err := json.Marshal(p)
	if err != nil {
		return
	}
	_ = b.js.PublishCore(b.errorsSubject(), data, nil)
}

// assets are the stream and bucket of the adapter.
func assets(n jetstream.Names, maxAge time.Duration, maxMsg int32) jetstream.Assets {
	return jetstream.Assets{
		Streams: []jetstream.StreamSpec{{
			Name: SlotStream, Description: "gilmour signals, kept until every slot consumer (exclusion group or node) took them",
			Subjects: []string{n.Subject(slotRoot, ">")}, Retention: jetstream.Interest, MaxAge: maxAge,
			MaxMsgSize: maxMsg,
		}},
		Buckets: []jetstream.BucketSpec{{Name: Bucket, Description: "gilmour node registry and health-check leases", History: 1}},
	}
}

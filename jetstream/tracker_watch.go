package jetstream

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// watchBatch is how many writes one look of WatchBatched takes at most.
const watchBatch = 512

// WatchBatched follows the writes to a bucket's keys matching pattern, like Watch, but collected:
// instead of a push consumer sending each write on its own as it is stored (a server wake-up, a
// network write and several hand-overs in the client per write), an ephemeral pull consumer is
// asked every `every` for everything stored since the last look, so that a busy bucket costs a
// few exchanges per interval. fn gets the entries in revision order on the calling goroutine;
// with initial set, the keys' current values come first and fn(Entry{}) (empty Key) marks their
// end. Updates reach fn up to `every` after they are stored. A lost answer or a consumer that
// went away is noticed (consumer sequence gap, error status, timeout) and the watch goes on from
// the last revision it delivered. It returns nil when ctx ends, an error when the consumer
// cannot be made.
func (k *KV) WatchBatched(ctx context.Context, pattern string, initial bool, every time.Duration, fn func(Entry)) error {
	c := k.c
	stream := "KV_" + c.names.Asset(k.name)
	prefix := "$KV." + c.names.Asset(k.name) + "."
	inbox := c.nc.NewInbox()
	ch := make(chan *nats.Msg, 2*watchBatch)
	sub, err := c.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return fmt.Errorf("kv %s watch: %w", k.name, err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	var (
		name     string // the consumer
		api      string
		lastSeq  uint64 // stream sequence of the last entry delivered
		lastCons uint64 // its consumer sequence
		marked   = !initial
	)
	drop := func() {
		if name == "" {
			return
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = c.js.DeleteConsumer(dctx, stream, name)
		cancel()
		name = ""
	}
	defer drop()
	create := func() error {
		drop()
		cfg := jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy, FilterSubject: prefix + pattern,
			InactiveThreshold: max(time.Minute, 20*every), MemoryStorage: true}
		switch {
		case lastSeq > 0:
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, lastSeq+1
		case initial:
			cfg.DeliverPolicy = jetstream.DeliverLastPerSubjectPolicy
		default:
			cfg.DeliverPolicy = jetstream.DeliverNewPolicy
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		cons, err := c.js.CreateConsumer(cctx, stream, cfg)
		if err != nil {
			return fmt.Errorf("kv %s watch: %w", k.name, err)
		}
		info := cons.CachedInfo()
		name, lastCons = info.Name, 0
		api = "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + name
		if !marked && info.NumPending == 0 {
			marked = true
			fn(Entry{})
		}
		return nil
	}
	if err := create(); err != nil {
		return err
	}
	req := []byte(fmt.Sprintf(`{"batch":%d,"no_wait":true}`, watchBatch))
	pause := time.NewTimer(time.Hour)
	pause.Stop()
	defer pause.Stop()
	for ctx.Err() == nil {
		n, ok := k.look(ctx, api, inbox, req, ch, prefix, &lastSeq, &lastCons, &marked, fn)
		if !ok {
			// start again after the last delivered revision (a second later when it fails)
			for ctx.Err() == nil {
				if err := create(); err == nil {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		if n < watchBatch {
			pause.Reset(every)
			select {
			case <-ctx.Done():
			case <-pause.C:
			}
		}
	}
	return nil
}

// look asks for the writes stored since the last look and hands them to fn; it returns how many
// came and false when the consumer must be made again.
func (k *KV) look(ctx context.Context, api, inbox string, req []byte, ch chan *nats.Msg, prefix string,
	lastSeq, lastCons *uint64, marked *bool, fn func(Entry)) (int, bool) {
	// drain what a look given up on may have left
	for len(ch) > 0 {
		<-ch
	}
	if err := k.c.nc.PublishRequest(api, inbox, req); err != nil {
		return 0, false
	}
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	n := 0
	for n < watchBatch {
		var m *nats.Msg
		select {
		case <-ctx.Done():
			return n, true
		case <-timeout.C:
			return n, false
		case m = <-ch:
		}
		if len(m.Data) == 0 && m.Header.Get("Status") != "" {
			switch m.Header.Get("Status") {
			case "100":
				continue // heartbeat
			case "404", "408":
				return n, true // nothing more for now
			}
			return n, false // the consumer is gone, or another refusal
		}
		md, err := m.Metadata()
		if err != nil || md.Sequence.Consumer != *lastCons+1 || !strings.HasPrefix(m.Subject, prefix) {
			return n, false // a gap: a lost answer
		}
		*lastCons, *lastSeq = md.Sequence.Consumer, md.Sequence.Stream
		// a delete or purge, or the marker the server leaves when a value's TTL ran out
		op := m.Header.Get("KV-Operation")
		deleted := op == "DEL" || op == "PURGE" || m.Header.Get(jetstream.MarkerReasonHeader) != ""
		fn(Entry{Key: m.Subject[len(prefix):], Value: m.Data, Revision: md.Sequence.Stream, Created: md.Timestamp,
			Deleted: deleted})
		n++
		if !*marked && md.NumPending == 0 {
			*marked = true
			fn(Entry{})
		}
	}
	return n, true
}

package gilmour

// session.go: what this pod does on behalf of the registered nodes. Every pod watches the node
// registry and, for every node that is ok, holds its service subscriptions (queue group = the
// exclusion group) and pulls its slot consumers; a node that is unavailable, dirty or deleted
// loses them at once (signals wait in JetStream).

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// svcKey identifies one service subscription this pod holds for a node.
type svcKey struct {
	Node    string
	Topic   string
	Group   string
	Path    string
	Timeout int
}

// member is one node that may receive a slot consumer's signals.
type member struct {
	node nodeRecord
	slot Sub
}

// watch keeps this pod's view of the registry (and so its subscriptions) in line with KV until
// the adapter stops; a watcher that ends early is started again and the view rebuilt from scratch.
func (a *Adapter) watch(updates <-chan jetstream.Entry) {
	delay := 100 * time.Millisecond
	for {
		a.follow(updates)
		if a.ctx.Err() != nil {
			return
		}
		a.log.Warn("gilmour: registry watch ended, restarting")
		for {
			select {
			case <-a.ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(delay*2, 5*time.Second)
			kv := a.reg.kv
			var err error
			if updates, err = kv.Watch(a.ctx, "node.>", true); err == nil {
				break
			}
			a.log.Warn("gilmour: registry watch", "err", err)
		}
	}
}

// follow applies one watcher's updates: the initial values replace the view at once (keys
// deleted meanwhile disappear), then every change is applied as it comes.
func (a *Adapter) follow(updates <-chan jetstream.Entry) {
	fresh := map[string]nodeRecord{}
	initial := true
	for e := range updates {
		if e.Key == "" { // end of initial values
			a.mu.Lock()
			a.nodes, initial = fresh, false
			a.mu.Unlock()
			a.reconcile()
			continue
		}
		id := strings.TrimPrefix(e.Key, "node.")
		r, err := decodeRecord(e.Value)
		if !e.Deleted && err != nil {
			a.log.Warn("gilmour: bad node record", "node", id, "err", err)
			continue
		}
		if initial {
			if !e.Deleted {
				fresh[id] = r
			}
			continue
		}
		a.mu.Lock()
		if e.Deleted {
			delete(a.nodes, id)
		} else {
			a.nodes[id] = r
		}
		a.mu.Unlock()
		a.reconcile()
	}
}

// snapshot returns the nodes this pod knows, sorted by id.
func (a *Adapter) snapshot() []nodeRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]nodeRecord, 0, len(a.nodes))
	for _, r := range a.nodes {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// reconcile brings this pod's subscriptions and pullers in line with the registry.
func (a *Adapter) reconcile() {
	a.recMu.Lock() // one at a time, so that an older view never overwrites a newer one
	defer a.recMu.Unlock()
	nodes := a.snapshot()
	wantSvc := map[svcKey]struct {
		node nodeRecord
		sub  Sub
	}{}
	wantSlots := map[slotKey][]member{}
	for _, n := range nodes {
		if n.Status != StatusOK {
			continue
		}
		for _, s := range n.Services {
			wantSvc[svcKey{Node: n.ID, Topic: s.Topic, Group: s.Group, Path: s.Path, Timeout: s.Timeout}] = struct {
				node nodeRecord
				sub  Sub
			}{n, s}
		}
		for _, s := range n.Slots {
			k := slotKeyOf(n.ID, s)
			wantSlots[k] = append(wantSlots[k], member{node: n, slot: s})
		}
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return
	}
	for k, sub := range a.services {
		if _, ok := wantSvc[k]; !ok {
			// Unsubscribe only stops new requests; calls already running finish on their own.
			if err := sub.Unsubscribe(); err != nil {
				a.log.Warn("gilmour: unsubscribe", "topic", k.Topic, "err", err)
			}
			delete(a.services, k)
		}
	}
	for k, w := range wantSvc {
		if _, ok := a.services[k]; ok {
			continue
		}
		s, ep := w.sub, parsedEndpoint(w.node, w.sub.Path)
		sub, err := a.env.JS.Subscribe(a.bus.requestSubject(s.Topic), s.Group, func(m *jetstream.Msg) {
			if !a.track() { // shutting down: answer on the subscription's goroutine
				a.serve(ep, s, m)
				return
			}
			a.dispatch(func() { defer a.work.Done(); a.serve(ep, s, m) })
		})
		if err != nil {
			a.log.Warn("gilmour: subscribe", "topic", s.Topic, "err", err)
			continue
		}
		a.services[k] = sub
	}
	for k, p := range a.pullers {
		if _, ok := wantSlots[k]; !ok {
			delete(a.pullers, k)
			p.cancel() // no new delivery starts from now on
			a.wg.Add(1)
			go func() { defer a.wg.Done(); p.stop() }()
		}
	}
	for k, ms := range wantSlots {
		if p, ok := a.pullers[k]; ok {
			p.setMembers(ms)
			continue
		}
		p := newPuller(a, k, ms)
		a.pullers[k] = p
		p.start()
	}
}

// serve answers one request on behalf of a node: POST path {topic, sender, data, timeout} to ep.
func (a *Adapter) serve(ep endpoint, s Sub, m *jetstream.Msg) {
	start := time.Now()
	env := DecodeEnvelope(m.Data)
	topic := a.bus.topicOf(m.Subject)
	timeout := a.cfg.HandlerTimeout
	if s.Timeout > 0 {
		timeout = time.Duration(s.Timeout) * time.Second
	}
	ctx, cancel := context.WithTimeout(a.ctx, timeout)
	res := a.node.call(ctx, ep, HandlerCall{Topic: topic, Sender: env.Sender, Data: env.Data, Timeout: int(timeout / time.Second)})
	cancel()
	if a.ctx.Err() != nil && res.Code != 200 {
		return // pod stopping: the requester times out rather than seeing our cancellation
	}
	reply := Envelope{Data: res.Data, Code: res.Code, Sender: "gilmour.response." + env.Sender}
	if err := m.Respond(EncodeEnvelope(reply), nil); err != nil {
		a.log.Debug("gilmour: respond", "topic", topic, "err", err)
	}
	a.met.handled(topic, res.Code, time.Since(start))
	if res.Code >= 300 {
		a.bus.publishError(topic, env.Sender, res.Code, env.Data, res.Data, "")
	}
}

// maxIdleWorkers bounds the workers kept waiting for the next service call.
const maxIdleWorkers = 256

// dispatch runs fn (a tracked call) on an idle worker, or on a new one. A worker stays for the
// next call (no goroutine start, its stack already grown), at most maxIdleWorkers of them idle at
// once; they end with the adapter's context.
func (a *Adapter) dispatch(fn func()) {
	select {
	case a.jobs <- fn:
	default:
		a.workers.Add(1) // fn is tracked in a.work: Stop waits for a.workers only after a.work
		go a.worker(fn)
	}
}

func (a *Adapter) worker(fn func()) {
	defer a.workers.Done()
	for {
		fn()
		if a.idle.Add(1) > maxIdleWorkers {
			a.idle.Add(-1)
			return
		}
		select {
		case fn = <-a.jobs:
			a.idle.Add(-1)
		case <-a.ctx.Done():
			a.idle.Add(-1)
			return
		}
	}
}

// track counts one more running call or delivery in a.work; false once the adapter waits for
// them (Add must not race Wait).
func (a *Adapter) track() bool {
	a.workMu.Lock()
	defer a.workMu.Unlock()
	if a.workClosed {
		return false
	}
	a.work.Add(1)
	return true
}

// waitWork stops tracking and waits for the tracked calls until ctx ends.
func (a *Adapter) waitWork(ctx context.Context) error {
	a.workMu.Lock()
	a.workClosed = true
	a.workMu.Unlock()
	done := make(chan struct{})
	go func() { a.work.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

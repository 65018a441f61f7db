package gilmour

// slots.go: signal delivery. One puller per slot consumer and pod; it runs only while at least
// one member node is ok, so signals for unavailable nodes wait in JetStream. A delivery holds the
// message's lease (extended while the node works); failures are retried with a doubling delay
// and dead-lettered after --gilmour-slot-max-deliver attempts.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

type puller struct {
	a     *Adapter
	key   slotKey
	exact bool
	sem   chan struct{}

	mu      sync.Mutex
	members []member
	rr      int

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newPuller(a *Adapter, k slotKey, ms []member) *puller {
	_, exact := GlobFilter(k.Pattern)
	ctx, cancel := context.WithCancel(a.ctx)
	return &puller{a: a, key: k, exact: exact, members: ms, sem: make(chan struct{}, a.cfg.SlotInflight),
		ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

func (p *puller) setMembers(ms []member) {
	p.mu.Lock()
	p.members = ms
	p.mu.Unlock()
}

func (p *puller) pick() (member, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.members) == 0 {
		return member{}, false
	}
	p.rr++
	return p.members[p.rr%len(p.members)], true
}

func (p *puller) start() {
	p.a.wg.Add(1)
	go func() {
		defer p.a.wg.Done()
		defer close(p.done)
		p.run()
	}()
}

// stop ends pulling; deliveries already running finish (they belong to the adapter).
func (p *puller) stop() {
	p.cancel()
	<-p.done
}

func (p *puller) run() {
	spec := p.a.bus.consumerSpec(p.key, p.a.cfg.SlotAckWait)
	delay := 100 * time.Millisecond
	for {
		cons, err := p.a.env.JS.EnsureConsumer(p.ctx, spec)
		if err == nil {
			stop, err := cons.Consume(p.handle, p.a.cfg.SlotInflight)
			if err == nil {
				<-p.ctx.Done()
				stop()
				return
			}
		}
		if p.ctx.Err() != nil {
			return
		}
		p.a.log.Warn("gilmour: slot consumer", "pattern", p.key.Pattern, "group", p.key.Group, "err", err)
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

func (p *puller) handle(j *jetstream.Job) {
	a := p.a
	if p.ctx.Err() != nil {
		return // paused or stopping: not acked, redelivered after the ack wait
	}
	topic := a.bus.topicOf(j.Subject)
	if !p.exact && !GlobMatch(p.key.Pattern, topic) {
		_ = j.AckAsync() // under the NATS filter, but not matched by the glob
		return
	}
	if int(j.Deliveries) > 10*a.cfg.SlotMaxDeliver { // leases keep running out: pods die on it
		p.deadLetter(j, topic, "max deliveries exceeded")
		return
	}
	m, ok := p.pick()
	if !ok {
		_ = j.Retry(a.cfg.SlotRetry)
		return
	}
	select {
	case p.sem <- struct{}{}:
	case <-p.ctx.Done():
		return // not acked: redelivered after the ack wait
	}
	if !a.track() {
		<-p.sem
		return // shutting down: not acked, redelivered after the ack wait
	}
	go func() {
		defer a.work.Done()
		defer func() { <-p.sem }()
		p.deliver(j, m, topic)
	}()
}

func (p *puller) deliver(j *jetstream.Job, m member, topic string) {
	a := p.a
	start := time.Now()
	env := DecodeEnvelope(j.Data)
	timeout := a.cfg.HandlerTimeout
	if m.slot.Timeout > 0 {
		timeout = time.Duration(m.slot.Timeout) * time.Second
	}
	ctx, cancel := context.WithTimeout(a.ctx, timeout)
	var ext sync.WaitGroup
	stopExt := make(chan struct{})
	ext.Add(1)
	go func() { // keep the lease while the node works
		defer ext.Done()
		t := time.NewTicker(max(a.cfg.SlotAckWait/3, 100*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-t.C:
				_ = j.Extend()
			case <-stopExt:
				return
			}
		}
	}()
	status, body, err := a.node.post(ctx, m.node, m.slot.Path,
		HandlerCall{Topic: topic, Sender: env.Sender, Data: env.Data, Timeout: int(timeout / time.Second)})
	close(stopExt)
	ext.Wait()
	cancel()
	if a.ctx.Err() != nil {
		return // pod stopping: not acked, another pod redelivers after the ack wait
	}
	if err == nil && status/100 == 2 {
		// not waiting for the server's confirmation: a lost ack means one more delivery
		// (at least once), never a lost signal
		if err := j.AckAsync(); err != nil {
			a.log.Debug("gilmour: ack signal", "topic", topic, "err", err)
		}
		a.met.signal(topic, "delivered", time.Since(start))
		return
	}
	if err != nil && isDialError(err) {
		// the node is down: the health check will pause it; the signal waits, it is not its fault
		a.met.signal(topic, "node_unreachable", time.Since(start))
		_ = j.Retry(min(a.cfg.HealthInterval, 5*time.Second))
		return
	}
	reason := fmt.Sprintf("node %s answered %d: %s", m.node.ID, status, truncate(body, 200))
	if err != nil {
		reason = fmt.Sprintf("node %s: %v", m.node.ID, err)
	}
	if int(j.Deliveries) >= a.cfg.SlotMaxDeliver {
		p.deadLetter(j, topic, reason)
		return
	}
	a.met.signal(topic, "retried", time.Since(start))
	d := a.cfg.SlotRetry << min(j.Deliveries-1, 16)
	_ = j.Retry(min(d, time.Minute))
}

func (p *puller) deadLetter(j *jetstream.Job, topic, reason string) {
	a := p.a
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	if err := j.DeadLetterFor(ctx, p.key.durable(), reason); err != nil {
		a.log.Warn("gilmour: dead-letter signal", "topic", topic, "err", err)
		return
	}
	env := DecodeEnvelope(j.Data)
	a.met.signal(topic, "dead_lettered", 0)
	a.bus.publishError(topic, env.Sender, 500, env.Data, StringData(reason), "")
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

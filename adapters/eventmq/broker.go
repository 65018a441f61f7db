package eventmq

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jetbridge/jetbridge/jetstream"
)

// broker keeps this pod's connected workers and schedulers, their free slots and the jobs they
// run. Jobs live in JetStream: a free slot pulls exactly one job, a job is acked when its worker
// says it is done, and goes back to the queue when its worker dies.
type broker struct {
	a  *Adapter
	wg sync.WaitGroup // slot fillers

	mu         sync.Mutex
	workers    map[string]*worker
	schedulers map[string]*schedPeer
	stopped    bool
	stats      map[string]*queueStats // by queue, since pod start

	consMu sync.Mutex
	cons   map[string]*jetstream.Consumer

	// pools group the free slots of the workers that serve one queue only: the pool's puller
	// asks JetStream for exactly as many jobs as they have free slots, and a job goes to the
	// highest-weight member with a free slot, as the original router picks workers. Workers of
	// several queues have their own fillers.
	pools map[string]*pool
}

type pool struct {
	queue       string
	free        int // free slots of the members
	outstanding int // jobs asked for and not arrived (nor reported unfilled) yet
	members     map[*worker]struct{}
	puller      *jetstream.SlotPuller
	making      bool      // a goroutine is creating the puller
	lastPull    time.Time // when jobs were last asked for
	lastEvent   time.Time // when a job or an unfilled report last arrived
}

type worker struct {
	id        []byte
	key       string
	queues    []QueueWeight // highest weight first
	free      int           // READY slots not filled yet (one filler goroutine each)
	inflight  map[string]*flight
	noReply   []string // msgids of jobs without reply-requested, oldest first
	credits   int      // REPLYs received whose READY has not come yet
	lastSeen  time.Time
	connected time.Time
	processed int64
	ctx       context.Context
	cancel    context.CancelFunc
	gone      bool
	pooled    bool // serves one queue: its slots are in b.pools[queues[0].Name]
}

type flight struct {
	job        *jetstream.Job
	msgid      string
	queue      string
	headers    Headers
	w          *worker
	dispatched time.Time
}

type schedPeer struct {
	id        []byte
	lastSeen  time.Time
	connected time.Time
}

type queueStats struct {
	done, failed, redelivered, dispatched int64
}

func newBroker(a *Adapter) *broker {
	return &broker{a: a, workers: map[string]*worker{}, schedulers: map[string]*schedPeer{},
		stats: map[string]*queueStats{}, cons: map[string]*jetstream.Consumer{}, pools: map[string]*pool{}}
}

func (b *broker) stat(q string) *queueStats {
	s := b.stats[q]
	if s == nil {
		s = &queueStats{}
		b.stats[q] = s
	}
	return s
}

// poolOf returns the pool of queue q (b.mu held).
func (b *broker) poolOf(q string) *pool {
	p := b.pools[q]
	if p == nil {
		p = &pool{queue: q, members: map[*worker]struct{}{}}
		b.pools[q] = p
	}
	return p
}

// peerName renders a routing id for logs and admin replies: the text of a printable identity
// (Python senders use uuid4 strings), hex otherwise.
func peerName(id []byte) string {
	if utf8.Valid(id) && len(id) > 0 {
		ok := true
		for _, c := range id {
			if c < 0x20 || c == 0x7f {
				ok = false
				break
			}
		}
		if ok {
			return string(id)
		}
	}
	return "0x" + hex.EncodeToString(id)
}

// consumerName is the durable consumer of a queue: readable when the name allows it, hashed
// otherwise.
func consumerName(queue string) string {
	var sb strings.Builder
	clean := true
	for i := 0; i < len(queue); i++ {
		c := queue[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			sb.WriteByte(c)
		} else {
			sb.WriteByte('_')
			clean = false
		}
	}
	s := sb.String()
	if !clean || len(s) > 48 || s == "" {
		sum := sha1.Sum([]byte(queue))
		if len(s) > 32 {
			s = s[:32]
		}
		s += "_" + hex.EncodeToString(sum[:6])
	}
	return consumerPrefix + s
}

func (b *broker) consumer(ctx context.Context, queue string) (*jetstream.Consumer, error) {
	b.consMu.Lock()
	c := b.cons[queue]
	b.consMu.Unlock()
	if c != nil {
		return c, nil
	}
	a := b.a
	c, err := a.js.EnsureConsumer(ctx, jetstream.ConsumerSpec{
		Stream: StreamJobs, Durable: consumerName(queue), Description: "EventMQ queue " + queue,
		FilterSubjects: []string{a.js.Subject("eventmq", "jobs", jetstream.Token(queue), "*")},
		AckWait:        a.cfg.lease, MaxDeliver: a.cfg.maxDeliver, MaxAckPending: 100000, MaxWaiting: 8192,
	})
	if err != nil {
		return nil, err
	}
	b.consMu.Lock()
	b.cons[queue] = c
	b.consMu.Unlock()
	return c, nil
}

// ---- workers (backend) ----

func (b *broker) inform(id []byte, in Inform) {
	qs := append([]QueueWeight(nil), in.Queues...)
	sort.SliceStable(qs, func(i, j int) bool { return qs[i].Weight > qs[j].Weight })
	now := time.Now()
	w := &worker{id: append([]byte(nil), id...), key: string(id), queues: qs, inflight: map[string]*flight{},
		lastSeen: now, connected: now}
	w.ctx, w.cancel = context.WithCancel(b.a.ctx)
	b.mu.Lock()
	old := b.workers[w.key]
	if b.stopped {
		b.mu.Unlock()
		w.cancel()
		return
	}
	b.workers[w.key] = w
	if len(qs) == 1 {
		w.pooled = true
		b.poolOf(qs[0].Name).members[w] = struct{}{}
	}
	b.mu.Unlock()
	if old != nil {
		b.bury(old, "worker informed again")
	}
	b.a.m.workers.Set(float64(b.workerCount()))
}

func (b *broker) workerCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.workers)
}

// seen refreshes a worker's liveness; it reports whether the worker is known.
func (b *broker) seen(id []byte) *worker {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.workers[string(id)]
	if w != nil {
		w.lastSeen = time.Now()
	}
	return w
}

// ready adds a free slot: it first settles the job this READY reports as finished (for jobs
// without reply-requested the oldest one), then starts a filler for the slot.
func (b *broker) ready(id []byte) {
	var done *flight
	b.mu.Lock()
	w := b.workers[string(id)]
	if w == nil || w.gone {
		b.mu.Unlock()
		return
	}
	w.lastSeen = time.Now()
	switch {
	case w.credits > 0:
		w.credits--
	case len(w.noReply) > 0:
		msgid := w.noReply[0]
		w.noReply = w.noReply[1:]
		done = w.inflight[msgid]
		delete(w.inflight, msgid)
	}
	w.free++
	start := !b.stopped && !b.a.draining.Load()
	var p *pool
	if w.pooled {
		p = b.poolOf(w.queues[0].Name)
		p.free++
	} else if start {
		b.wg.Add(1)
	}
	b.mu.Unlock()
	if done != nil {
		b.finish(done, nil)
	}
	switch {
	case p != nil:
		b.topUp(p)
	case start:
		go b.fill(w)
	}
}

// reply handles a worker's result REPLY.
func (b *broker) reply(id []byte, r WorkerReply) {
	b.mu.Lock()
	w := b.workers[string(id)]
	if w == nil {
		b.mu.Unlock()
		return
	}
	w.lastSeen = time.Now()
	w.credits++
	f := w.inflight[r.RequestMsgID]
	if f != nil {
		delete(w.inflight, r.RequestMsgID)
		for i, m := range w.noReply {
			if m == r.RequestMsgID {
				w.noReply = append(w.noReply[:i:i], w.noReply[i+1:]...)
				break
			}
		}
	}
	b.mu.Unlock()
	if f == nil {
		b.a.log.Debug("REPLY for a job not in flight here", "msgid", r.RequestMsgID, "worker", peerName(id))
		return
	}
	b.finish(f, r.Result)
}

// finish settles a completed job: the result (when requested) is stored before the ack.
func (b *broker) finish(f *flight, result []byte) {
	a := b.a
	lat := time.Since(f.job.Time)
	b.mu.Lock()
	b.stat(f.queue).done++
	f.w.processed++
	b.mu.Unlock()
	a.m.inflight.WithLabelValues(f.queue).Dec()
	a.m.done.WithLabelValues(f.queue).Inc()
	if !f.job.Time.IsZero() {
		a.m.latency.WithLabelValues(f.queue).Observe(lat.Seconds())
		a.env.Metrics.Latency.WithLabelValues(protocolName, "job").Observe(lat.Seconds())
	}
	if !f.headers.ReplyRequested || result == nil {
		if err := f.job.AckAsync(); err != nil {
			a.fail("ack")
			a.log.Warn("ack job", "msgid", f.msgid, "err", err)
		}
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		defer cancel()
		rec := resultRecord{MsgID: f.msgid, Queue: f.queue, Status: "done", Result: jsonOrString(result),
			Worker: peerName(f.w.id), Pod: a.env.PodID, Attempts: int(f.job.Deliveries), Finished: time.Now().UTC()}
		if err := a.storeResult(ctx, rec); err != nil {
			a.fail("result")
			a.log.Warn("store job result (the job will run again)", "msgid", f.msgid, "err", err)
			return
		}
		if err := f.job.AckAsync(); err != nil {
			a.fail("ack")
		}
	}()
}

// bury removes a dead worker and gives its jobs back to the queue.
func (b *broker) bury(w *worker, why string) {
	b.mu.Lock()
	if b.workers[w.key] == w {
		delete(b.workers, w.key)
	}
	if !w.gone && w.pooled {
		p := b.poolOf(w.queues[0].Name)
		p.free -= w.free
		delete(p.members, w)
	}
	w.gone = true
	w.cancel()
	flights := w.inflight
	w.inflight = map[string]*flight{}
	w.noReply = nil
	for _, f := range flights {
		if f.job.Deliveries < uint64(b.attemptsFor(f.headers)) {
			b.stat(f.queue).redelivered++
		}
	}
	b.mu.Unlock()
	for _, f := range flights {
		b.requeue(f, why)
	}
	b.a.m.workers.Set(float64(b.workerCount()))
	if len(flights) > 0 {
		b.a.log.Info("worker gone, jobs back in the queue (or dead-lettered after their last attempt)", "worker", peerName(w.id), "why", why, "jobs", len(flights))
	}
	b.a.trigger()
}

// requeue gives the job of a dead worker back to the queue; a job whose last attempt this was
// goes to the dead-letter stream at once (it would only be redelivered to be dead-lettered, and
// only when some worker pulls again).
func (b *broker) requeue(f *flight, why string) {
	a := b.a
	a.m.inflight.WithLabelValues(f.queue).Dec()
	if used := f.job.Deliveries; used >= uint64(b.attemptsFor(f.headers)) {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			b.deadLetter(f.job, f.msgid, f.queue, int(used),
				fmt.Sprintf("eventmq: %d attempts used (retry-count:%d), the last one ended by %s", used, max(f.headers.RetryCount, 0), why))
		}()
		return
	}
	a.m.redelivered.WithLabelValues(f.queue).Inc()
	if err := f.job.Retry(0); err != nil {
		a.fail("requeue")
		a.log.Warn("requeue job (its lease will expire)", "msgid", f.msgid, "err", err)
	}
}

func (b *broker) kbye(id []byte) {
	b.mu.Lock()
	w := b.workers[string(id)]
	b.mu.Unlock()
	if w != nil {
		b.bury(w, "KBYE")
	}
}

// worker is the worker connected as id, or nil.
func (b *broker) worker(id []byte) *worker {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.workers[string(id)]
}

// disconnected buries w (the worker of a connection that closed) unless it is gone already, e.g.
// after its KBYE.
func (b *broker) disconnected(w *worker) {
	b.mu.Lock()
	gone := w.gone
	b.mu.Unlock()
	if !gone {
		b.bury(w, "disconnected")
	}
}

// fill is one free slot of w: it pulls one job from the worker's queues (highest weight first)
// and dispatches it.
func (b *broker) fill(w *worker) {
	defer b.wg.Done()
	a := b.a
	backoff := 50 * time.Millisecond
	for w.ctx.Err() == nil {
		job, queue, err := b.pull(w)
		if err != nil {
			if w.ctx.Err() != nil {
				return
			}
			a.fail("fetch")
			a.log.Debug("pull", "worker", peerName(w.id), "err", err)
			select {
			case <-w.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		if job == nil {
			continue
		}
		if b.dispatch(func() *worker {
			if w.gone || w.free <= 0 {
				return nil
			}
			return w
		}, job, queue) {
			return
		}
	}
}

// topUp asks the pool's puller for the jobs its free slots are missing.
func (b *broker) topUp(p *pool) {
	a := b.a
	b.mu.Lock()
	if b.stopped || a.draining.Load() || a.ctx.Err() != nil {
		b.mu.Unlock()
		return
	}
	if p.puller == nil {
		if !p.making {
			p.making = true
			b.wg.Add(1)
			go b.makePuller(p)
		}
		b.mu.Unlock()
		return
	}
	want := p.free - p.outstanding
	if want <= 0 {
		b.mu.Unlock()
		return
	}
	p.outstanding += want
	p.lastPull = time.Now()
	pl := p.puller
	b.mu.Unlock()
	if err := pl.Pull(want, a.cfg.pollWait); err != nil {
		a.fail("fetch")
		b.mu.Lock()
		p.outstanding -= want
		b.mu.Unlock()
	}
}

// makePuller binds the pool's puller (the consumer may have to be created first).
func (b *broker) makePuller(p *pool) {
	defer b.wg.Done()
	a := b.a
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	var pl *jetstream.SlotPuller
	_, err := b.consumer(ctx, p.queue)
	if err == nil {
		pl, err = a.js.NewSlotPuller(StreamJobs, consumerName(p.queue),
			func(j *jetstream.Job) { b.pulled(p, j) },
			func(n int) { b.unfilled(p, n) })
	}
	b.mu.Lock()
	p.making = false
	if err == nil && (b.stopped || a.ctx.Err() != nil) {
		_ = pl.Close()
		b.mu.Unlock()
		return
	}
	p.puller = pl
	b.mu.Unlock()
	if err != nil {
		a.fail("fetch")
		a.log.Debug("puller", "queue", p.queue, "err", err) // topUpAll tries again
		return
	}
	b.topUp(p)
}

// pulled hands a job that arrived for the pool to its best member.
func (b *broker) pulled(p *pool, j *jetstream.Job) {
	b.mu.Lock()
	p.outstanding = max(p.outstanding-1, 0)
	p.lastEvent = time.Now()
	b.mu.Unlock()
	if !b.dispatch(func() *worker { return b.best(p) }, j, p.queue) {
		b.topUp(p) // dead-lettered: the slot is still free
	}
}

// unfilled learns that n jobs asked for will not come, and asks again for what is missing.
func (b *broker) unfilled(p *pool, n int) {
	b.mu.Lock()
	p.outstanding = max(p.outstanding-n, 0)
	p.lastEvent = time.Now()
	b.mu.Unlock()
	b.topUp(p)
}

// topUpAll retries pools whose puller or pull failed. Every pull request ends within the poll
// wait; when nothing was heard of a pool's requests for twice that long (the replies were lost,
// e.g. in a reconnection), none of them is still open.
func (b *broker) topUpAll() {
	quiet := 2 * b.a.cfg.pollWait
	b.mu.Lock()
	ps := make([]*pool, 0, len(b.pools))
	for _, p := range b.pools {
		if p.outstanding > 0 && time.Since(p.lastPull) > quiet && time.Since(p.lastEvent) > quiet {
			p.outstanding = 0
		}
		ps = append(ps, p)
	}
	b.mu.Unlock()
	for _, p := range ps {
		b.topUp(p)
	}
}

// closePullers stops every pool's puller.
func (b *broker) closePullers() {
	b.mu.Lock()
	var ps []*jetstream.SlotPuller
	for _, p := range b.pools {
		if p.puller != nil {
			ps = append(ps, p.puller)
			p.puller = nil
		}
	}
	b.mu.Unlock()
	for _, pl := range ps {
		_ = pl.Close()
	}
}

// best is the pool member with a free slot and the highest weight (then the most free slots).
func (b *broker) best(p *pool) *worker {
	var best *worker
	for w := range p.members {
		if w.gone || w.free <= 0 {
			continue
		}
		if best == nil || w.queues[0].Weight > best.queues[0].Weight ||
			w.queues[0].Weight == best.queues[0].Weight && (w.free > best.free || w.free == best.free && w.connected.Before(best.connected)) {
			best = w
		}
	}
	return best
}

func (b *broker) pull(w *worker) (*jetstream.Job, string, error) {
	ctx := w.ctx
	if len(w.queues) == 1 {
		q := w.queues[0].Name
		c, err := b.consumer(ctx, q)
		if err != nil {
			return nil, "", err
		}
		jobs, err := c.Fetch(ctx, 1, b.a.cfg.pollWait)
		return b.first(jobs, err, q)
	}
	for _, qw := range w.queues {
		c, err := b.consumer(ctx, qw.Name)
		if err != nil {
			return nil, "", err
		}
		jobs, err := c.FetchNoWait(1)
		if j, q, err := b.first(jobs, err, qw.Name); j != nil || err != nil {
			return j, q, err
		}
	}
	// Nothing anywhere: wait a little on the first queue, then look at all of them again.
	q := w.queues[0].Name
	c, err := b.consumer(ctx, q)
	if err != nil {
		return nil, "", err
	}
	jobs, err := c.Fetch(ctx, 1, min(b.a.cfg.pollWait, 200*time.Millisecond))
	return b.first(jobs, err, q)
}

// first keeps the first job; extra ones (never asked for) go back.
func (b *broker) first(jobs []*jetstream.Job, err error, q string) (*jetstream.Job, string, error) {
	if len(jobs) == 0 {
		return nil, q, err
	}
	for _, j := range jobs[1:] {
		_ = j.Retry(0)
	}
	return jobs[0], q, nil
}

// jobFields reads what the broker needs from a stored job.
func jobFields(j *jetstream.Job, consumerQueue string) (msgid, queue string, h Headers) {
	msgid = j.Header.Get(HeaderMsgID)
	if msgid == "" {
		msgid = j.Header.Get("Nats-Msg-Id")
	}
	if msgid == "" {
		if i := strings.LastIndexByte(j.Subject, '.'); i >= 0 {
			msgid = untoken(j.Subject[i+1:])
		}
	}
	if msgid == "" {
		msgid = "nats:" + strconv.FormatUint(j.Sequence, 10)
	}
	queue = consumerQueue
	if v := j.Header.Values(HeaderQueue); len(v) > 0 {
		queue = v[0]
	}
	h, _ = ParseHeaders(j.Header.Get(HeaderHeaders))
	return msgid, queue, h
}

// attemptsFor is how many deliveries a job may have.
func (b *broker) attemptsFor(h Headers) int {
	n := b.a.cfg.attempts
	if h.RetryCount >= 0 {
		n = h.RetryCount + 1
	}
	return max(1, min(n, b.a.cfg.maxDeliver))
}

// dispatch sends job to the worker pick returns (called with b.mu held; nil when no slot is
// free: the job goes back). It reports whether a slot was used (or the job given back).
func (b *broker) dispatch(pick func() *worker, job *jetstream.Job, consumerQueue string) bool {
	a := b.a
	msgid, origQueue, h := jobFields(job, consumerQueue)
	if job.Deliveries > uint64(b.attemptsFor(h)) {
		b.deadLetter(job, msgid, consumerQueue, int(job.Deliveries)-1, fmt.Sprintf("eventmq: %d attempts used (retry-count:%d)", job.Deliveries-1, max(h.RetryCount, 0)))
		return false
	}
	fwd := h
	exact := a.cfg.exactCompletion && !h.ReplyRequested
	if exact {
		// Ask the worker for a REPLY naming the job, so that its completion is known exactly
		// (the result itself is not stored: the client did not ask for it).
		fwd.Raw = strings.TrimPrefix(h.Raw+",reply-requested", ",")
	}
	frames := Request{MsgID: msgid, Queue: origQueue, Headers: fwd, Payload: job.Data}.Frames()
	b.mu.Lock()
	w := pick()
	if w == nil {
		b.mu.Unlock()
		_ = job.Retry(0)
		return true
	}
	f := &flight{job: job, msgid: msgid, queue: consumerQueue, headers: h, w: w, dispatched: time.Now()}
	if err := a.back.Send(a.ctx, w.id, frames...); err != nil {
		// The worker is gone or does not read any more: as the original router does on
		// EHOSTUNREACH, it is dead; the job goes back at once.
		b.mu.Unlock()
		a.fail("dispatch")
		_ = job.Retry(0)
		b.bury(w, "send failed: "+err.Error())
		return true
	}
	if old := w.inflight[msgid]; old != nil {
		// The same job twice on one worker (redelivered while the first copy still runs): keep
		// the newer lease, drop the older delivery's bookkeeping.
		delete(w.inflight, msgid)
		a.m.inflight.WithLabelValues(old.queue).Dec()
	}
	w.free--
	if w.pooled {
		b.poolOf(w.queues[0].Name).free--
	}
	w.inflight[msgid] = f
	if !h.ReplyRequested && !exact {
		w.noReply = append(w.noReply, msgid)
	}
	st := b.stat(consumerQueue)
	st.dispatched++
	if job.Deliveries > 1 {
		st.redelivered++
	}
	b.mu.Unlock()
	a.out(CmdRequest)
	a.m.inflight.WithLabelValues(consumerQueue).Inc()
	return true
}

// deadLetter copies job to the dead-letter stream and notes it in the results (attempts: how
// many deliveries were attempts).
func (b *broker) deadLetter(job *jetstream.Job, msgid, queue string, attempts int, reason string) {
	a := b.a
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	rec := resultRecord{MsgID: msgid, Queue: queue, Status: "dead", Reason: reason, Pod: a.env.PodID,
		Attempts: attempts, Finished: time.Now().UTC()}
	if err := a.storeResult(ctx, rec); err != nil {
		a.log.Warn("store dead-letter note", "msgid", msgid, "err", err)
	}
	if err := job.DeadLetter(ctx, reason); err != nil {
		a.fail("dead_letter")
		a.log.Warn("dead-letter job", "msgid", msgid, "err", err)
		return
	}
	b.mu.Lock()
	b.stat(queue).failed++
	b.mu.Unlock()
	a.m.failed.WithLabelValues(queue).Inc()
	a.log.Info("job dead-lettered", "msgid", msgid, "queue", queue, "reason", reason)
}

// heartbeat sends HEARTBEAT to every worker and scheduler and buries the silent ones.
func (b *broker) heartbeat() {
	a := b.a
	now := time.Now()
	ts := Timestamp(now)
	var dead []*worker
	b.mu.Lock()
	for _, w := range b.workers {
		if now.Sub(w.lastSeen) >= a.cfg.hbTimeout {
			dead = append(dead, w)
			continue
		}
		_ = a.send(a.back, w.id, CmdHeartbeat, ts)
	}
	for k, s := range b.schedulers {
		if now.Sub(s.lastSeen) >= a.cfg.hbTimeout {
			delete(b.schedulers, k)
			continue
		}
		_ = a.send(a.front, s.id, CmdHeartbeat, ts)
	}
	b.mu.Unlock()
	for _, w := range dead {
		b.bury(w, "heartbeat timeout")
	}
}

func (b *broker) extendLeases() {
	var jobs []*jetstream.Job
	b.mu.Lock()
	for _, w := range b.workers {
		for _, f := range w.inflight {
			jobs = append(jobs, f.job)
		}
	}
	b.mu.Unlock()
	for _, j := range jobs {
		if err := j.Extend(); err != nil {
			b.a.fail("extend")
		}
	}
}

func (b *broker) inflightCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, w := range b.workers {
		n += len(w.inflight)
	}
	return n
}

// stopFilling stops every slot filler (no more pulls).
func (b *broker) stopFilling() {
	b.mu.Lock()
	b.stopped = true
	for _, w := range b.workers {
		w.cancel()
	}
	b.mu.Unlock()
}

func (b *broker) requeueAll(why string) {
	b.mu.Lock()
	ws := make([]*worker, 0, len(b.workers))
	for _, w := range b.workers {
		ws = append(ws, w)
	}
	b.mu.Unlock()
	for _, w := range ws {
		b.bury(w, why)
	}
}

// ---- schedulers (frontend) ----

func (b *broker) addScheduler(id []byte) {
	now := time.Now()
	b.mu.Lock()
	b.schedulers[string(id)] = &schedPeer{id: append([]byte(nil), id...), lastSeen: now, connected: now}
	b.mu.Unlock()
}

func (b *broker) schedulerSeen(id []byte) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.schedulers[string(id)]
	if s != nil {
		s.lastSeen = time.Now()
	}
	return s != nil
}

func (b *broker) removeScheduler(id []byte) {
	b.mu.Lock()
	delete(b.schedulers, string(id))
	b.mu.Unlock()
}

// knownLocal reports whether a local worker serves queue.
func (b *broker) knownLocal(queue string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, w := range b.workers {
		for _, q := range w.queues {
			if q.Name == queue {
				return true
			}
		}
	}
	return false
}

// kbyeAll sends KBYE to every worker and scheduler of this pod and forgets them (admin DISCONNECT).
func (b *broker) kbyeAll() {
	a := b.a
	b.mu.Lock()
	ws := make([]*worker, 0, len(b.workers))
	for _, w := range b.workers {
		ws = append(ws, w)
		_ = a.send(a.back, w.id, CmdKBYE)
	}
	for k, s := range b.schedulers {
		_ = a.send(a.front, s.id, CmdKBYE)
		delete(b.schedulers, k)
	}
	b.mu.Unlock()
	for _, w := range ws {
		b.bury(w, "admin DISCONNECT")
	}
}

var errNotJSON = errors.New("not JSON")

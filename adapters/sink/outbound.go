package sink

import (
	"context"
	"encoding/base64"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/jetbridge/jetbridge/jetstream"
)

// outbound delivers a client's cloud events (stream SINK_OUT, subject sink.out.<client>) from its
// durable consumer over the session: at most one event in flight per (event_type_id, key), device
// ACK → JetStream ack, device NACK → dead-letter stream with the NACK messages.
type outbound struct {
	s      *session
	ctx    context.Context
	cancel context.CancelFunc
	jobs   chan *jetstream.Job
	res    chan ackResult
	settle chan uint64 // sequences whose JetStream ack or dead-letter finished
	done   chan struct{}
	stopC  func()
	wg     sync.WaitGroup // JetStream acks and dead-letters in progress

	lateMu sync.Mutex
	late   []*jetstream.Job // pulled after stop began: given back with the held ones

	// loop goroutine only
	inflight map[uint16]*outItem
	keys     map[string]*keyQueue
	held     map[uint64]*outItem // by stream sequence
	nextID   uint16
	expect   int // leased events expected in the first burst
}

type outItem struct {
	job *jetstream.Job
	ev  Event
	key string
	id  uint16
	// settling: the device answered and the JetStream ack (or dead-letter) is under way. The
	// event stays held (lease renewed, a redelivery of it is not sent again) until that is done.
	settling bool
}

type keyQueue struct {
	busy  bool
	queue []*outItem
}

type ackResult struct {
	id             uint16
	ack            bool
	machine, human []byte
}

// ConsumerName is the durable consumer of a client's outbound events.
func ConsumerName(client string) string { return "SINK_OUT_" + client }

func startOutbound(s *session) (*outbound, error) {
	a := s.a
	ctx, cancel := context.WithTimeout(s.ctx, 15*time.Second)
	defer cancel()
	cons, err := a.env.JS.EnsureConsumer(ctx, jetstream.ConsumerSpec{
		Stream: StreamOut, Durable: ConsumerName(s.clientID),
		Description:    "Sink events for client " + s.clientID,
		FilterSubjects: []string{a.env.JS.Subject("sink", "out", s.clientID)},
		AckWait:        a.cfg.OutAckWait, MaxAckPending: a.cfg.OutMaxPending,
	})
	if err != nil {
		return nil, err
	}
	o := &outbound{s: s, jobs: make(chan *jetstream.Job), res: make(chan ackResult, 64), settle: make(chan uint64, 64), done: make(chan struct{}),
		inflight: map[uint16]*outItem{}, keys: map[string]*keyQueue{}, held: map[uint64]*outItem{},
		nextID: uint16(time.Now().UnixNano()) & MaxID}
	o.ctx, o.cancel = context.WithCancel(s.ctx)
	stop, err := cons.ConsumeDrain(func(j *jetstream.Job) {
		select {
		case o.jobs <- j:
		case <-o.ctx.Done():
			o.lateMu.Lock()
			o.late = append(o.late, j) // given back by stop, in sequence order with the held ones
			o.lateMu.Unlock()
		}
	}, min(a.cfg.OutMaxPending, 64))
	if err != nil {
		o.cancel()
		return nil, err
	}
	o.stopC = stop
	// Events still leased (held by the previous connection, or being handed back) arrive first;
	// wait for them briefly so that they are sorted together (per-key order across reconnects).
	if _, leased, err := cons.Pending(ctx); err == nil {
		o.expect = leased
	}
	go o.loop()
	return o, nil
}

func (o *outbound) ready() bool { return o != nil }

// deliverResult hands a device ACK/NACK to the loop; false when the loop is gone.
func (o *outbound) deliverResult(r ackResult) bool {
	select {
	case o.res <- r:
		return true
	case <-o.done:
		return false
	}
}

// stop ends delivery: held events go back to JetStream in sequence order (so per-key order is
// kept on the next connection), after the pull subscription is gone so that none of them is
// redelivered to it.
func (o *outbound) stop() {
	o.cancel()
	o.stopC()
	<-o.done
	o.giveBack()
	o.wg.Wait()
}

func (o *outbound) loop() {
	defer close(o.done)
	a := o.s.a
	t := time.NewTicker(max(a.cfg.OutAckWait/3, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-o.ctx.Done():
			return
		case j := <-o.jobs:
			if o.expect > 0 {
				o.addBurst(j, o.expect, startupWindow)
				o.expect = 0
			} else {
				o.addBurst(j, 0, burstWindow)
			}
		case r := <-o.res:
			o.result(r)
		case seq := <-o.settle:
			if it := o.held[seq]; it != nil && it.settling {
				delete(o.held, seq)
			}
		case <-t.C:
			for _, it := range o.held {
				_ = it.job.Extend()
			}
		}
	}
}

func (o *outbound) giveBack() {
	jobs := map[uint64]*jetstream.Job{}
	o.lateMu.Lock()
	for _, j := range o.late {
		jobs[j.Sequence] = j
	}
	o.late = nil
	o.lateMu.Unlock()
	for seq, it := range o.held {
		if it.settling {
			delete(jobs, seq) // its ack or dead-letter is under way; a failed one comes back after the lease
			continue
		}
		jobs[seq] = it.job
	}
	seqs := make([]uint64, 0, len(jobs))
	for seq := range jobs {
		seqs = append(seqs, seq)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for _, seq := range seqs {
		_ = jobs[seq].Retry(0)
	}
	o.s.a.m.inflightOut.Sub(float64(len(o.inflight)))
	o.held, o.inflight = map[uint64]*outItem{}, map[uint16]*outItem{}
}

// burstWindow is how long the loop waits for more events after one arrived, to sort a burst by
// stream sequence. JetStream can hand events given back by a closed connection out of order
// (a redelivery popped while only a stale pull request waits goes to the end of the redelivery
// queue), so a burst is re-sorted to keep per-key order whenever the events arrive together.
const burstWindow = 2 * time.Millisecond

// startupWindow bounds the wait for the events leased at connection start.
const startupWindow = 250 * time.Millisecond

// addBurst collects events until n of them are redeliveries (startup, n > 0) or, for n == 0,
// until 256 events or the window passes without one; then sorts them by stream sequence and
// adds them.
func (o *outbound) addBurst(j *jetstream.Job, n int, window time.Duration) {
	burst := []*jetstream.Job{j}
	redelivered := 0
	count := func(j *jetstream.Job) {
		if j.Deliveries > 1 {
			redelivered++
		}
	}
	count(j)
	timer := time.NewTimer(window)
	defer timer.Stop()
collect:
	for len(burst) < 4096 && (n == 0 && len(burst) < 256 || n > 0 && redelivered < n) {
		select {
		case j := <-o.jobs:
			burst = append(burst, j)
			count(j)
		case <-timer.C:
			break collect
		case <-o.ctx.Done():
			break collect
		}
	}
	sort.Slice(burst, func(a, b int) bool { return burst[a].Sequence < burst[b].Sequence })
	for _, j := range burst {
		o.add(j)
	}
}

func (o *outbound) add(j *jetstream.Job) {
	if it, ok := o.held[j.Sequence]; ok {
		it.job = j // redelivery of an event we still hold (lease ran out): keep the newest handle
		return
	}
	ev, err := o.event(j)
	if err != nil {
		o.s.a.env.Metrics.Errors.WithLabelValues("sink", "bad_outbound").Inc()
		o.s.log.Warn("sink: outbound event dead-lettered", "seq", j.Sequence, "err", err)
		o.deadLetter(j, "invalid sink event: "+err.Error())
		return
	}
	it := &outItem{job: j, ev: ev, key: strconv.FormatUint(ev.TypeID, 10) + "\x00" + string(ev.Key)}
	o.held[j.Sequence] = it
	kq := o.keys[it.key]
	if kq == nil {
		kq = &keyQueue{}
		o.keys[it.key] = kq
	}
	if kq.busy {
		kq.queue = append(kq.queue, it)
		return
	}
	o.send(it, kq)
}

// event reads the Sink fields of an outbound message (headers; the payload is event_data).
func (o *outbound) event(j *jetstream.Job) (Event, error) {
	ev := Event{Data: j.Data, SchemaVersion: 1}
	num := func(h string, dst *uint64, required bool) error {
		v := j.Header.Get(h)
		if v == "" {
			if required {
				return fmt.Errorf("header %s missing", h)
			}
			return nil
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return fmt.Errorf("header %s %q: %w", h, v, err)
		}
		*dst = n
		return nil
	}
	if err := num(HdrEventType, &ev.TypeID, true); err != nil {
		return ev, err
	}
	if err := num(HdrSchemaVersion, &ev.SchemaVersion, false); err != nil {
		return ev, err
	}
	if k := j.Header.Get(HdrKey); k != "" {
		b, err := base64.StdEncoding.DecodeString(k)
		if err != nil {
			return ev, fmt.Errorf("header %s: %w", HdrKey, err)
		}
		ev.Key = b
	}
	ev.Timestamp = uint64(j.Time.Unix())
	if err := num(HdrTimestamp, &ev.Timestamp, false); err != nil {
		return ev, err
	}
	if err := num(HdrOffset, &ev.Offset, false); err != nil {
		return ev, err
	}
	if ev.Offset == 0 {
		ctx, cancel := context.WithTimeout(o.ctx, 10*time.Second)
		defer cancel()
		off, err := o.s.a.reg.nextOffset(ctx, o.s.clientID, ev.TypeID, ev.Key, j.Sequence)
		if err != nil {
			return ev, fmt.Errorf("assign offset: %w", err)
		}
		ev.Offset = off
	}
	if _, err := AppendPublish(nil, 0, ev); err != nil {
		return ev, err
	}
	return ev, nil
}

func (o *outbound) send(it *outItem, kq *keyQueue) {
	id := o.nextID
	for o.inflight[id] != nil {
		id = (id + 1) & MaxID
	}
	o.nextID = (id + 1) & MaxID
	f, err := AppendPublish(nil, id, it.ev)
	if err != nil { // checked in event(); kept for safety
		delete(o.held, it.job.Sequence)
		o.deadLetter(it.job, err.Error())
		return
	}
	it.id = id
	o.inflight[id] = it
	kq.busy = true
	o.s.a.m.inflightOut.Inc()
	o.s.sendOut(f, o.s.a.m.outPublish)
}

func (o *outbound) result(r ackResult) {
	a := o.s.a
	it := o.inflight[r.id]
	if it == nil {
		a.m.unknownIDs.Inc() // forgiving: counted and ignored
		return
	}
	delete(o.inflight, r.id)
	a.m.inflightOut.Dec()
	it.settling = true
	j := it.job
	if r.ack {
		o.settleAsync(j, func(ctx context.Context) error { return j.Ack(ctx) })
	} else {
		if j.Header == nil {
			j.Header = jetstream.Header{}
		}
		j.Header.Set(HdrNackMachine, headerText(r.machine))
		j.Header.Set(HdrNackHuman, headerText(r.human))
		reason := "sink nack: machine=" + headerText(r.machine) + " human=" + headerText(r.human)
		o.settleAsync(j, func(ctx context.Context) error { return j.DeadLetter(ctx, reason) })
	}
	kq := o.keys[it.key]
	if kq == nil {
		return
	}
	kq.busy = false
	if len(kq.queue) > 0 {
		next := kq.queue[0]
		kq.queue = kq.queue[1:]
		o.send(next, kq)
	} else {
		delete(o.keys, it.key)
	}
}

// testSettleDelay slows the JetStream side of device answers down (tests only: a slow NATS).
var testSettleDelay atomic.Int64

// settleAsync runs the JetStream side of a device answer (ack or dead-letter) off the loop, then
// tells the loop the event is no longer held.
func (o *outbound) settleAsync(j *jetstream.Job, fn func(context.Context) error) {
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		if d := testSettleDelay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := fn(ctx); err != nil {
			o.s.log.Warn("sink: outbound settle", "seq", j.Sequence, "err", err)
		}
		select {
		case o.settle <- j.Sequence:
		case <-o.done:
		}
	}()
}

func (o *outbound) deadLetter(j *jetstream.Job, reason string) {
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := j.DeadLetter(ctx, reason); err != nil {
			o.s.log.Warn("sink: dead-letter", "seq", j.Sequence, "err", err)
		}
	}()
}

// headerText makes bytes safe for a NATS header value: printable text as is, anything else as
// "base64:<...>".
func headerText(b []byte) string {
	for _, r := range string(b) {
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			return "base64:" + base64.StdEncoding.EncodeToString(b)
		}
	}
	return string(b)
}

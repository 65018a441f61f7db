package tracker

// queue.go maps the tracker's item queue onto JetStream:
//
//   - the item record (KV bucket TRACKER_ITEMS, key = item id) is the truth for status, attempts,
//     claimant and lease; every change is a CAS update;
//   - a "ready token" {"id","gen"} on the work-queue stream TRACKER_READY, subject
//     tracker.ready.<pipeline_type>.<run_on or _>.<priority+attempts>, says the item may be claimed.
//     One durable pull consumer per subject; a claim reads the per-subject counts once, then fetches
//     from the pipeline-specific subjects first, then the general ones, lowest level first, each
//     FIFO. A token is only honoured when its generation matches the record's and the record is
//     todo; anything else is stale and dropped. Tokens are published BEFORE the record update that
//     makes the item todo, so a todo item always has a token (a token seen ahead of its record is
//     held back a little, not dropped);
//   - every pod watches TRACKER_ITEMS and keeps the open claims in memory (claimIndex): the
//     lease sweeper, System:ping renewals, budgets and the limbo list read it.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// Logical asset names.
const (
	streamReady   = "TRACKER_READY"
	streamStash   = "TRACKER_STASH"
	streamResults = "TRACKER_RESULTS"
	streamEvents  = "TRACKER_EVENTS"
	streamRejects = "TRACKER_REJECTS"
	streamSubmit  = "TRACKER_SUBMIT"
	bucketItems   = "TRACKER_ITEMS"
	bucketPipes   = "TRACKER_PIPELINES"
	bucketConfig  = "TRACKER_CONFIG"
	consSubmit    = "TRACKER_SUBMIT_IN"
)

// itemMarkerTTL is how long the items bucket keeps the marker of a record that expired
// (--tracker-keep-finished): pods whose watch is behind still see the record go.
const itemMarkerTTL = 10 * time.Minute

// tokenGrace is how long a ready token whose record is behind it (the writer has published the
// token but not yet updated the record) is kept before it is taken for an orphan.
const tokenGrace = 30 * time.Second

// statusError is an error with a protocol status (404, 409, …).
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func errStatus(status int, format string, args ...any) error {
	return &statusError{status: status, msg: fmt.Sprintf(format, args...)}
}

type token struct {
	ID  string `json:"id"`
	Gen uint64 `json:"gen"`
}

// TypeConfig is the per-pipeline-type setting (KV TRACKER_CONFIG key ptype.<name>).
type TypeConfig struct {
	Lease    Duration `json:"lease"`
	MaxTries int      `json:"max_tries"`
}

// Duration is a time.Duration that reads and writes as "24h" in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "24h" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	*d = Duration(f * float64(time.Second))
	return nil
}

// Event is published on tracker.events.<pipeline_type>.<event> for every item change.
type Event struct {
	Event        string  `json:"event"`
	ID           string  `json:"id"`
	Item         string  `json:"item"`
	PipelineType string  `json:"pipeline_type"`
	Status       string  `json:"status"`
	Attempt      *int    `json:"attempt,omitempty"`
	Pipeline     string  `json:"pipeline,omitempty"`
	Reason       string  `json:"reason,omitempty"`
	Time         float64 `json:"time"`
}

// Queue is the tracker's state on JetStream, shared by every session of a pod.
type Queue struct {
	js       *jetstream.Client
	items    *jetstream.KV
	pipes    *jetstream.KV
	config   *jetstream.KV
	pod      string
	log      *slog.Logger
	lease    time.Duration
	maxTries int
	metrics  *trackerMetrics

	consMu sync.Mutex
	cons   map[string]*jetstream.Taker // per ready subject
	// stashCons holds the consumer per stash subject
	stashCons map[string]*jetstream.Consumer

	cfgMu    sync.Mutex
	cfgCache map[string]cachedCfg

	index *claimIndex
	pipe  *jetstream.Pipeline // writes in flight together (closed by close)

	// ready tokens fetched in advance, per subject (readahead.go)
	raMu     sync.Mutex
	ra       map[string]*readAhead
	raKeeper bool // stockKeeper runs

	// item events waiting to be published (see eventPublisher)
	evMu      sync.Mutex
	evPending []pendingEvent
	evSpare   []pendingEvent
	evStarted bool
	evKick    chan struct{}
	evPubMu   sync.Mutex

	// keepFinished is how long the record of a done or error item is kept (0: for ever)
	keepFinished time.Duration

	// orderTTL is how long the per-subject counts of the ready stream are reused by claims
	// (0 = read them on every claim).
	orderTTL time.Duration
	orderMu  sync.Mutex
	order    map[string]*orderCache
	loading  map[string]*countsCall // reads of the counts under way for claims without an order

	// background work (order refreshes), stopped by close
	bgMu     sync.Mutex
	bgClosed bool
	bgWG     sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc
}

type orderCache struct {
	at         time.Time
	counts     map[string]uint64
	refreshing bool // a background read of the counts is under way
}

type cachedCfg struct {
	cfg TypeConfig
	at  time.Time
}

func newQueue(ctx context.Context, js *jetstream.Client, pod string, log *slog.Logger, lease time.Duration, maxTries int, m *trackerMetrics) (*Queue, error) {
	q := &Queue{js: js, pod: pod, log: log, lease: lease, maxTries: maxTries, metrics: m,
		cons: map[string]*jetstream.Taker{}, stashCons: map[string]*jetstream.Consumer{}, cfgCache: map[string]cachedCfg{}, index: newClaimIndex(),
		order: map[string]*orderCache{}, loading: map[string]*countsCall{}, evKick: make(chan struct{}, 1),
		ra: map[string]*readAhead{}}
	q.bgCtx, q.bgCancel = context.WithCancel(context.Background())
	var err error
	if q.items, err = js.KV(ctx, bucketItems); err != nil {
		return nil, err
	}
	if q.pipes, err = js.KV(ctx, bucketPipes); err != nil {
		return nil, err
	}
	if q.config, err = js.KV(ctx, bucketConfig); err != nil {
		return nil, err
	}
	if q.pipe, err = js.NewPipeline(30 * time.Second); err != nil {
		return nil, err
	}
	return q, nil
}

// Subjects.
func (q *Queue) readyPrefix(ptype string) string {
	return q.js.Subject("tracker", "ready", jetstream.Token(ptype))
}

func (q *Queue) readySubject(r *Record) string {
	return q.js.Subject("tracker", "ready", jetstream.Token(r.PipelineType), jetstream.Token(r.RunOn), strconv.Itoa(r.level()))
}

func (q *Queue) stashSubject(stash string) string {
	return q.js.Subject("tracker", "stash", jetstream.Token(stash))
}

func (q *Queue) eventSubject(ptype, ev string) string {
	return q.js.Subject("tracker", "events", jetstream.Token(ptype), ev)
}

func (q *Queue) advisorySubject(pipeline string) string {
	return q.js.Subject("tracker", "advisory", jetstream.Token(pipeline))
}

func (q *Queue) resultSubject(ptype, rtype string) string {
	return q.js.Subject("tracker", "results", jetstream.Token(ptype), jetstream.Token(rtype))
}

// typeConfig returns the pipeline type's lease and max tries (cached for a few seconds).
func (q *Queue) typeConfig(ctx context.Context, ptype string) TypeConfig {
	q.cfgMu.Lock()
	c, ok := q.cfgCache[ptype]
	q.cfgMu.Unlock()
	if ok && time.Since(c.at) < 5*time.Second {
		return c.cfg
	}
	cfg := TypeConfig{Lease: Duration(q.lease), MaxTries: q.maxTries}
	if e, err := q.config.Get(ctx, "ptype."+ptype); err == nil {
		var stored TypeConfig
		if json.Unmarshal(e.Value, &stored) == nil {
			if stored.Lease > 0 {
				cfg.Lease = stored.Lease
			}
			if stored.MaxTries > 0 {
				cfg.MaxTries = stored.MaxTries
			}
		}
	} else if !errors.Is(err, jetstream.ErrNotFound) {
		return cfg // NATS trouble: defaults, not cached
	}
	q.cfgMu.Lock()
	q.cfgCache[ptype] = cachedCfg{cfg: cfg, at: time.Now()}
	q.cfgMu.Unlock()
	return cfg
}

func (q *Queue) invalidateTypeConfig(ptype string) {
	q.cfgMu.Lock()
	delete(q.cfgCache, ptype)
	q.cfgMu.Unlock()
}

// publishToken puts a ready token for r (whose Gen is already the new generation).
func (q *Queue) publishToken(ctx context.Context, r *Record) error {
	b := encodeToken(r.ID, r.Gen)
	subj := q.readySubject(r)
	if _, err := q.js.Publish(ctx, subj, b, jetstream.PubOpts{}); err != nil {
		return fmt.Errorf("ready token %s: %w", r.ID, err)
	}
	q.noteSubject(r.PipelineType, subj)
	return nil
}

// noteSubject adds a ready subject that just got a token to the order this pod's claims use,
// if they did not know it.
func (q *Queue) noteSubject(ptype, subj string) {
	q.orderMu.Lock()
	if c := q.order[ptype]; c != nil && c.counts[subj] == 0 {
		c.counts[subj] = 1
	}
	q.orderMu.Unlock()
}

// readyCounts returns the per-subject counts of a pipeline type's ready tokens, reused for
// orderTTL unless force is set; fresh says whether they were just read. Counts older than
// orderTTL are still used while a background read replaces them, so claims do not wait for it
// (a claim that finds nothing with cached counts reads them itself: force).
func (q *Queue) readyCounts(ctx context.Context, ptype string, force bool) (counts map[string]uint64, fresh bool, err error) {
	if !force && q.orderTTL > 0 {
		q.orderMu.Lock()
		c := q.order[ptype]
		if c != nil {
			counts = maps.Clone(c.counts)
			if !c.refreshing && time.Since(c.at) >= q.orderTTL {
				c.refreshing = q.background(func(ctx context.Context) { q.refreshCounts(ctx, ptype) })
			}
		}
		q.orderMu.Unlock()
		if counts != nil {
			return counts, false, nil
		}
		// no order yet: claims arriving together share one read
		q.orderMu.Lock()
		call := q.loading[ptype]
		leader := call == nil
		if leader {
			call = &countsCall{done: make(chan struct{})}
			q.loading[ptype] = call
		}
		q.orderMu.Unlock()
		if !leader {
			select {
			case <-call.done:
				if call.err == nil {
					return maps.Clone(call.counts), true, nil
				}
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
			// the shared read failed: read for this claim
		} else {
			call.counts, call.err = q.readCounts(ctx, ptype)
			q.orderMu.Lock()
			delete(q.loading, ptype)
			q.orderMu.Unlock()
			close(call.done)
			if call.err != nil {
				return nil, false, call.err
			}
			return maps.Clone(call.counts), true, nil
		}
	}
	counts, err = q.readCounts(ctx, ptype)
	return counts, err == nil, err
}

// countsCall is a read of the ready counts that several claims wait for.
type countsCall struct {
	done   chan struct{}
	counts map[string]uint64
	err    error
}

func (q *Queue) readCounts(ctx context.Context, ptype string) (map[string]uint64, error) {
	counts, err := q.js.SubjectCounts(ctx, streamReady, q.readyPrefix(ptype)+".>")
	if err != nil {
		return nil, err
	}
	q.orderMu.Lock()
	q.order[ptype] = &orderCache{at: time.Now(), counts: maps.Clone(counts)}
	q.orderMu.Unlock()
	return counts, nil
}

func (q *Queue) refreshCounts(ctx context.Context, ptype string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := q.readCounts(ctx, ptype); err != nil {
		q.log.Debug("tracker: ready counts", "pipeline_type", ptype, "err", err)
		q.orderMu.Lock()
		if c := q.order[ptype]; c != nil {
			c.refreshing = false
		}
		q.orderMu.Unlock()
	}
}

// background runs fn on its own goroutine until close; false when the queue is closed.
func (q *Queue) background(fn func(ctx context.Context)) bool {
	q.bgMu.Lock()
	defer q.bgMu.Unlock()
	if q.bgClosed {
		return false
	}
	q.bgWG.Add(1)
	go func() {
		defer q.bgWG.Done()
		fn(q.bgCtx)
	}()
	return true
}

// emptied notes that a ready subject had nothing to fetch, so that claims skip it until the
// counts are read again.
func (q *Queue) emptied(ptype, subject string) {
	q.orderMu.Lock()
	if c := q.order[ptype]; c != nil {
		delete(c.counts, subject)
	}
	q.orderMu.Unlock()
}

func (q *Queue) publishStashToken(ctx context.Context, r *Record) error {
	b := encodeToken(r.ID, r.Gen)
	if _, err := q.js.Publish(ctx, q.stashSubject(*r.Stash), b, jetstream.PubOpts{MsgID: "stash:" + r.ID + ":" + strconv.FormatUint(r.Gen, 10)}); err != nil {
		return fmt.Errorf("stash token %s: %w", r.ID, err)
	}
	return nil
}

// event publishes an item event (core NATS, captured by TRACKER_EVENTS; best effort).
func (q *Queue) event(r *Record, ev, pipeline, reason string, attempt int) {
	e := Event{Event: ev, ID: r.ID, Item: r.Item, PipelineType: r.PipelineType, Status: r.Status,
		Pipeline: pipeline, Reason: reason, Time: epoch(time.Now())}
	if attempt >= 0 {
		a := attempt
		e.Attempt = &a
	}
	q.later(pendingEvent{subject: q.eventSubject(r.PipelineType, ev), data: AppendEvent(make([]byte, 0, 256), &e)})
}

// later queues a message for the event publisher.
func (q *Queue) later(pe pendingEvent) {
	q.evMu.Lock()
	q.evPending = append(q.evPending, pe)
	first := len(q.evPending) == 1
	start := first && !q.evStarted
	if start {
		q.evStarted = true
	}
	q.evMu.Unlock()
	if start && !q.background(q.eventPublisher) {
		q.evMu.Lock()
		q.evStarted = false
		q.evMu.Unlock()
		q.publishEvents() // closed queue: at once
		return
	}
	if first {
		select {
		case q.evKick <- struct{}{}:
		default:
		}
	}
}

// eventDelay is how long the event publisher waits for more events before it sends a batch.
const eventDelay = time.Millisecond

// pendingEvent is an encoded item event waiting for the event publisher, or the acknowledgement
// of a ready token whose claim is stored (job set).
type pendingEvent struct {
	subject string
	data    []byte
	job     *jetstream.Job
}

// eventPublisher sends the queued item events (and token acknowledgements) in batches, in the order they were queued (one
// write to NATS carries many, instead of one write each), until the queue closes.
func (q *Queue) eventPublisher(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-ctx.Done():
			q.lastEvents()
			return
		case <-q.evKick:
		}
		t.Reset(eventDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			q.lastEvents()
			return
		case <-t.C:
		}
		q.publishEvents()
	}
}

// lastEvents publishes what is queued when the publisher stops; events queued later are published
// at once by event (the queue is closed then).
func (q *Queue) lastEvents() {
	q.evMu.Lock()
	q.evStarted = false
	q.evMu.Unlock()
	q.publishEvents()
}

// publishEvents sends every queued event (core NATS, best effort).
func (q *Queue) publishEvents() {
	q.evPubMu.Lock() // batches go out in order
	defer q.evPubMu.Unlock()
	q.evMu.Lock()
	batch := q.evPending
	q.evPending = q.evSpare[:0]
	q.evMu.Unlock()
	for i, e := range batch {
		if e.job != nil {
			_ = e.job.AckAsync()
			batch[i] = pendingEvent{}
			continue
		}
		if err := q.js.PublishCore(e.subject, e.data, nil); err != nil {
			q.log.Debug("item event", "subject", e.subject, "err", err)
		}
		batch[i] = pendingEvent{}
	}
	q.evMu.Lock()
	q.evSpare = batch[:0]
	q.evMu.Unlock()
}

// Enqueue stores a new item and makes it claimable (or stashes it). existed is true when an item
// with the same explicit id was already there (nothing is changed then).
func (q *Queue) Enqueue(ctx context.Context, it NewItem) (id string, existed bool, err error) {
	return q.enqueue(ctx, it, it.ID != "")
}

// enqueue is Enqueue; lookFirst reads the record of the item's id before writing anything (a
// retried submission then publishes no second ready token). Without it, an existing id is only
// found when the record is created: the ready token already sent is a harmless duplicate.
func (q *Queue) enqueue(ctx context.Context, it NewItem, lookFirst bool) (id string, existed bool, err error) {
	if err := it.Validate(); err != nil {
		return "", false, errStatus(400, "%s", err.Error())
	}
	id = it.ID
	if id == "" {
		id = newID()
	}
	now := epoch(time.Now())
	r := &Record{ID: id, Item: it.Item, QueuedBy: it.QueuedBy, PipelineType: it.PipelineType, Status: StatusTodo,
		Attempts: []Attempt{}, QueuedAt: now, Priority: it.Priority, RunOn: it.RunOn, AdminLog: []AdminLog{},
		Metadata: it.Metadata, Expires: it.Expires, Gen: firstGen()}
	if len(r.Metadata) == 0 {
		r.Metadata = json.RawMessage("{}")
	}
	if it.Explanation != "" {
		r.Explanation = sptr(it.Explanation)
	}
	if it.ParentItem != "" {
		r.ParentItem = sptr(it.ParentItem)
	}
	if it.Stash != "" {
		r.Stash = sptr(it.Stash)
		r.Status = StatusStashed
	}
	if lookFirst {
		if ent, err := q.items.Get(ctx, id); err == nil {
			return id, true, sameSubmission(ent.Value, it)
		}
	}
	b := encodeRecord(r)
	var rev uint64
	if r.Status == StatusStashed {
		if err = q.publishStashToken(ctx, r); err != nil {
			return "", false, err
		}
		q.index.begin(id)
		rev, err = q.items.Create(ctx, id, b, 0)
	} else {
		q.index.begin(id)
		rev, err = q.createWithToken(ctx, r, b)
	}
	q.index.end(id, err == nil, rev, b, r)
	if err != nil {
		if errors.Is(err, jetstream.ErrExists) {
			// the token we published is a harmless duplicate
			if ent, gerr := q.items.Get(ctx, id); gerr == nil {
				return id, true, sameSubmission(ent.Value, it)
			}
			return id, true, nil
		}
		return "", false, fmt.Errorf("enqueue %s: %w", id, err)
	}
	if r.Status == StatusStashed {
		q.event(r, "stashed", "", "", -1)
	} else {
		q.event(r, "queued", "", "", -1)
	}
	return id, false, nil
}

// createWithToken stores a new todo record and its ready token with both writes in flight at
// once: the token is sent first (on one connection the server receives it first, so a pod that
// dies while sending leaves at worst an orphan token, never a record without token) and the
// caller is answered only when both are acknowledged. When the token is refused but the record
// was stored, the token is published again; if that fails too, the record is deleted (CAS on its
// revision) so that nothing is half-applied.
func (q *Queue) createWithToken(ctx context.Context, r *Record, val []byte) (uint64, error) {
	tb := encodeToken(r.ID, r.Gen)
	subj := q.readySubject(r)
	tf, terr := q.pipe.Publish(subj, tb, jetstream.PubOpts{}, nil)
	if terr != nil {
		return 0, fmt.Errorf("ready token %s: %w", r.ID, terr)
	}
	cf, err := q.pipe.KVCreate(q.items, r.ID, val, nil)
	if err != nil {
		_, _ = tf.Wait(ctx) // the token alone is an orphan, dropped when claimed
		return 0, fmt.Errorf("enqueue %s: %w", r.ID, err)
	}
	_, terr = tf.Wait(ctx)
	ack, err := cf.Wait(ctx)
	if err != nil {
		if !errors.Is(err, jetstream.ErrExists) {
			return 0, fmt.Errorf("enqueue %s: %w", r.ID, err)
		}
		// the key exists, or held a value that was deleted (Create accepts that one); an
		// existing item is the caller's business and our token a harmless duplicate
		rev, err := q.items.Create(ctx, r.ID, val, 0)
		if err != nil {
			return 0, err
		}
		ack.Sequence = rev
	}
	if terr != nil {
		if err := q.publishToken(ctx, r); err != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if derr := q.items.Delete(dctx, r.ID, ack.Sequence); derr != nil {
				q.log.Error("tracker: queued item without ready token", "id", r.ID, "token_err", err, "delete_err", derr)
			}
			return 0, fmt.Errorf("ready token %s: %w", r.ID, terr)
		}
		return ack.Sequence, nil
	}
	q.noteSubject(r.PipelineType, subj)
	return ack.Sequence, nil
}

// firstGen is the ready-queue generation of a new record: the clock in microseconds, so that an
// id queued again after its record expired (--tracker-keep-finished) starts above every
// generation of its earlier life, and ready tokens left from that life are stale.
func firstGen() uint64 { return uint64(time.Now().UnixMicro()) }

// sameSubmission checks that a submission with the id of a stored item is that item again (a
// retried submission: answered like the first one); anything else is a 409.
func sameSubmission(stored []byte, it NewItem) error {
	r, err := decodeRecord(stored)
	if err != nil {
		return err
	}
	compact := func(b []byte) string {
		if len(b) == 0 {
			return "{}"
		}
		var buf bytes.Buffer
		if json.Compact(&buf, b) != nil {
			return string(b)
		}
		return buf.String()
	}
	deref := func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	}
	if r.Item != it.Item || r.PipelineType != it.PipelineType || r.Priority != it.Priority || r.RunOn != it.RunOn ||
		r.QueuedBy != it.QueuedBy || deref(r.Stash) != it.Stash || deref(r.Explanation) != it.Explanation ||
		deref(r.ParentItem) != it.ParentItem || compact(r.Metadata) != compact(it.Metadata) {
		return errStatus(409, "item %s exists with other content", r.ID)
	}
	return nil
}

// EnqueueBatch enqueues items keeping their order among items of the same queue (pipeline
// type, run_on and level); different queues are filled in parallel. An item given with the id of
// a stored item is a retried submission when its content is the same (nothing changes, no error)
// and gets a 409 error in its slot otherwise.
func (q *Queue) EnqueueBatch(ctx context.Context, items []NewItem) ([]string, []error) {
	ids := make([]string, len(items))
	errs := make([]error, len(items))
	if len(items) == 1 {
		ids[0], _, errs[0] = q.Enqueue(ctx, items[0])
		return ids, errs
	}
	groups := map[string][]int{}
	var order []string
	for i := range items {
		it := &items[i]
		k := it.PipelineType + "\x00" + it.RunOn + "\x00" + strconv.Itoa(it.Priority) + "\x00" + it.Stash
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, k := range order {
		wg.Add(1)
		sem <- struct{}{}
		go func(idx []int) {
			defer func() { <-sem; wg.Done() }()
			for _, i := range idx {
				id, _, err := q.Enqueue(ctx, items[i])
				ids[i], errs[i] = id, err
			}
		}(groups[k])
	}
	wg.Wait()
	return ids, errs
}

// effects says what a transition does besides writing the record.
type effects struct {
	enqueue  bool   // make the item todo with a new ready token
	dlq      string // copy the item to the dead-letter stream with this reason
	events   []string
	pipeline string // for events
	reason   string
	attempt  int
	revoke   *revocation // send Item:revoked to the former claimant
}

type revocation struct {
	pipeline string
	attempt  int
	reason   string
}

// transition applies fn to the item record with CAS (retrying on conflict); fn changes the copy it
// is given and returns the side effects, or jetstream.ErrSkip to leave the record as it is.
// Tokens and dead letters are written before the record, so a crash in between leaves at worst a
// stale token or a dead-letter copy, never a todo item without token.
func (q *Queue) transition(ctx context.Context, id string, fn func(r *Record) (effects, error)) (*Record, error) {
	for {
		cur, rev, _, err := q.current(ctx, id)
		if err != nil {
			return nil, err
		}
		next := cur.clone()
		eff, err := fn(next)
		if errors.Is(err, jetstream.ErrSkip) {
			return cur, nil
		}
		if err != nil {
			return nil, err
		}
		if eff.enqueue {
			next.Status = StatusTodo
			next.Claim = nil
			next.Gen = cur.Gen + 1
			if err := q.publishToken(ctx, next); err != nil {
				return nil, err
			}
		}
		if eff.dlq != "" {
			if err := q.deadLetter(ctx, next, eff.dlq); err != nil {
				return nil, err
			}
		}
		b := encodeRecord(next)
		q.index.begin(id)
		nrev, err := q.items.WriteLean(ctx, id, b, rev, q.recordTTL(next))
		q.index.end(id, err == nil, nrev, b, next)
		if err != nil {
			if errors.Is(err, jetstream.ErrConflict) {
				q.index.forget(id, rev)
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				continue
			}
			return nil, fmt.Errorf("update item %s: %w", id, err)
		}
		for _, ev := range eff.events {
			q.event(next, ev, eff.pipeline, eff.reason, eff.attempt)
		}
		if eff.revoke != nil {
			q.revoke(next, eff.revoke)
		}
		return next, nil
	}
}

// recordTTL is how long a record with r's status is kept: --tracker-keep-finished for done and
// error items, for ever (0) for the others (a later write, such as an operator's requeue of an
// error item, replaces the record and its TTL).
func (q *Queue) recordTTL(r *Record) time.Duration {
	if r.Status == StatusDone || r.Status == StatusError {
		return q.keepFinished
	}
	return 0
}

func (q *Queue) deadLetter(ctx context.Context, r *Record, reason string) error {
	b, _ := json.Marshal(r)
	h := jetstream.Header{}
	h.Set(jetstream.HeaderDLQReason, reason)
	h.Set(jetstream.HeaderDLQStream, bucketItems)
	h.Set(jetstream.HeaderDLQSubject, q.js.Subject("tracker", "items", jetstream.Token(r.PipelineType)))
	h.Set(jetstream.HeaderDLQDeliveries, strconv.Itoa(len(r.Attempts)))
	h.Set(jetstream.HeaderDLQTime, time.Now().UTC().Format(time.RFC3339Nano))
	h.Set("Tracker-Item-Id", r.ID)
	subj := q.js.Subject("dlq", "tracker", "items", jetstream.Token(r.PipelineType))
	msgID := fmt.Sprintf("tracker-dlq:%s:%d:%d", r.ID, r.Gen, len(r.Attempts))
	if _, err := q.js.Publish(ctx, subj, b, jetstream.PubOpts{MsgID: msgID, Header: h}); err != nil {
		return fmt.Errorf("dead-letter %s: %w", r.ID, err)
	}
	return nil
}

// revoke tells the former claimant's connections (on any pod) that the claim is gone.
func (q *Queue) revoke(r *Record, rv *revocation) {
	if q.metrics != nil {
		q.metrics.revocations.Inc()
	}
	frame := EncodeAdvisory("Item:revoked", map[string]any{"id": r.ID, "attempt": rv.attempt, "reason": rv.reason})
	if err := q.js.PublishCore(q.advisorySubject(rv.pipeline), frame, nil); err != nil {
		q.log.Warn("revoke advisory", "id", r.ID, "pipeline", rv.pipeline, "err", err)
	}
}

// consumer returns (creating on first use) the taker on the durable consumer of one ready
// subject.
func (q *Queue) consumer(ctx context.Context, subject string) (*jetstream.Taker, error) {
	q.consMu.Lock()
	t, ok := q.cons[subject]
	q.consMu.Unlock()
	if ok {
		return t, nil
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(q.js.Names().Unprefix(subject)))
	name := fmt.Sprintf("TRACKER_RQ_%016x", h.Sum64())
	c, err := q.js.EnsureConsumer(ctx, jetstream.ConsumerSpec{Stream: streamReady, Durable: name,
		Description: "tracker ready tokens " + subject, FilterSubjects: []string{subject},
		AckWait: 30 * time.Second, MaxAckPending: 20000, InactiveThreshold: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	t = c.Taker()
	q.consMu.Lock()
	if old, ok := q.cons[subject]; ok {
		t.Close()
		t = old // another claim bound it meanwhile
	} else {
		q.cons[subject] = t
	}
	q.consMu.Unlock()
	return t, nil
}

func (q *Queue) dropConsumer(subject string) {
	q.consMu.Lock()
	t := q.cons[subject]
	delete(q.cons, subject)
	q.consMu.Unlock()
	if t != nil {
		t.Close()
	}
}

// close stops the background work and releases the takers' subscriptions.
func (q *Queue) close() {
	q.bgMu.Lock()
	q.bgClosed = true
	q.bgMu.Unlock()
	q.bgCancel()
	q.bgWG.Wait()
	q.consMu.Lock()
	all := q.cons
	q.cons = map[string]*jetstream.Taker{}
	q.consMu.Unlock()
	for _, t := range all {
		t.Close()
	}
	q.pipe.Close()
}

type candidate struct {
	subject string
	level   int
}

// candidates orders the non-empty ready subjects of a pipeline type for a pipeline:
// pipeline-specific first, then general; ascending level within each.
func candidates(counts map[string]uint64, prefix, pipeline string) []candidate {
	var specific, general []candidate
	mine := jetstream.Token(pipeline)
	for subj, n := range counts {
		if n == 0 || !strings.HasPrefix(subj, prefix+".") {
			continue
		}
		rest := subj[len(prefix)+1:]
		dot := strings.LastIndexByte(rest, '.')
		if dot < 0 {
			continue
		}
		lvl, err := strconv.Atoi(rest[dot+1:])
		if err != nil {
			continue
		}
		switch rest[:dot] {
		case mine:
			specific = append(specific, candidate{subj, lvl})
		case "_":
			general = append(general, candidate{subj, lvl})
		}
	}
	by := func(l []candidate) {
		sort.Slice(l, func(i, j int) bool { return l[i].level < l[j].level })
	}
	by(specific)
	by(general)
	return append(specific, general...)
}

// Claim takes the first claimable item of ptype for pipeline; nil when there is none.
func (q *Queue) Claim(ctx context.Context, ptype, pipeline, version string) (*Record, error) {
	prefix := q.readyPrefix(ptype)
	budget := 64 // fetches per claim (stale tokens are skipped)
	force := false
	for budget > 0 {
		counts, fresh, err := q.readyCounts(ctx, ptype, force)
		if err != nil {
			return nil, fmt.Errorf("claim %s: %w", ptype, err)
		}
		cands := candidates(counts, prefix, pipeline)
		progressed := false
		for _, c := range cands {
			cons, err := q.consumer(ctx, c.subject)
			if err != nil {
				return nil, fmt.Errorf("claim %s: %w", ptype, err)
			}
			rec, done, err := q.claimFrom(ctx, c.subject, cons, ptype, pipeline, version, fresh, &budget, &progressed)
			if done {
				return rec, err
			}
			if progressed {
				break // look at the order again: it may have changed meanwhile
			}
		}
		if !progressed {
			if fresh {
				return nil, nil
			}
			force = true // the cached order was out of date: read it now
		}
	}
	return nil, nil
}

// claimFrom takes tokens of one ready subject (fetched in advance, or fetched now) until one is
// claimed (done), the subject has none (not done) or the budget of fetches is spent.
func (q *Queue) claimFrom(ctx context.Context, subject string, cons *jetstream.Taker, ptype, pipeline, version string,
	fresh bool, budget *int, progressed *bool) (*Record, bool, error) {
	ra := q.readAheadFor(subject)
	ra.enter()
	defer ra.leave()
	for *budget > 0 {
		*budget--
		job := ra.pop()
		if job == nil {
			var wait time.Duration
			if fresh {
				// the counts were just read and say there is something: a no-wait pull
				// can miss a message stored a moment ago, and a busy server (or a consumer
				// made a moment ago) can take more than a few milliseconds to hand it
				// over, so wait for it; the wait ends as soon as a token comes, and only a
				// subject whose tokens are all in flight elsewhere costs the whole of it
				wait = 100 * time.Millisecond
			}
			var err error
			job, err = cons.Next(ctx, wait)
			if err != nil {
				// the consumer may have been removed (idle for a day): bind it again, once
				q.dropConsumer(subject)
				if cons, err = q.consumer(ctx, subject); err == nil {
					job, err = cons.Next(ctx, 0)
				}
				if err != nil {
					q.dropConsumer(subject)
					return nil, true, fmt.Errorf("claim %s: %w", ptype, err)
				}
			}
		}
		if job == nil {
			q.emptied(ptype, subject)
			return nil, false, nil
		}
		q.refill(ra, cons)
		*progressed = true
		rec, err := q.take(ctx, job, pipeline, version)
		if err != nil || rec != nil {
			return rec, true, err
		}
	}
	return nil, false, nil
}

// take claims the item of one ready token if the token is current; nil when it is stale.
func (q *Queue) take(ctx context.Context, job *jetstream.Job, pipeline, version string) (*Record, error) {
	tok, terr := decodeToken(job.Data)
	if terr != nil || tok.ID == "" {
		_ = job.AckAsync()
		return nil, nil
	}
	young := time.Since(job.Time) < tokenGrace
	var ent jetstream.Entry
	var cachedRec *Record // ent decoded, when the cache had it
	var err error
	fromBucket := false // ent was read from the bucket (the cache may lag it)
	if c, ok := q.index.todoValue(tok.ID); ok {
		ent = jetstream.Entry{Key: tok.ID, Value: c.val, Revision: c.rev} // a stale value fails the CAS below
		cachedRec = c.rec
	} else {
		ent, err = q.items.Get(ctx, tok.ID)
		fromBucket = true
	}
	behind := 0 // times the record was found behind the token
	for {
		if err != nil && !errors.Is(err, jetstream.ErrNotFound) {
			_ = job.Retry(0)
			return nil, fmt.Errorf("claim %s: %w", tok.ID, err)
		}
		var rec *Record
		if err == nil {
			var derr error
			if rec = cachedRec; rec == nil {
				rec, derr = decodeRecord(ent.Value)
			}
			cachedRec = nil
			if derr != nil {
				_ = job.AckAsync()
				return nil, nil
			}
			// a token is at most one generation ahead of the stored record (published just
			// before the record's update); one further ahead is from another life of the id, or
			// from a create that lost to another pod's
			if rec.Gen > tok.Gen || (rec.Gen == tok.Gen && rec.Status != StatusTodo) || (fromBucket && tok.Gen > rec.Gen+1) {
				_ = job.AckAsync() // stale
				return nil, nil
			}
		}
		if rec == nil || rec.Gen < tok.Gen {
			// the token's writer has not stored the record yet (it does so right after
			// publishing the token): look again shortly, then hand the token back
			if !young {
				_ = job.AckAsync() // an orphan: its writer died before storing the record
				return nil, nil
			}
			if behind < 12 {
				// this pod's own enqueues show up in the cache the moment they are stored;
				// others' are read back, a little later each time (up to ~30 ms in all)
				behind++
				if behind > 2 {
					time.Sleep(time.Duration(1<<min(behind-3, 3)) * time.Millisecond)
				}
				if c, ok := q.index.todoValue(tok.ID); ok && c.rev > ent.Revision {
					ent, err = jetstream.Entry{Key: tok.ID, Value: c.val, Revision: c.rev}, nil
					cachedRec, fromBucket = c.rec, false
				} else {
					ent, err = q.items.Get(ctx, tok.ID)
					fromBucket = true
				}
				continue
			}
			_ = job.Retry(100 * time.Millisecond)
			return nil, nil
		}
		cfg := q.typeConfig(ctx, rec.PipelineType)
		now := time.Now()
		next := rec.clone()
		next.Status = StatusClaimed
		next.Attempts = append(next.Attempts, Attempt{Pipeline: pipeline, PipelineVersion: version, Time: epoch(now)})
		next.ClaimedAt = fptr(epoch(now))
		next.Claim = &Claim{Pipeline: pipeline, Attempt: len(next.Attempts) - 1,
			LeaseUntil: epoch(now.Add(time.Duration(cfg.Lease))), Pod: q.pod}
		b := encodeRecord(next)
		q.index.begin(tok.ID)
		rev, uerr := q.items.WriteLean(ctx, tok.ID, b, ent.Revision, 0)
		q.index.end(tok.ID, uerr == nil, rev, b, next)
		if uerr == nil {
			// the claim is stored: the token is acknowledged with the next batch of events
			// (were the pod to die first, the token comes back and is dropped as stale)
			q.later(pendingEvent{job: job})
			q.event(next, "claimed", pipeline, "", next.Claim.Attempt)
			return next, nil
		}
		if !errors.Is(uerr, jetstream.ErrConflict) {
			_ = job.Retry(0)
			return nil, fmt.Errorf("claim %s: %w", tok.ID, uerr)
		}
		ent, err = q.items.Get(ctx, tok.ID)
		fromBucket = true
	}
}

// holder checks that pipeline holds the item's current claim (and attempt, when given).
func holder(r *Record, pipeline string, attempt int64, hasAttempt bool) error {
	if r.Status != StatusClaimed || r.Claim == nil {
		return errStatus(409, "Item %s is not claimed (status %s)", r.ID, r.Status)
	}
	if r.Claim.Pipeline != pipeline {
		return errStatus(409, "Item %s is claimed by another pipeline", r.ID)
	}
	if hasAttempt && int64(r.Claim.Attempt) != attempt {
		return errStatus(409, "Attempt %d is not the current attempt (%d) of item %s", attempt, r.Claim.Attempt, r.ID)
	}
	return nil
}

// Finish marks the item done. A retried finish by the same pipeline is a no-op.
func (q *Queue) Finish(ctx context.Context, id, pipeline string) error {
	_, err := q.transition(ctx, id, func(r *Record) (effects, error) {
		if r.Status == StatusDone {
			if n := len(r.Attempts); n > 0 && r.Attempts[n-1].Pipeline == pipeline {
				return effects{}, jetstream.ErrSkip
			}
			return effects{}, errStatus(409, "Item %s is already done", id)
		}
		if err := holder(r, pipeline, 0, false); err != nil {
			return effects{}, err
		}
		now := epoch(time.Now())
		att := r.Claim.Attempt
		r.Attempts[att].End = fptr(now)
		r.Status = StatusDone
		r.FinishedAt = fptr(now)
		r.Claim = nil
		return effects{events: []string{"done"}, pipeline: pipeline, attempt: att}, nil
	})
	return err
}

// Fail records a failed attempt: requeue, or error + dead letter after max tries (or fatal).
// attempt < 0 means "the current one" (clients from before the attempt parameter).
func (q *Queue) Fail(ctx context.Context, id, pipeline, message string, attempt int64, hasAttempt, fatal bool) error {
	_, err := q.transition(ctx, id, func(r *Record) (effects, error) {
		if r.Status == StatusDone {
			return effects{}, errStatus(409, "Item %s is done", id)
		}
		if hasAttempt {
			if attempt < 0 || attempt >= int64(len(r.Attempts)) {
				return effects{}, errStatus(409, "Attempt %d of item %s does not exist", attempt, id)
			}
			a := r.Attempts[attempt]
			if a.Pipeline != pipeline {
				return effects{}, errStatus(409, "Attempt %d of item %s belongs to another pipeline", attempt, id)
			}
			if a.Error != nil && !(r.Status == StatusClaimed && r.Claim != nil && int64(r.Claim.Attempt) == attempt) {
				return effects{}, jetstream.ErrSkip // the same failure, retried
			}
		}
		if err := holder(r, pipeline, attempt, hasAttempt); err != nil {
			return effects{}, err
		}
		att := r.Claim.Attempt
		msg := message
		r.Attempts[att].Error = &msg
		r.Attempts[att].End = fptr(epoch(time.Now()))
		r.Claim = nil
		cfg := q.typeConfig(ctx, r.PipelineType)
		eff := effects{events: []string{"failed"}, pipeline: pipeline, attempt: att, reason: message}
		if fatal || len(r.Attempts) >= cfg.MaxTries {
			r.Status = StatusError
			r.FinishedAt = fptr(epoch(time.Now()))
			eff.dlq = "failed: " + truncate(message, 512)
			if fatal {
				eff.dlq = "fatal: " + truncate(message, 512)
			}
			eff.events = append(eff.events, "error")
			return eff, nil
		}
		eff.enqueue = true
		eff.events = append(eff.events, "queued")
		return eff, nil
	})
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// expire ends a claim whose lease ran out: the attempt counts as failed, the item is requeued
// (or errors out after max tries) and the claimant gets Item:revoked.
func (q *Queue) expire(ctx context.Context, id string, attempt int) error {
	_, err := q.transition(ctx, id, func(r *Record) (effects, error) {
		now := time.Now()
		if r.Status != StatusClaimed || r.Claim == nil || r.Claim.Attempt != attempt || r.Claim.LeaseUntil > epoch(now) {
			return effects{}, jetstream.ErrSkip
		}
		reason := "lease expired"
		pipeline := r.Claim.Pipeline
		r.Attempts[attempt].Error = &reason
		r.Attempts[attempt].End = fptr(epoch(now))
		r.Claim = nil
		cfg := q.typeConfig(ctx, r.PipelineType)
		eff := effects{events: []string{"revoked"}, pipeline: pipeline, attempt: attempt, reason: reason,
			revoke: &revocation{pipeline: pipeline, attempt: attempt, reason: reason}}
		if len(r.Attempts) >= cfg.MaxTries {
			r.Status = StatusError
			r.FinishedAt = fptr(epoch(now))
			eff.dlq = "lease expired after max tries"
			eff.events = append(eff.events, "error")
			return eff, nil
		}
		eff.enqueue = true
		eff.events = append(eff.events, "queued")
		return eff, nil
	})
	return err
}

// Renew extends the leases of pipeline's open claims (System:ping). A lease is only rewritten when
// a tenth of it has passed, so frequent pings do not rewrite records all the time.
func (q *Queue) Renew(ctx context.Context, pipeline string) error {
	var errs []error
	for _, c := range q.index.ofPipeline(pipeline) {
		cfg := q.typeConfig(ctx, c.ptype)
		lease := time.Duration(cfg.Lease)
		if time.Until(epochTime(c.lease)) > lease-lease/10 {
			continue
		}
		_, err := q.transition(ctx, c.id, func(r *Record) (effects, error) {
			if r.Status != StatusClaimed || r.Claim == nil || r.Claim.Pipeline != pipeline || r.Claim.Attempt != c.attempt {
				return effects{}, jetstream.ErrSkip
			}
			if r.Claim.LeaseUntil < epoch(time.Now()) {
				return effects{}, jetstream.ErrSkip // already expired: the sweeper takes it
			}
			r.Claim.LeaseUntil = epoch(time.Now().Add(lease))
			return effects{}, nil
		})
		if err != nil {
			var se *statusError
			if errors.As(err, &se) {
				continue
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func epochTime(f float64) time.Time {
	return time.Unix(0, int64(f*1e9))
}

// storedResult is a message of the results stream (schemas/tracker/result.json).
type storedResult struct {
	Attempt       int64           `json:"attempt"`
	Data          json.RawMessage `json:"data"`
	DecodedFields []string        `json:"decoded_fields"`
	ID            string          `json:"id"`
	Item          string          `json:"item"`
	Pipeline      string          `json:"pipeline"`
	PipelineType  string          `json:"pipeline_type"`
	Time          float64         `json:"time"`
	Type          string          `json:"type"`
}

// current is an item's record and revision: this pod's copy when the item's claim is in its
// index (cached=true; kept current by the bucket watch, so it may lag a change made through
// another pod a moment ago: a CAS write with it fails then), else the bucket's.
func (q *Queue) current(ctx context.Context, id string) (rec *Record, rev uint64, cached bool, err error) {
	if c, ok := q.index.cached(id); ok {
		if c.rec != nil {
			return c.rec, c.rev, true, nil
		}
		rec, err := decodeRecord(c.val)
		return rec, c.rev, true, err
	}
	rec, rev, err = q.stored(ctx, id)
	return rec, rev, false, err
}

// stored reads an item's record from the bucket.
func (q *Queue) stored(ctx context.Context, id string) (*Record, uint64, error) {
	ent, err := q.items.Get(ctx, id)
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return nil, 0, errStatus(404, "Item %s not found", id)
		}
		return nil, 0, err
	}
	rec, err := decodeRecord(ent.Value)
	return rec, ent.Revision, err
}

// Store appends a result to the results stream; the returned id is stable under retry.
func (q *Queue) Store(ctx context.Context, id, pipeline string, attempt int64, rtype string, result json.RawMessage, decode []string) (string, error) {
	rec, _, cached, err := q.current(ctx, id)
	if err == nil && cached && holder(rec, pipeline, attempt, true) != nil {
		// this pod's copy may lag a claim made through another pod: the bucket decides
		rec, _, err = q.stored(ctx, id)
	}
	if err != nil {
		return "", fmt.Errorf("store %s: %w", id, err) // a status error keeps its status and message
	}
	if err := holder(rec, pipeline, attempt, true); err != nil {
		return "", err
	}
	data, decoded, err := decodeResult(result, decode)
	if err != nil {
		return "", err
	}
	newID := resultID(id, attempt, rtype, result, decode)
	b, err := json.Marshal(storedResult{ID: newID, Item: id, Type: rtype, Attempt: attempt, Pipeline: pipeline,
		PipelineType: rec.PipelineType, Time: epoch(time.Now()), Data: data, DecodedFields: decoded})
	if err != nil {
		return "", errStatus(400, "Parameter result cannot be stored: %v", err)
	}
	h := jetstream.Header{}
	h.Set("Tracker-Item-Id", id)
	h.Set("Tracker-Result-Type", rtype)
	h.Set("Tracker-Attempt", strconv.FormatInt(attempt, 10))
	if _, err := q.js.Publish(ctx, q.resultSubject(rec.PipelineType, rtype), b, jetstream.PubOpts{MsgID: "result:" + newID + ":" + strconv.FormatUint(rec.Gen, 10), Header: h}); err != nil {
		return "", fmt.Errorf("store %s: %w", id, err)
	}
	return newID, nil
}

package zerotask

// broker.go: the ZeroTask methods, independent of the transport (ZeroMQ, HTTP, NATS). Every
// state change is a KV compare-and-set on the task's, node's or client's record, so any pod can
// serve any request; a pod only remembers which ids were registered over its own connections.

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jetbridge/jetbridge/jetstream"
)

// Config is the broker's tuning (from the adapter's flags).
type Config struct {
	// ResultTTL is how long a result or error stays after client_task_result fetched it.
	ResultTTL time.Duration
	// NodeTimeout drops a node not heard of (no connection, no heartbeat) for that long.
	NodeTimeout time.Duration
	// Lease is the watchdog period: a waiting task is announced again, and an assigned task's node
	// checked, every Lease.
	Lease time.Duration
	// MaxAttempts caps how many times a task is assigned; a task whose node is lost that many
	// times fails and is copied to the dead-letter stream.
	MaxAttempts int
}

// Transports a caller may use.
const (
	viaZMQ  = "zmq"
	viaHTTP = "http"
	viaNATS = "nats"
)

// caller identifies where a request came from: a ZeroMQ connection (routing id) or HTTP/NATS.
type caller struct {
	transport string
	conn      string // routing id bytes (ZeroMQ only)
}

func (c caller) connHex() string { return hex.EncodeToString([]byte(c.conn)) }

// Events published to every pod's PUB socket and to NATS (zerotask.events.<event>).
const (
	evTaskReady     = "task_ready"
	evBrokerNewTask = "broker_new_task"
	evResultReady   = "task_result_ready"
)

var eventMethods = map[string]string{
	evTaskReady:     "zerotask.node.task_ready",
	evBrokerNewTask: "zerotask.node.broker_new_task",
	evResultReady:   "zerotask.client.task_result_ready",
}

// Broker implements the methods on top of JetStream.
type Broker struct {
	cfg     Config
	js      *jetstream.Client
	log     *slog.Logger
	pod     string
	tasks   *jetstream.KV
	nodes   *jetstream.KV
	clients *jetstream.KV
	m       *brokerMetrics

	// connected reports whether a ZeroMQ connection (routing id) is still open on this pod.
	connected func(conn string) bool
	// reannounce asks for the waiting tasks to be announced again (a node just connected).
	reannounce func()

	// pipe sends the writes that may be in flight together (JetStream acknowledgements parsed
	// by hand).
	pipe *jetstream.Pipeline
	// fetched queues results to mark fetched (their expiry starts) off the reply path; the marks
	// are pipelined (at most maxMarks in flight) and one that lost its condition is retried on
	// refetch.
	fetched   chan fetchItem
	refetch   chan fetchItem
	markSlots chan struct{}
	marks     sync.WaitGroup

	mu     sync.Mutex
	evSubj sync.Map               // event → subject
	conns  map[string]*connState  // routing id → what was registered over it
	nodeL  map[string]*localEntry // node id → local registration
	cliL   map[string]*localEntry // client id → local registration
	cache  taskCache
	// held are the watchdog deliveries this pod holds, by task id: acked as soon as the task is
	// finished or failed (here or, told by the result event, on any pod) instead of at its next
	// lease.
	heldMu   sync.Mutex
	held     map[string]*jetstream.Job
	done     map[string]struct{} // tasks done before their delivery came (bounded by doneRing)
	doneRing []string
	doneNext int
}

// connState is what one ZeroMQ connection registered.
type connState struct {
	clients map[string]bool
	nodes   map[string]bool
}

// localEntry is a client or node registered through this pod.
type localEntry struct {
	conn      string // routing id, "" over HTTP/NATS
	rev       uint64 // revision of our last write of its record
	lastWrite time.Time
	tasks     map[string]bool // nodes: tasks assigned through this pod
}

func newBroker(cfg Config, js *jetstream.Client, log *slog.Logger, pod string, m *brokerMetrics) *Broker {
	return &Broker{cfg: cfg, js: js, log: log, pod: pod, m: m,
		connected:  func(string) bool { return false },
		reannounce: func() {},
		conns:      map[string]*connState{}, nodeL: map[string]*localEntry{}, cliL: map[string]*localEntry{},
		cache: taskCache{max: 100000, m: map[string]cachedTask{}}, fetched: make(chan fetchItem, 4096),
		refetch: make(chan fetchItem, 1024), markSlots: make(chan struct{}, maxMarks),
		held: map[string]*jetstream.Job{}, done: map[string]struct{}{}}
}

func (b *Broker) open(ctx context.Context) error {
	var err error
	if b.tasks, err = b.js.KV(ctx, bucketTasks); err != nil {
		return err
	}
	if b.nodes, err = b.js.KV(ctx, bucketNodes); err != nil {
		return err
	}
	if b.clients, err = b.js.KV(ctx, bucketClient); err != nil {
		return err
	}
	b.pipe, err = b.js.NewPipeline(30 * time.Second)
	return err
}

// close stops what open started.
func (b *Broker) close() {
	if b.pipe != nil {
		b.pipe.Close()
	}
}

// queueSubject is the work-queue subject of one task: zerotask.queue.<method>.<task key>.
func (b *Broker) queueSubject(method, id string) string {
	return b.js.Subject("zerotask", "queue", jetstream.Token(method), key(id))
}

type handler func(b *Broker, ctx context.Context, c caller, params json.RawMessage) (any, *RPCError)

var methods map[string]handler

func init() {
	methods = map[string]handler{
		"client_connect":     (*Broker).clientConnect,
		"client_disconnect":  (*Broker).clientDisconnect,
		"client_new_task":    (*Broker).clientNewTask,
		"client_task_status": (*Broker).clientTaskStatus,
		"client_task_result": (*Broker).clientTaskResult,
		"node_connect":       (*Broker).nodeConnect,
		"node_disconnect":    (*Broker).nodeDisconnect,
		"node_task_request":  (*Broker).nodeTaskRequest,
		"node_task_status":   (*Broker).nodeTaskStatus,
		"task_status":        (*Broker).nodeTaskStatus,
		"node_task_finished": (*Broker).nodeTaskFinished,
		"node_task_failed":   (*Broker).nodeTaskFailed,
		"node_heartbeat":     (*Broker).nodeHeartbeat,
		"node_status":        (*Broker).nodeStatus,
		"broker_node_status": (*Broker).nodeStatus,
	}
	for name := range methods {
		knownMethods[strconv.Quote(name)] = name
		knownMethods[strconv.Quote(MethodPrefix+name)] = MethodPrefix + name
	}
}

// MethodPrefix is the namespace of the broker's methods ("zerotask.broker.client_connect"); the
// bare names are accepted too.
const MethodPrefix = "zerotask.broker."

func lookup(method string) (string, handler) {
	name := strings.TrimPrefix(method, MethodPrefix)
	h, ok := methods[name]
	if !ok {
		return "", nil
	}
	return name, h
}

// Handle answers one frame: a single request, a notification (null) or a batch. It never fails:
// every problem becomes a JSON-RPC error. The frame belongs to Handle from then on (decoded params
// are kept in task records without a copy): callers pass a buffer nobody reuses.
func (b *Broker) Handle(ctx context.Context, c caller, frame []byte) []byte {
	// The usual frame, one well-formed request object, skips Decoded (as decode would take it).
	if i := skipSpace(frame, 0); i < len(frame) && frame[i] == '{' && utf8.Valid(frame) {
		if obj, ok := fastRequest(frame, true); ok {
			r, e := decodeObject(&obj)
			out, _ := b.call(ctx, c, r, e)
			return out
		}
	}
	d, perr := decode(frame, true)
	if perr != nil {
		b.m.request("invalid", perr.Code)
		return EncodeError(nil, perr)
	}
	if !d.Batch {
		out, _ := b.call(ctx, c, d.Requests[0], d.Errors[0])
		return out
	}
	var parts [][]byte
	for i := range d.Requests {
		if out, reply := b.call(ctx, c, d.Requests[i], d.Errors[i]); reply {
			parts = append(parts, out)
		}
	}
	if len(parts) == 0 {
		return nullReply
	}
	n := 2
	for _, p := range parts {
		n += len(p) + 2
	}
	out := make([]byte, 0, n)
	out = append(out, '[')
	for i, p := range parts {
		if i > 0 {
			out = append(out, ',', ' ')
		}
		out = append(out, p...)
	}
	return append(out, ']')
}

// call runs one request; reply is false for a notification inside a batch (nothing to answer).
func (b *Broker) call(ctx context.Context, c caller, r Request, derr *RPCError) (out []byte, reply bool) {
	if derr != nil {
		b.m.request("invalid", derr.Code)
		return EncodeError(r.ID, derr), true
	}
	start := time.Now()
	name, h := lookup(r.Method)
	if h == nil {
		b.m.request("unknown", CodeMethodNotFound)
		if r.Notification() {
			return nullReply, false
		}
		return EncodeError(r.ID, rpcErr(CodeMethodNotFound)), true
	}
	res, rerr := h(b, ctx, c, r.Params)
	code := 0
	if rerr != nil {
		code = rerr.Code
	}
	b.m.request(name, code)
	b.m.latency(name, time.Since(start))
	if rerr != nil && rerr.Code == CodeInternal && len(rerr.Raw) == 0 {
		b.log.Warn("zerotask request failed", "method", name, "err", rerr.Message)
	}
	if r.Notification() {
		return nullReply, false
	}
	if rerr != nil {
		return EncodeError(r.ID, rerr), true
	}
	out, err := EncodeResult(r.ID, res)
	if err != nil {
		return EncodeError(r.ID, internal(err)), true
	}
	return out, true
}

func internal(err error) *RPCError {
	return rpcErr(CodeInternal, "Internal error: "+err.Error())
}

// ---- clients ----

func (b *Broker) clientConnect(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	a, _, e := bindParams(params, []string{"client_id"}, 0, false)
	if e != nil {
		return nil, e
	}
	id, e := a.str("client_id", false)
	if e != nil {
		return nil, e
	}
	if id == "" {
		id = randomID()
	}
	if err := b.register(ctx, b.clients, id, c, false); err != nil {
		if errors.Is(err, errTaken) {
			return nil, rpcErr(CodeInvalidClient, "Invalid client id: "+strconv.Quote(id)+" is taken by a connected client.")
		}
		return nil, internal(err)
	}
	return id, nil
}

func (b *Broker) clientDisconnect(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	a, _, e := bindParams(params, []string{"client_id"}, 1, false)
	if e != nil {
		return nil, e
	}
	id, e := a.str("client_id", true)
	if e != nil {
		return nil, e
	}
	if e := b.checkClient(ctx, c, id); e != nil {
		return nil, e
	}
	if err := b.clients.Delete(ctx, key(id), 0); err != nil {
		return nil, internal(err)
	}
	b.forget(id, false)
	return true, nil
}

// checkClient verifies that a client id was registered (here or on any pod). A ZeroMQ caller
// takes over a record no live connection holds (its pod died and it reconnected here), so that
// this pod keeps it alive and frees it when the connection closes.
func (b *Broker) checkClient(ctx context.Context, c caller, id string) *RPCError {
	b.mu.Lock()
	_, ok := b.cliL[id]
	b.mu.Unlock()
	if ok {
		return nil
	}
	e, err := b.clients.Get(ctx, key(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return rpcErr(CodeInvalidClient)
		}
		return internal(err)
	}
	var p Peer
	now := time.Now().UTC()
	if c.transport != viaZMQ || json.Unmarshal(e.Value, &p) != nil || b.holds(&p, c, false, now) {
		return nil
	}
	p.Pod, p.Conn, p.Transport, p.LastSeen = b.pod, c.connHex(), viaZMQ, now
	data, _ := json.Marshal(&p)
	if rev, err := b.clients.Update(ctx, key(id), data, e.Revision); err == nil {
		b.remember(id, false, c, rev)
	}
	return nil
}

func (b *Broker) clientNewTask(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	a, _, e := bindParams(params, []string{"client_id", "method", "params", "task_id"}, 2, false)
	if e != nil {
		return nil, e
	}
	cid, e := a.str("client_id", true)
	if e != nil {
		return nil, e
	}
	method, e := a.str("method", true)
	if e != nil {
		return nil, e
	}
	tid, e := a.str("task_id", false)
	if e != nil {
		return nil, e
	}
	tparams := a.raw("params")
	if e := b.checkClient(ctx, c, cid); e != nil {
		return nil, e
	}
	if tid == "" {
		tid = randomID()
	}
	now := time.Now().UTC()
	t := Task{ID: cid + "-" + tid, ClientID: cid, TaskID: tid, Method: method, Params: tparams,
		Status: StatusQueued, Created: now, Updated: now, Pod: b.pod}
	rb, qb := getBuf(), getBuf()
	rec, err := appendTaskRecord((*rb)[:0], &t)
	if err != nil {
		return nil, rpcErr(CodeInvalidParams)
	}
	qmsg := appendQueueMsg((*qb)[:0], &t)
	// The record and the queue message are sent at once (pipelined) and both are stored before
	// the reply. The queue message goes only to an empty subject, so a retried submission of an
	// unfinished task adds none, and requeues one whose first attempt stopped after the record; a
	// message whose record was never stored is dropped by the watchdog, as is one re-sent for a
	// finished task.
	k := key(t.ID)
	rev, err, perr := b.writeNew(ctx, k, rec, b.queueSubject(method, t.ID), qmsg)
	putBuf(rb, rec)
	putBuf(qb, qmsg)
	if err != nil {
		if errors.Is(err, jetstream.ErrExists) {
			// The publish beside it queued the task again if its message was missing.
			return nil, rpcErr(CodeInvalidTask, "Invalid task id: "+strconv.Quote(t.ID)+" exists.")
		}
		return nil, internal(err)
	}
	if perr != nil && !errors.Is(perr, jetstream.ErrConflict) {
		// (A conflict means a message of an earlier attempt is there: it serves this record.)
		if derr := b.tasks.Delete(ctx, k, rev); derr != nil {
			b.log.Error("zerotask: task stored but not queued, and not removed", "task", t.ID, "err", derr)
		}
		return nil, internal(perr)
	}
	b.cache.put(&t, rev)
	b.m.status(StatusQueued)
	b.announce(&t)
	return t.ID, nil
}

// writeNew stores a new task's record and its queue message, both sent before waiting for
// either acknowledgement. The record is one lean write expecting no value; a key that has one (a
// duplicate, or the delete marker of an expired task) goes through Create, which tells them
// apart. It returns the record's revision, the record's error and the queue message's.
func (b *Broker) writeNew(ctx context.Context, k string, rec []byte, qsubj string, qmsg []byte) (uint64, error, error) {
	rp, rerr := b.pipe.KVWrite(b.tasks, k, rec, 0, 0, nil)
	qp, perr := b.pipe.PublishExpect(qsubj, qmsg, 0, 0, nil)
	var rev uint64
	if rerr == nil {
		var ack jetstream.PubAck
		ack, rerr = rp.Wait(ctx)
		rev = ack.Sequence
	}
	if perr == nil {
		_, perr = qp.Wait(ctx)
	}
	if errors.Is(rerr, jetstream.ErrNoResponders) {
		// (A stream leader election: the synchronous writes retry.)
		rev, rerr = b.tasks.WriteLean(ctx, k, rec, 0, 0)
	}
	if errors.Is(perr, jetstream.ErrNoResponders) {
		_, perr = b.js.PublishExpect(ctx, qsubj, qmsg, 0, 0)
	}
	if errors.Is(rerr, jetstream.ErrConflict) {
		rev, rerr = b.tasks.Create(ctx, k, rec, 0)
	}
	return rev, rerr, perr
}

// clientTask reads a client's task by full id (a short id is invalid, as the original).
func (b *Broker) clientTask(ctx context.Context, c caller, params json.RawMessage, fresh bool) (*Task, uint64, *RPCError) {
	a, _, e := bindParams(params, []string{"client_id", "task_id"}, 2, false)
	if e != nil {
		return nil, 0, e
	}
	cid, e := a.str("client_id", true)
	if e != nil {
		return nil, 0, e
	}
	tid, e := a.str("task_id", true)
	if e != nil {
		return nil, 0, e
	}
	if e := b.checkClient(ctx, c, cid); e != nil {
		return nil, 0, e
	}
	if !strings.HasPrefix(tid, cid+"-") || len(tid) == len(cid)+1 {
		return nil, 0, rpcErr(CodeInvalidTask)
	}
	t, rev, err := b.getTask(ctx, tid, fresh)
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return nil, 0, rpcErr(CodeInvalidTask)
		}
		return nil, 0, internal(err)
	}
	return t, rev, nil
}

func (b *Broker) clientTaskStatus(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	t, _, e := b.clientTask(ctx, c, params, true)
	if e != nil {
		return nil, e
	}
	return t.Status, nil
}

func (b *Broker) clientTaskResult(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	t, rev, e := b.clientTask(ctx, c, params, false)
	if e != nil {
		return nil, e
	}
	if !terminal(t.Status) {
		return nil, rpcErr(CodeNotComplete)
	}
	if t.Fetched == nil {
		// The mark is sent now without waiting for it; when too many are in flight it waits
		// its turn on runFetched, and only when that queue is full it is written before the
		// reply.
		select {
		case b.markSlots <- struct{}{}:
			b.sendMark(fetchItem{t, rev})
		default:
			select {
			case b.fetched <- fetchItem{t, rev}:
			default:
				if err := b.markFetched(ctx, t, rev); err != nil {
					return nil, internal(err)
				}
			}
		}
	}
	if t.Status == StatusFailed {
		return nil, storedError(t.Error)
	}
	if len(t.Result) == 0 {
		return json.RawMessage("null"), nil
	}
	return t.Result, nil
}

// storedError is a failed task's error as the response's error object: the node's own object when
// it has a code and a message, otherwise wrapped in -32603.
func storedError(raw json.RawMessage) *RPCError {
	var obj struct {
		Code    *int    `json:"code"`
		Message *string `json:"message"`
	}
	if firstByte(raw) == '{' && json.Unmarshal(raw, &obj) == nil && obj.Code != nil && obj.Message != nil {
		return &RPCError{Code: *obj.Code, Message: *obj.Message, Raw: raw}
	}
	if len(raw) == 0 {
		raw = json.RawMessage("null")
	}
	w, _ := json.Marshal(map[string]any{"code": CodeInternal, "message": "Task failed.", "data": raw})
	return &RPCError{Code: CodeInternal, Message: "Task failed.", Raw: w}
}

type fetchItem struct {
	t   *Task
	rev uint64
}

// maxMarks bounds the fetched marks in flight at once.
const maxMarks = 1024

// runFetched marks fetched results until ctx ends: each mark is one pipelined write, and one
// that failed (lost its condition, or no acknowledgement) is retried synchronously.
func (b *Broker) runFetched(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case it := <-b.fetched:
			select {
			case b.markSlots <- struct{}{}:
				b.sendMark(it)
			case <-ctx.Done():
				return // stopping (a drain flushed the marks before)
			}
		case it := <-b.refetch:
			b.markFetchedLogged(ctx, it)
		}
	}
}

// sendMark sends one fetched mark without waiting for it, in a slot of markSlots taken by the
// caller (see runFetched).
func (b *Broker) sendMark(it fetchItem) {
	buf := getBuf()
	data, err := appendFetchedRecord((*buf)[:0], it.t)
	if err != nil {
		<-b.markSlots
		b.log.Warn("zerotask: mark result fetched", "task", it.t.ID, "err", err)
		return
	}
	defer putBuf(buf, data)
	b.marks.Add(1)
	_, _ = b.pipe.KVWrite(b.tasks, key(it.t.ID), data, it.rev, b.cfg.ResultTTL, func(_ jetstream.PubAck, err error) {
		defer b.marks.Done()
		<-b.markSlots
		switch {
		case err == nil:
			b.cache.drop(it.t.ID)
		case !errors.Is(err, jetstream.ErrPipelineClosed):
			// A lost condition (the record changed meanwhile), or a write that may not have
			// been stored: once more, synchronously, after a fresh read if needed.
			select {
			case b.refetch <- it:
			default:
				b.marks.Add(1)
				go func() {
					defer b.marks.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					b.markFetchedLogged(ctx, it)
				}()
			}
		default:
			b.log.Warn("zerotask: mark result fetched", "task", it.t.ID, "err", err)
		}
	})
}

// flushFetched marks what is still queued and waits for the marks in flight (on drain).
func (b *Broker) flushFetched(ctx context.Context) {
	for {
		select {
		case it := <-b.fetched:
			b.markFetchedLogged(ctx, it)
			continue
		default:
		}
		break
	}
	done := make(chan struct{})
	go func() {
		b.marks.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return
	}
	for {
		select {
		case it := <-b.refetch:
			b.markFetchedLogged(ctx, it)
		default:
			return
		}
	}
}

func (b *Broker) markFetchedLogged(ctx context.Context, it fetchItem) {
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.markFetched(mctx, it.t, it.rev); err != nil && ctx.Err() == nil {
		b.log.Warn("zerotask: mark result fetched", "task", it.t.ID, "err", err)
	}
}

// fetchedRecord is a task's record marked fetched now.
func fetchedRecord(t *Task) ([]byte, error) {
	return appendFetchedRecord(nil, t)
}

// appendFetchedRecord appends a task's record marked fetched now to dst.
func appendFetchedRecord(dst []byte, t *Task) ([]byte, error) {
	now := time.Now().UTC()
	nt := *t
	nt.Fetched, nt.Updated = &now, now
	data, err := appendTaskRecord(dst, &nt)
	if err != nil {
		return nil, fmt.Errorf("mark %s fetched: %w", t.ID, err)
	}
	return data, nil
}

// markFetched records the first fetch of a result and makes the record expire ResultTTL later.
func (b *Broker) markFetched(ctx context.Context, t *Task, rev uint64) error {
	for range 10 {
		data, err := fetchedRecord(t)
		if err != nil {
			return err
		}
		if _, err = b.tasks.WriteLean(ctx, key(t.ID), data, rev, b.cfg.ResultTTL); err == nil {
			b.cache.drop(t.ID)
			return nil
		}
		if !errors.Is(err, jetstream.ErrConflict) {
			return fmt.Errorf("mark %s fetched: %w", t.ID, err)
		}
		fresh, frev, gerr := b.getTask(ctx, t.ID, true)
		if gerr != nil {
			if errors.Is(gerr, jetstream.ErrNotFound) {
				return nil
			}
			return gerr
		}
		if fresh.Fetched != nil {
			return nil
		}
		t, rev = fresh, frev
	}
	return fmt.Errorf("mark %s fetched: too many conflicts", t.ID)
}

// ---- nodes ----

func (b *Broker) nodeConnect(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	a, _, e := bindParams(params, []string{"node_id"}, 0, false)
	if e != nil {
		return nil, e
	}
	id, e := a.str("node_id", false)
	if e != nil {
		return nil, e
	}
	if id == "" {
		id = randomID()
	}
	if err := b.register(ctx, b.nodes, id, c, true); err != nil {
		if errors.Is(err, errTaken) {
			return nil, rpcErr(CodeInvalidNode, "Invalid node id: "+strconv.Quote(id)+" is active.")
		}
		return nil, internal(err)
	}
	b.reannounce()
	return id, nil
}

func (b *Broker) nodeDisconnect(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	a, _, e := bindParams(params, []string{"node_id"}, 1, false)
	if e != nil {
		return nil, e
	}
	id, e := a.str("node_id", true)
	if e != nil {
		return nil, e
	}
	if _, e := b.checkNode(ctx, c, id, false); e != nil {
		return nil, e
	}
	if err := b.nodes.Delete(ctx, key(id), 0); err != nil {
		return nil, internal(err)
	}
	tasks := b.forget(id, true)
	b.requeueAll(ctx, id, tasks, "node disconnected")
	return true, nil
}

// checkNode verifies a node id: registered here, or alive in KV (a ZeroMQ caller's connection then
// takes the record over). touch refreshes its last-seen time now.
func (b *Broker) checkNode(ctx context.Context, c caller, id string, touch bool) (string, *RPCError) {
	if id == "" {
		return "", rpcErr(CodeInvalidNode)
	}
	b.mu.Lock()
	le, local := b.nodeL[id]
	fresh := local && !touch && time.Since(le.lastWrite) < b.cfg.NodeTimeout/4 && (c.transport != viaZMQ || le.conn == c.conn)
	b.mu.Unlock()
	if fresh {
		return id, nil
	}
	e, err := b.nodes.Get(ctx, key(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			b.forget(id, true)
			return "", rpcErr(CodeInvalidNode)
		}
		return "", internal(err)
	}
	var p Peer
	now := time.Now().UTC()
	if json.Unmarshal(e.Value, &p) != nil || !p.alive(now, b.cfg.NodeTimeout) {
		return "", rpcErr(CodeInvalidNode)
	}
	p.LastSeen = now
	if c.transport == viaZMQ {
		p.Pod, p.Conn, p.Transport = b.pod, c.connHex(), viaZMQ
	}
	data, _ := json.Marshal(&p)
	rev, err := b.nodes.Update(ctx, key(id), data, e.Revision)
	if err != nil {
		if errors.Is(err, jetstream.ErrConflict) {
			return id, nil // refreshed by someone else meanwhile
		}
		return "", internal(err)
	}
	if c.transport == viaZMQ || !local {
		b.remember(id, true, c, rev)
	} else {
		b.mu.Lock()
		le.rev, le.lastWrite = rev, time.Now()
		b.mu.Unlock()
	}
	return id, nil
}

// nodeOf resolves the node of a spec-signature call (no node id): the one node registered over
// the caller's connection.
func (b *Broker) nodeOf(c caller) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	cs := b.conns[c.conn]
	if c.conn == "" || cs == nil || len(cs.nodes) != 1 {
		return ""
	}
	for id := range cs.nodes {
		return id
	}
	return ""
}

// nodeArgs binds a node method's params in either signature: the code's (node id first, at least
// codeMin positional params) or the spec's (no node id, at least specMin). alt maps the spec's
// names onto the code's (e.g. task_result → result).
func (b *Broker) nodeArgs(ctx context.Context, c caller, params json.RawMessage, code []string, codeMin, specMin int, alt map[string]string, extra bool) (string, args, *RPCError) {
	var a args
	var e *RPCError
	if firstByte(params) == '[' {
		list, ok := splitArray(params)
		if !ok {
			_ = json.Unmarshal(params, &list)
		}
		if len(list) >= codeMin {
			a, _, e = bindParams(params, code, codeMin, extra)
		} else {
			a, _, e = bindParams(params, code[1:], specMin, extra)
		}
	} else {
		names := append([]string(nil), code...)
		for k := range alt {
			names = append(names, k)
		}
		a, _, e = bindParams(params, names, 0, extra)
		if e == nil {
			for from, to := range alt {
				if v, ok := a.get(from); ok {
					if _, dup := a.get(to); !dup {
						a.set(to, v)
					}
				}
			}
			for _, n := range code[1 : 1+specMin] {
				if _, ok := a.get(n); !ok {
					e = rpcErr(CodeInvalidParams, fmt.Sprintf("Invalid parameters: %q required.", n))
					break
				}
			}
		}
	}
	if e != nil {
		return "", nil, e
	}
	nid, e := a.str("node_id", false)
	if e != nil {
		return "", nil, e
	}
	if nid == "" {
		nid = b.nodeOf(c)
	}
	nid, e = b.checkNode(ctx, c, nid, false)
	if e != nil {
		return "", nil, e
	}
	return nid, a, nil
}

func (b *Broker) nodeTaskRequest(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	nid, a, e := b.nodeArgs(ctx, c, params, []string{"node_id", "task_id"}, 2, 1, nil, false)
	if e != nil {
		return nil, e
	}
	tid, e := a.str("task_id", true)
	if e != nil {
		return nil, e
	}
	var assigned *Task
	err := b.updateTask(ctx, tid, false, func(t *Task) (bool, error) {
		if t.Status != StatusQueued {
			assigned = nil
			return false, nil
		}
		now := time.Now().UTC()
		t.Status, t.NodeID, t.Assigned, t.Updated, t.Pod = StatusAssigned, nid, &now, now, b.pod
		t.Attempts++
		assigned = t
		return true, nil
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return nil, rpcErr(CodeInvalidTask)
		}
		return nil, internal(err)
	}
	if assigned == nil {
		return nil, nil
	}
	b.m.status(StatusAssigned)
	b.mu.Lock()
	if le := b.nodeL[nid]; le != nil {
		if le.tasks == nil {
			le.tasks = map[string]bool{}
		}
		le.tasks[tid] = true
	}
	b.mu.Unlock()
	return assigned.taskObject(), nil
}

func (b *Broker) nodeTaskStatus(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	nid, a, e := b.nodeArgs(ctx, c, params, []string{"node_id", "task_id", "status"}, 3, 1, nil, true)
	if e != nil {
		return nil, e
	}
	tid, e := a.str("task_id", true)
	if e != nil {
		return nil, e
	}
	var st int
	if a.has("status") {
		if json.Unmarshal(a.raw("status"), &st) != nil {
			return nil, rpcErr(CodeInvalidParams, `Invalid parameters: "status" must be an integer.`)
		}
	}
	err := b.updateTask(ctx, tid, false, func(t *Task) (bool, error) {
		// Only RUNNING is taken from a node (no code of the original ever set it).
		if st != StatusRunning || t.Status != StatusAssigned || t.NodeID != nid {
			return false, nil
		}
		t.Status, t.Updated = StatusRunning, time.Now().UTC()
		return true, nil
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return nil, rpcErr(CodeInvalidTask)
		}
		return nil, internal(err)
	}
	return nil, nil
}

func (b *Broker) nodeTaskFinished(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	return b.nodeTaskDone(ctx, c, params, StatusFinished, "result", "task_result")
}

func (b *Broker) nodeTaskFailed(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	return b.nodeTaskDone(ctx, c, params, StatusFailed, "error", "task_error")
}

// nodeTaskDone stores a result or an error. The first result of a task wins; a repeated one is
// accepted and ignored (a node may retry its notification).
func (b *Broker) nodeTaskDone(ctx context.Context, c caller, params json.RawMessage, status int, field, alt string) (any, *RPCError) {
	nid, a, e := b.nodeArgs(ctx, c, params, []string{"node_id", "task_id", field}, 3, 2, map[string]string{alt: field}, false)
	if e != nil {
		return nil, e
	}
	tid, e := a.str("task_id", true)
	if e != nil {
		return nil, e
	}
	val := a.raw(field)
	changed := false
	err := b.updateTask(ctx, tid, false, func(t *Task) (bool, error) {
		if terminal(t.Status) {
			changed = false
			return false, nil
		}
		now := time.Now().UTC()
		t.Status, t.NodeID, t.Updated, t.Pod = status, nid, now, b.pod
		if status == StatusFinished {
			t.Result, t.Error = val, nil
		} else {
			t.Error, t.Result = val, nil
		}
		changed = true
		return true, nil
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return nil, rpcErr(CodeInvalidTask)
		}
		return nil, internal(err)
	}
	b.mu.Lock()
	if le := b.nodeL[nid]; le != nil {
		delete(le.tasks, tid)
	}
	b.mu.Unlock()
	if changed {
		b.m.status(status)
		b.release(tid)
		b.publish(evResultReady, "task_id", tid)
	}
	return true, nil
}

func (b *Broker) nodeHeartbeat(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	a, _, e := bindParams(params, []string{"node_id"}, 0, true)
	if e != nil {
		return nil, e
	}
	nid, e := a.str("node_id", false)
	if e != nil {
		return nil, e
	}
	if nid == "" {
		nid = b.nodeOf(c)
	}
	if _, e := b.checkNode(ctx, c, nid, true); e != nil {
		return nil, e
	}
	return true, nil
}

func (b *Broker) nodeStatus(ctx context.Context, c caller, params json.RawMessage) (any, *RPCError) {
	a, _, e := bindParams(params, []string{"node_id", "workers"}, 0, true)
	if e != nil {
		return nil, e
	}
	nid, e := a.str("node_id", false)
	if e != nil {
		return nil, e
	}
	if nid == "" {
		nid = b.nodeOf(c)
	}
	if _, e := b.checkNode(ctx, c, nid, true); e != nil {
		return nil, e
	}
	var workers int
	if a.has("workers") && json.Unmarshal(a.raw("workers"), &workers) == nil {
		_, _ = b.nodes.Mutate(ctx, key(nid), func(cur []byte, exists bool) ([]byte, error) {
			var p Peer
			if !exists || json.Unmarshal(cur, &p) != nil {
				return nil, jetstream.ErrSkip
			}
			p.Workers = workers
			return json.Marshal(&p)
		})
	}
	return true, nil
}

// ---- registration of clients and nodes ----

var errTaken = errors.New("id taken")

// register stores a client's or node's record for c. An id held by another live connection is
// refused (errTaken): for a client only while that connection is open (Decision 3), for a node
// also while an HTTP/NATS node keeps it alive with heartbeats (the original's 60 s rule).
func (b *Broker) register(ctx context.Context, kv *jetstream.KV, id string, c caller, node bool) error {
	now := time.Now().UTC()
	e, err := kv.Mutate(ctx, key(id), func(cur []byte, exists bool) ([]byte, error) {
		if exists {
			var p Peer
			if json.Unmarshal(cur, &p) == nil && b.holds(&p, c, node, now) {
				return nil, errTaken
			}
		}
		p := Peer{ID: id, Transport: c.transport, Connected: now, LastSeen: now}
		if c.transport == viaZMQ {
			p.Pod, p.Conn = b.pod, c.connHex()
		}
		return json.Marshal(&p)
	})
	if err != nil {
		return err
	}
	b.remember(id, node, c, e.Revision)
	if c.transport == viaZMQ && !b.connected(c.conn) {
		// The connection closed while we registered: do not leave a record behind.
		b.dropConn(ctx, c.conn)
	}
	return nil
}

// holds reports whether an existing record keeps its id from caller c.
func (b *Broker) holds(p *Peer, c caller, node bool, now time.Time) bool {
	if p.Transport == viaZMQ && p.Pod == b.pod {
		if c.transport == viaZMQ && p.Conn == c.connHex() {
			return false // the same connection again
		}
		conn, err := hex.DecodeString(p.Conn)
		return err == nil && b.connected(string(conn))
	}
	if p.Transport == viaZMQ {
		return p.alive(now, b.cfg.NodeTimeout) // kept alive by its pod while connected
	}
	return node && p.alive(now, b.cfg.NodeTimeout)
}

// remember notes an id registered (or adopted) through this pod.
func (b *Broker) remember(id string, node bool, c caller, rev uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.cliL
	if node {
		m = b.nodeL
	}
	le := m[id]
	if le == nil {
		le = &localEntry{}
		m[id] = le
	}
	if le.conn != "" && le.conn != c.conn {
		if cs := b.conns[le.conn]; cs != nil {
			delete(cs.nodes, id)
			delete(cs.clients, id)
		}
	}
	le.conn, le.rev, le.lastWrite = c.conn, rev, time.Now()
	if c.transport == viaZMQ {
		cs := b.conns[c.conn]
		if cs == nil {
			cs = &connState{clients: map[string]bool{}, nodes: map[string]bool{}}
			b.conns[c.conn] = cs
		}
		if node {
			cs.nodes[id] = true
		} else {
			cs.clients[id] = true
		}
	}
	b.m.setLocal(len(b.nodeL), len(b.cliL))
}

// forget removes a local registration and returns a node's locally assigned tasks.
func (b *Broker) forget(id string, node bool) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.cliL
	if node {
		m = b.nodeL
	}
	le := m[id]
	if le == nil {
		return nil
	}
	delete(m, id)
	if cs := b.conns[le.conn]; cs != nil {
		delete(cs.nodes, id)
		delete(cs.clients, id)
	}
	var tasks []string
	for t := range le.tasks {
		tasks = append(tasks, t)
	}
	b.m.setLocal(len(b.nodeL), len(b.cliL))
	return tasks
}

// dropConn handles a closed ZeroMQ connection: its clients' ids become free, its nodes are
// dropped and their tasks requeued at once.
func (b *Broker) dropConn(ctx context.Context, conn string) {
	b.mu.Lock()
	cs := b.conns[conn]
	delete(b.conns, conn)
	b.mu.Unlock()
	if cs == nil {
		return
	}
	hexConn := hex.EncodeToString([]byte(conn))
	for id := range cs.clients {
		b.mu.Lock()
		le := b.cliL[id]
		mine := le != nil && le.conn == conn
		if mine {
			delete(b.cliL, id)
		}
		b.mu.Unlock()
		if mine {
			b.deleteOwned(ctx, b.clients, id, hexConn)
		}
	}
	for id := range cs.nodes {
		b.mu.Lock()
		le := b.nodeL[id]
		mine := le != nil && le.conn == conn
		var tasks []string
		if mine {
			delete(b.nodeL, id)
			for t := range le.tasks {
				tasks = append(tasks, t)
			}
		}
		b.mu.Unlock()
		if mine {
			b.deleteOwned(ctx, b.nodes, id, hexConn)
			b.requeueAll(ctx, id, tasks, "node connection closed")
		}
	}
	b.mu.Lock()
	b.m.setLocal(len(b.nodeL), len(b.cliL))
	b.mu.Unlock()
}

// deleteOwned deletes a record if it still belongs to this pod's connection.
func (b *Broker) deleteOwned(ctx context.Context, kv *jetstream.KV, id, hexConn string) {
	e, err := kv.Get(ctx, key(id))
	if err != nil {
		return
	}
	var p Peer
	if json.Unmarshal(e.Value, &p) != nil || p.Pod != b.pod || p.Conn != hexConn {
		return
	}
	if err := kv.Delete(ctx, key(id), e.Revision); err != nil && !errors.Is(err, jetstream.ErrConflict) && ctx.Err() == nil {
		b.log.Warn("zerotask: drop record", "id", id, "err", err)
	}
}

// ---- tasks ----

// getTask reads a task, from this pod's cache when allowed (only terminal states are served from
// it for reads; writes always go through CAS).
func (b *Broker) getTask(ctx context.Context, id string, fresh bool) (*Task, uint64, error) {
	if !fresh {
		if t, rev, ok := b.cache.get(id); ok && terminal(t.Status) {
			return t, rev, nil
		}
	}
	e, err := b.tasks.Get(ctx, key(id))
	if err != nil {
		return nil, 0, err
	}
	var t Task
	if err := json.Unmarshal(e.Value, &t); err != nil {
		return nil, 0, fmt.Errorf("task %s record: %w", id, err)
	}
	return &t, e.Revision, nil
}

// updateTask applies fn to a task with CAS, starting from the cached revision when there is one.
// fn returns false to leave the task unchanged.
func (b *Broker) updateTask(ctx context.Context, id string, fresh bool, fn func(t *Task) (bool, error)) error {
	t, rev, ok := (*Task)(nil), uint64(0), false
	if !fresh {
		t, rev, ok = b.cache.get(id)
	}
	for attempt := 0; ; attempt++ {
		if !ok {
			var err error
			t, rev, err = b.getTask(ctx, id, true)
			if err != nil {
				return err
			}
		}
		change, err := fn(t)
		if err != nil || !change {
			return err
		}
		buf := getBuf()
		data, err := appendTaskRecord((*buf)[:0], t)
		if err != nil {
			return fmt.Errorf("task %s: %w", id, err)
		}
		nrev, err := b.writeTask(ctx, key(id), data, rev)
		putBuf(buf, data)
		if err == nil {
			b.cache.put(t, nrev)
			return nil
		}
		if !errors.Is(err, jetstream.ErrConflict) || attempt > 20 || ctx.Err() != nil {
			return err
		}
		ok = false
	}
}

// writeTask is one conditional write of a task record (KV.WriteLean, through the pipeline: its
// acknowledgement is read by hand). A no-responders answer (stream leader election) takes the
// synchronous write, which retries it.
func (b *Broker) writeTask(ctx context.Context, k string, data []byte, rev uint64) (uint64, error) {
	pd, err := b.pipe.KVWrite(b.tasks, k, data, rev, 0, nil)
	if err == nil {
		var ack jetstream.PubAck
		if ack, err = pd.Wait(ctx); err == nil {
			return ack.Sequence, nil
		}
	}
	if errors.Is(err, jetstream.ErrNoResponders) {
		return b.tasks.WriteLean(ctx, k, data, rev, 0)
	}
	return 0, err
}

// requeueAll gives a lost node's tasks back to the queue.
func (b *Broker) requeueAll(ctx context.Context, node string, tasks []string, reason string) {
	for _, id := range tasks {
		if err := b.requeue(ctx, id, node, reason); err != nil {
			b.log.Warn("zerotask: requeue", "task", id, "node", node, "err", err)
		}
	}
}

// requeue puts a task assigned to node back to QUEUED and announces it again, or fails it (and
// dead-letters a copy) once it was assigned MaxAttempts times.
func (b *Broker) requeue(ctx context.Context, id, node, reason string) error {
	var out *Task
	err := b.updateTask(ctx, id, true, func(t *Task) (bool, error) {
		if (t.Status != StatusAssigned && t.Status != StatusRunning) || t.NodeID != node {
			out = nil
			return false, nil
		}
		now := time.Now().UTC()
		t.Updated, t.Pod = now, b.pod
		if t.Attempts >= b.cfg.MaxAttempts {
			t.Status = StatusFailed
			msg := fmt.Sprintf("Task abandoned after %d attempts: %s.", t.Attempts, reason)
			t.Error, _ = json.Marshal(map[string]any{"code": CodeInternal, "message": msg})
		} else {
			t.Status, t.NodeID, t.Assigned = StatusQueued, "", nil
		}
		out = t
		return true, nil
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return nil
		}
		return err
	}
	if out == nil {
		return nil
	}
	b.m.status(out.Status)
	b.m.requeued.Inc()
	if out.Status == StatusFailed {
		b.release(out.ID)
		b.deadLetter(ctx, out, reason)
		b.publish(evResultReady, "task_id", out.ID)
		return nil
	}
	b.log.Info("zerotask: task requeued", "task", id, "node", node, "reason", reason)
	b.announce(out)
	return nil
}

// deadLetter copies an abandoned task to the dead-letter stream.
func (b *Broker) deadLetter(ctx context.Context, t *Task, reason string) {
	data, _ := json.Marshal(queueMsg{ID: t.ID, ClientID: t.ClientID, TaskID: t.TaskID, Method: t.Method, Params: t.Params})
	subj := b.queueSubject(t.Method, t.ID)
	h := jetstream.Header{}
	h.Set(jetstream.HeaderDLQReason, fmt.Sprintf("abandoned after %d attempts: %s", t.Attempts, reason))
	h.Set(jetstream.HeaderDLQStream, streamQueue)
	h.Set(jetstream.HeaderDLQSeq, "0")
	h.Set(jetstream.HeaderDLQSubject, subj)
	h.Set(jetstream.HeaderDLQDeliveries, strconv.Itoa(t.Attempts))
	h.Set(jetstream.HeaderDLQTime, time.Now().UTC().Format(time.RFC3339Nano))
	dlq := b.js.Subject("dlq", b.js.Names().Unprefix(subj))
	if _, err := b.js.Publish(ctx, dlq, data, jetstream.PubOpts{MsgID: "dlq:" + streamQueue + ":" + t.ID, Header: h}); err != nil {
		b.log.Error("zerotask: dead-letter", "task", t.ID, "err", err)
	}
}

// announce tells every pod's PUB socket (and NATS subscribers) that a task waits.
func (b *Broker) announce(t *Task) {
	// One NATS message; every pod's PUB also sends it under the spec's name (broker_new_task).
	b.publish(evTaskReady, "method", t.Method, "task_id", t.ID)
}

// publish sends a notification to zerotask.events.<event>; every pod forwards it to its PUB.
func (b *Broker) publish(event string, params ...string) {
	data := encodeEvent(eventMethods[event], params...)
	if err := b.js.PublishCore(b.eventSubject(event), data, nil); err != nil {
		b.log.Warn("zerotask: publish notification", "event", event, "err", err)
	}
}

// eventSubject is zerotask.events.<event> (built once per event).
func (b *Broker) eventSubject(event string) string {
	if s, ok := b.evSubj.Load(event); ok {
		return s.(string)
	}
	s := b.js.Subject("zerotask", "events", event)
	b.evSubj.Store(event, s)
	return s
}

// ---- a small cache of the tasks this pod wrote (revision hints for CAS, terminal results) ----

type cachedTask struct {
	t   Task
	rev uint64
}

type taskCache struct {
	mu  sync.Mutex
	max int
	m   map[string]cachedTask
}

func (c *taskCache) get(id string) (*Task, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok {
		return nil, 0, false
	}
	t := e.t
	return &t, e.rev, true
}

func (c *taskCache) put(t *Task, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		n := 0
		for k := range c.m {
			delete(c.m, k)
			if n++; n >= c.max/10 {
				break
			}
		}
	}
	c.m[t.ID] = cachedTask{t: *t, rev: rev}
}

func (c *taskCache) drop(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

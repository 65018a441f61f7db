package tracker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"sort"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// claimInfo is one open claim as the pod's index knows it.
type claimInfo struct {
	id       string
	pipeline string
	ptype    string
	attempt  int
	lease    float64 // lease end, epoch seconds
	claimed  float64
	rev      uint64
	val      []byte
	rec      *Record // val decoded, when this pod wrote it (read-only: clone to change)
}

// indexView is the part of a record the claim index needs.
type indexView struct {
	Status       string   `json:"status"`
	PipelineType string   `json:"pipeline_type"`
	ClaimedAt    *float64 `json:"claimed_at"`
	Claim        *Claim   `json:"claim"`
}

// peekRecord extracts what the index needs from a stored record, decoding it only when it may be
// claimed: records are written by json.Marshal, so the top-level status always appears as
// "status":"<value>" (a nested key with the same text only costs a full decode).
func peekRecord(val []byte) *Record {
	if bytes.Contains(val, []byte(`"status":"claimed"`)) {
		var r indexView
		if json.Unmarshal(val, &r) != nil {
			return nil
		}
		return &Record{Status: r.Status, PipelineType: r.PipelineType, ClaimedAt: r.ClaimedAt, Claim: r.Claim}
	}
	if bytes.Contains(val, []byte(`"status":"todo"`)) {
		return &Record{Status: StatusTodo} // cached for claims, which decode and check it
	}
	return &Record{Status: StatusDone} // not claimed, not todo: only its absence matters
}

// claimIndex holds every open claim of the whole tracker (all pods), fed by a watch on the items
// bucket. It is an index only: every decision is re-checked against the record with CAS.
type claimIndex struct {
	mu     sync.Mutex
	m      map[string]*claimInfo
	byPipe map[string]map[string]struct{}
	revs   map[string]uint64 // revision of each indexed claim
	// todo caches the latest value of recently queued items (bounded, oldest evicted first) so
	// that a claim can CAS without reading the record first.
	todo     map[string]cachedVal
	todoRing []string
	todoNext int
	seen     uint64 // highest revision the watch delivered (revisions are bucket-wide)
	// pending counts this pod's record writes in flight per item; the watch sets aside what it
	// delivers for such an item (latest revision only) until the writes are answered, so that
	// this pod's own writes are indexed from the record it wrote, never decoded again.
	pending  map[string]int
	deferred map[string]watched
	// expect holds revisions this pod wrote that the watch has yet to deliver (skipped then)
	expect map[string]uint64
	ready  chan struct{}
	once   sync.Once
}

func newClaimIndex() *claimIndex {
	return &claimIndex{m: map[string]*claimInfo{}, byPipe: map[string]map[string]struct{}{},
		revs: map[string]uint64{}, ready: make(chan struct{}), todo: map[string]cachedVal{}, todoRing: make([]string, todoCacheSize),
		pending: map[string]int{}, deferred: map[string]watched{}, expect: map[string]uint64{}}
}

// watched is a watch delivery set aside while this pod writes the same item.
type watched struct {
	rev     uint64
	val     []byte
	deleted bool
}

// begin notes a write of item id by this pod; every begin is followed by one end.
func (x *claimIndex) begin(id string) {
	x.mu.Lock()
	x.pending[id]++
	x.mu.Unlock()
}

// end closes a write begun with begin: ok says whether it was stored as revision rev (val, the
// full record r). A delivery the watch set aside meanwhile is dropped when it is this write
// or an older one, and applied when it is newer (once no write of the item is in flight).
func (x *claimIndex) end(id string, ok bool, rev uint64, val []byte, r *Record) {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := x.pending[id] - 1
	if n <= 0 {
		delete(x.pending, id)
	} else {
		x.pending[id] = n
	}
	d, hasD := x.deferred[id]
	if ok && hasD && d.rev <= rev {
		// the watch has not applied rev (it set it aside, or has not got there yet)
		delete(x.deferred, id)
		x.applyLocked(id, rev, val, r, false, true)
		if rev > x.seen {
			x.expect[id] = rev
		}
		return
	}
	if ok && !hasD {
		x.applyLocked(id, rev, val, r, false, false)
	}
	if ok && rev > x.seen {
		x.expect[id] = rev
	}
	if hasD && n <= 0 {
		delete(x.deferred, id)
		x.applyWatchedLocked(id, d)
	}
}

// observe takes a watch delivery that needs no decoding: a revision this pod already indexed, or
// one of an item this pod is writing (set aside for end). false: the caller applies it.
func (x *claimIndex) observe(id string, rev uint64, val []byte, deleted bool) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.seen = max(x.seen, rev)
	if x.pending[id] > 0 {
		if d, ok := x.deferred[id]; !ok || d.rev < rev {
			x.deferred[id] = watched{rev: rev, val: val, deleted: deleted}
		}
		return true
	}
	if exp, ok := x.expect[id]; ok && rev >= exp {
		delete(x.expect, id)
		if rev == exp {
			return true
		}
	}
	if deleted {
		return false
	}
	if last, ok := x.revs[id]; ok && last >= rev {
		return true
	}
	c, ok := x.todo[id]
	return ok && c.rev >= rev
}

func (x *claimIndex) applyWatchedLocked(id string, d watched) {
	if d.deleted {
		x.applyLocked(id, d.rev, nil, nil, true, false)
		return
	}
	x.applyLocked(id, d.rev, d.val, peekRecord(d.val), true, false)
}

func (x *claimIndex) removeLocked(id string) {
	if c, ok := x.m[id]; ok {
		if s := x.byPipe[c.pipeline]; s != nil {
			delete(s, id)
			if len(s) == 0 {
				delete(x.byPipe, c.pipeline)
			}
		}
		delete(x.m, id)
	}
}

// todoCacheSize bounds the cache of queued items' values (per pod).
const todoCacheSize = 16384

type cachedVal struct {
	rev uint64
	val []byte
	rec *Record // val decoded, when known (read-only: clone to change)
}

// record returns the cached value decoded.
func (c cachedVal) record() (*Record, error) {
	if c.rec != nil {
		return c.rec, nil
	}
	return decodeRecord(c.val)
}

func (x *claimIndex) cacheTodoLocked(id string, rev uint64, val []byte, rec *Record) {
	if c, ok := x.todo[id]; ok {
		if c.rev < rev {
			x.todo[id] = cachedVal{rev, val, rec}
		}
		return
	}
	if old := x.todoRing[x.todoNext]; old != "" {
		delete(x.todo, old)
	}
	x.todoRing[x.todoNext] = id
	x.todoNext = (x.todoNext + 1) % len(x.todoRing)
	x.todo[id] = cachedVal{rev, val, rec}
}

// todoValue returns the cached value of a queued item.
func (x *claimIndex) todoValue(id string) (cachedVal, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	c, ok := x.todo[id]
	return c, ok
}

// apply records a new revision of an item (r nil = deleted). Watch updates come in revision
// order; a local update (fromWatch false) is ignored when the watch has already gone past it. A
// local update's r is the full record (kept, read-only); a watch update's is only what
// peekRecord extracted.
func (x *claimIndex) apply(id string, rev uint64, val []byte, r *Record, fromWatch bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.applyLocked(id, rev, val, r, fromWatch, false)
}

// applyLocked is apply with x.mu held; unseen says that the watch has not applied rev even if
// it went past it (it set it aside for end).
func (x *claimIndex) applyLocked(id string, rev uint64, val []byte, r *Record, fromWatch, unseen bool) {
	full := r
	if fromWatch {
		x.seen = max(x.seen, rev)
		full = nil
	} else if rev <= x.seen && !unseen {
		// the watch got there first: keep the decoded record if the index holds this revision
		if c, ok := x.m[id]; ok && c.rev == rev && c.val != nil && c.rec == nil {
			c.rec = r
		}
		if c, ok := x.todo[id]; ok && c.rev == rev && c.rec == nil {
			c.rec = r
			x.todo[id] = c
		}
		return
	}
	if last, ok := x.revs[id]; ok && last >= rev {
		return
	}
	if r != nil && r.Status == StatusTodo {
		x.cacheTodoLocked(id, rev, val, full)
	} else if c, ok := x.todo[id]; ok && c.rev < rev {
		delete(x.todo, id) // the ring slot is reused later
	}
	if r == nil || r.Status != StatusClaimed || r.Claim == nil {
		x.removeLocked(id)
		delete(x.revs, id)
		return
	}
	x.revs[id] = rev
	x.removeLocked(id)
	c := &claimInfo{id: id, pipeline: r.Claim.Pipeline, ptype: r.PipelineType, attempt: r.Claim.Attempt,
		lease: r.Claim.LeaseUntil, rev: rev, val: val, rec: full}
	if r.ClaimedAt != nil {
		c.claimed = *r.ClaimedAt
	}
	x.m[id] = c
	s := x.byPipe[c.pipeline]
	if s == nil {
		s = map[string]struct{}{}
		x.byPipe[c.pipeline] = s
	}
	s[id] = struct{}{}
}

// cached returns the last known value of a claimed item.
func (x *claimIndex) cached(id string) (claimInfo, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	c, ok := x.m[id]
	if !ok || c.val == nil {
		return claimInfo{}, false
	}
	return *c, true
}

// forget drops a cached value that turned out stale (a CAS with it failed).
func (x *claimIndex) forget(id string, rev uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if c, ok := x.m[id]; ok && c.rev == rev {
		c.val, c.rec = nil, nil // keep the claim indexed; only the cached value is stale
	}
}

func (x *claimIndex) ofPipeline(p string) []claimInfo {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []claimInfo
	for id := range x.byPipe[p] {
		out = append(out, *x.m[id])
	}
	return out
}

func (x *claimIndex) countPipeline(p string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.byPipe[p])
}

func (x *claimIndex) expired(now float64) []claimInfo {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []claimInfo
	for _, c := range x.m {
		if c.lease < now {
			out = append(out, *c)
		}
	}
	return out
}

// all returns every open claim, oldest claim first.
func (x *claimIndex) all() []claimInfo {
	x.mu.Lock()
	out := make([]claimInfo, 0, len(x.m))
	for _, c := range x.m {
		out = append(out, *c)
	}
	x.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].claimed < out[j].claimed })
	return out
}

func (x *claimIndex) markReady() { x.once.Do(func() { close(x.ready) }) }

// watchEvery is how often the index looks for the writes to the items bucket (the writes of a
// busy bucket come in batches instead of one delivery each).
const watchEvery = 5 * time.Millisecond

// watch feeds the index from the items bucket until ctx ends (starting the watch again if it
// cannot be made).
func (x *claimIndex) watch(ctx context.Context, items *jetstream.KV, onErr func(error)) {
	for ctx.Err() == nil {
		x.mu.Lock()
		clear(x.expect) // a new watch starts over with every item's latest value
		x.mu.Unlock()
		err := items.WatchBatched(ctx, ">", true, watchEvery, func(e jetstream.Entry) {
			if e.Key == "" {
				x.markReady()
				return
			}
			if x.observe(e.Key, e.Revision, e.Value, e.Deleted) {
				return // this pod's own write: indexed from the record it wrote
			}
			if e.Deleted {
				x.apply(e.Key, e.Revision, nil, nil, true)
				return
			}
			x.apply(e.Key, e.Revision, e.Value, peekRecord(e.Value), true)
		})
		if err != nil {
			onErr(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// resultID derives the id of a stored result from what identifies the store request, so that a
// retried Item:store gets the same new_id (and JetStream de-duplicates the second copy).
func resultID(id string, attempt int64, rtype string, result json.RawMessage, decode []string) string {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(attempt))
	for _, part := range [][]byte{[]byte(id), n[:], []byte(rtype), result} {
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	for _, d := range decode {
		h.Write([]byte(d))
		h.Write([]byte{0})
	}
	var b [16]byte
	copy(b[:], h.Sum(nil))
	b[6] = b[6]&0x0f | 0x50 // version 5-like (name-based)
	b[8] = b[8]&0x3f | 0x80
	return uuidString(b)
}

// decodeResult base85-decodes the decode_fields of a result object; decoded values are stored as
// standard base64 strings (listed in decoded_fields) so that the result stays JSON.
func decodeResult(result json.RawMessage, fields []string) (json.RawMessage, []string, error) {
	if len(fields) == 0 {
		return result, []string{}, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(result, &obj); err != nil || obj == nil {
		return nil, nil, errStatus(400, "Parameter result must be an object when decode_fields is given")
	}
	for _, f := range fields {
		raw, ok := obj[f]
		if !ok {
			return nil, nil, errStatus(400, "Parameter decode_fields names %q, which is not in result", f)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, nil, errStatus(400, "Parameter decode_fields names %q, which is not a string", f)
		}
		b, err := DecodeBase85(s)
		if err != nil {
			return nil, nil, errStatus(400, "Parameter decode_fields: field %q: %v", f, err)
		}
		enc, _ := json.Marshal(base64.StdEncoding.EncodeToString(b))
		obj[f] = enc
	}
	out, _ := json.Marshal(obj)
	return out, fields, nil
}

package zerotask

// watchdog.go: the background work every pod shares.
//
//   - The watchdog consumes the task work queue. A task's message stays in the queue until the task
//     is finished or failed; the pod holding it lets its lease (Config.Lease) run out instead of
//     acknowledging it, so JetStream redelivers it every Lease to some pod, which then announces a
//     waiting task again, or checks that an assigned task's node is still alive and requeues the
//     task when it is not. A pod that dies simply stops holding its messages.
//   - The refresher keeps the records of the clients and nodes connected to this pod alive.
//   - The sweeper deletes node records nobody refreshed within NodeTimeout.
//   - The re-announcer announces every waiting task when a node connects.

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// watch handles one delivery of a task's queue message.
func (b *Broker) watch(ctx context.Context, j *jetstream.Job) {
	if j.Deliveries <= 1 {
		// Just submitted and announced: hold it for one lease (or until the task is done).
		if i := strings.LastIndexByte(j.Subject, '.'); i >= 0 {
			b.hold(unkey(j.Subject[i+1:]), j)
		}
		return
	}
	var q queueMsg
	if err := json.Unmarshal(j.Data, &q); err != nil || q.ID == "" {
		b.log.Error("zerotask: bad queue message, dropped", "subject", j.Subject, "seq", j.Sequence)
		_ = j.AckAsync()
		return
	}
	t, _, err := b.getTask(ctx, q.ID, true)
	switch {
	case errors.Is(err, jetstream.ErrNotFound):
		_ = j.AckAsync() // fetched and expired, or never stored
		return
	case err != nil:
		b.log.Warn("zerotask watchdog: read task", "task", q.ID, "err", err)
		return
	}
	switch t.Status {
	case StatusFinished, StatusFailed:
		b.release(t.ID)
		_ = j.AckAsync()
	case StatusQueued:
		b.hold(t.ID, j)
		b.announce(t)
	case StatusAssigned, StatusRunning:
		b.hold(t.ID, j)
		if b.nodeAlive(ctx, t.NodeID) {
			return
		}
		if err := b.requeue(ctx, t.ID, t.NodeID, "node lost"); err != nil {
			b.log.Warn("zerotask watchdog: requeue", "task", t.ID, "err", err)
		}
	}
}

// nodeAlive reports whether a node's record exists and was refreshed within NodeTimeout.
func (b *Broker) nodeAlive(ctx context.Context, id string) bool {
	e, err := b.nodes.Get(ctx, key(id))
	if err != nil {
		return !errors.Is(err, jetstream.ErrNotFound) // unsure: keep the task where it is
	}
	var p Peer
	if json.Unmarshal(e.Value, &p) != nil {
		return false
	}
	return p.alive(time.Now(), b.cfg.NodeTimeout)
}

// refresh renews the records of the clients and nodes registered over this pod's open
// connections, and forgets those whose record was taken over elsewhere.
func (b *Broker) refresh(ctx context.Context) {
	type item struct {
		id   string
		node bool
		conn string
	}
	var items []item
	b.mu.Lock()
	for id, le := range b.nodeL {
		if le.conn != "" {
			items = append(items, item{id, true, le.conn})
		}
	}
	for id, le := range b.cliL {
		if le.conn != "" {
			items = append(items, item{id, false, le.conn})
		}
	}
	b.mu.Unlock()
	for _, it := range items {
		if ctx.Err() != nil {
			return
		}
		if !b.connected(it.conn) {
			b.dropConn(ctx, it.conn)
			continue
		}
		kv := b.clients
		if it.node {
			kv = b.nodes
		}
		hexConn := hex.EncodeToString([]byte(it.conn))
		lost := false
		e, err := kv.Mutate(ctx, key(it.id), func(cur []byte, exists bool) ([]byte, error) {
			var p Peer
			if !exists || json.Unmarshal(cur, &p) != nil || p.Pod != b.pod || p.Conn != hexConn {
				lost = true
				return nil, jetstream.ErrSkip
			}
			lost = false
			p.LastSeen = time.Now().UTC()
			return json.Marshal(&p)
		})
		if err != nil {
			b.log.Warn("zerotask: refresh", "id", it.id, "err", err)
			continue
		}
		if lost {
			b.forget(it.id, it.node)
			continue
		}
		b.mu.Lock()
		m := b.cliL
		if it.node {
			m = b.nodeL
		}
		if le := m[it.id]; le != nil {
			le.rev, le.lastWrite = e.Revision, time.Now()
		}
		b.mu.Unlock()
	}
}

// sweep deletes node records that nobody refreshed within NodeTimeout (their tasks are requeued
// by the watchdog when it next sees them), and the records of ZeroMQ clients whose pod died more
// than ResultTTL ago.
func (b *Broker) sweep(ctx context.Context) {
	b.sweepNodes(ctx)
	if keys, err := b.clients.Keys(ctx, ""); err == nil {
		now := time.Now()
		for _, k := range keys {
			e, err := b.clients.Get(ctx, k)
			if err != nil {
				continue
			}
			var p Peer
			if json.Unmarshal(e.Value, &p) != nil || p.Transport != viaZMQ || now.Sub(p.LastSeen) < b.cfg.NodeTimeout+b.cfg.ResultTTL {
				continue
			}
			_ = b.clients.Delete(ctx, k, e.Revision)
		}
	}
}

func (b *Broker) sweepNodes(ctx context.Context) {
	keys, err := b.nodes.Keys(ctx, "")
	if err != nil {
		if !strings.Contains(err.Error(), "no keys") {
			b.log.Debug("zerotask sweep: keys", "err", err)
		}
		return
	}
	now := time.Now()
	for _, k := range keys {
		e, err := b.nodes.Get(ctx, k)
		if err != nil {
			continue
		}
		var p Peer
		if json.Unmarshal(e.Value, &p) == nil && p.alive(now, b.cfg.NodeTimeout) {
			continue
		}
		if err := b.nodes.Delete(ctx, k, e.Revision); err == nil {
			b.log.Info("zerotask: node timed out", "node", unkey(k))
			b.forget(unkey(k), true)
		}
	}
}

// MaxReannounce bounds how many waiting tasks one re-announcement reads.
const MaxReannounce = 10000

// announceWaiting announces every task still QUEUED (the queue holds one subject per unfinished
// task: zerotask.queue.<method>.<task key>).
func (b *Broker) announceWaiting(ctx context.Context) {
	counts, err := b.js.SubjectCounts(ctx, streamQueue, b.js.Subject("zerotask", "queue", ">"))
	if err != nil {
		b.log.Warn("zerotask: list waiting tasks", "err", err)
		return
	}
	n := 0
	for subj := range counts {
		if n++; n > MaxReannounce || ctx.Err() != nil {
			return
		}
		i := strings.LastIndexByte(subj, '.')
		if i < 0 {
			continue
		}
		t, _, err := b.getTask(ctx, unkey(subj[i+1:]), true)
		if err == nil && t.Status == StatusQueued {
			b.announce(t)
		}
	}
}

// maxHeld bounds the deliveries a pod remembers (beyond it, they wait for their lease).
const maxHeld = 100000

// maxDone bounds the ids of tasks done whose delivery was not (yet) held here.
const maxDone = 16384

// hold remembers the delivery of a task's queue message; a task already done is acked at once
// (its result event may come before its first delivery).
func (b *Broker) hold(id string, j *jetstream.Job) {
	b.heldMu.Lock()
	if _, done := b.done[id]; done {
		b.heldMu.Unlock()
		_ = j.AckAsync()
		return
	}
	if _, ok := b.held[id]; ok || len(b.held) < maxHeld {
		b.held[id] = j
	}
	b.heldMu.Unlock()
}

// release acknowledges the held delivery of a finished or failed task (its queue message goes),
// or notes the task as done for a delivery still to come.
func (b *Broker) release(id string) {
	b.heldMu.Lock()
	j := b.held[id]
	delete(b.held, id)
	if j == nil {
		if _, ok := b.done[id]; !ok {
			if len(b.doneRing) == maxDone {
				delete(b.done, b.doneRing[b.doneNext])
				b.doneRing[b.doneNext] = id
				b.doneNext = (b.doneNext + 1) % maxDone
			} else {
				b.doneRing = append(b.doneRing, id)
			}
			b.done[id] = struct{}{}
		}
	}
	b.heldMu.Unlock()
	if j != nil {
		_ = j.AckAsync()
	}
}

var resultReadyParams = []byte(`"params": {"task_id": `)

// releaseFromEvent handles a task_result_ready notification from any pod.
func (b *Broker) releaseFromEvent(data []byte) {
	if i := bytes.Index(data, resultReadyParams); i >= 0 {
		start := i + len(resultReadyParams)
		if e := scanString(data, start); e > 0 {
			if id, ok := unquote(data[start:e]); ok && id != "" {
				b.release(id)
				return
			}
		}
	}
	var n struct {
		Params struct {
			TaskID string `json:"task_id"`
		} `json:"params"`
	}
	if json.Unmarshal(data, &n) == nil && n.Params.TaskID != "" {
		b.release(n.Params.TaskID)
	}
}

package eventmq

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"sort"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// Every pod writes what only it knows (its connected workers and schedulers, the jobs they run,
// its counters) to KV EVENTMQ_PODS; the admin socket and API merge the snapshots of all live pods.

type podSnapshot struct {
	Pod        string               `json:"pod"`
	Updated    time.Time            `json:"updated"`
	Workers    []workerInfo         `json:"workers"`
	Schedulers []schedulerInfo      `json:"schedulers"`
	Queues     map[string]queueInfo `json:"queues"`
}

type workerInfo struct {
	ID             string        `json:"id"`
	Pod            string        `json:"pod"`
	Queues         []QueueWeight `json:"queues"`
	AvailableSlots int           `json:"available_slots"`
	Inflight       int           `json:"inflight"`
	HB             float64       `json:"hb"`
	Connected      time.Time     `json:"connected"`
	Processed      int64         `json:"processed"`
}

type schedulerInfo struct {
	ID        string    `json:"id"`
	Pod       string    `json:"pod"`
	HB        float64   `json:"hb"`
	Connected time.Time `json:"connected"`
}

type queueInfo struct {
	Inflight     int   `json:"inflight"`
	Dispatched   int64 `json:"dispatched"`
	Done         int64 `json:"done"`
	Failed       int64 `json:"failed"`
	Redelivered  int64 `json:"redelivered"`
	AgeSumMillis int64 `json:"age_sum_ms"`
	AgeMaxMillis int64 `json:"age_max_ms"`
}

func unixFloat(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func podKey(pod string) string {
	sum := sha1.Sum([]byte(pod))
	return "pod." + hex.EncodeToString(sum[:10])
}

func (a *Adapter) snapshot() podSnapshot {
	b := a.b
	now := time.Now()
	s := podSnapshot{Pod: a.env.PodID, Updated: now.UTC(), Queues: map[string]queueInfo{}}
	b.mu.Lock()
	defer b.mu.Unlock()
	for q, st := range b.stats {
		s.Queues[q] = queueInfo{Dispatched: st.dispatched, Done: st.done, Failed: st.failed, Redelivered: st.redelivered}
	}
	for _, w := range b.workers {
		s.Workers = append(s.Workers, workerInfo{ID: peerName(w.id), Pod: a.env.PodID, Queues: w.queues,
			AvailableSlots: w.free, Inflight: len(w.inflight), HB: unixFloat(w.lastSeen), Connected: w.connected.UTC(),
			Processed: w.processed})
		for _, f := range w.inflight {
			qi := s.Queues[f.queue]
			qi.Inflight++
			age := now.Sub(f.dispatched).Milliseconds()
			qi.AgeSumMillis += age
			qi.AgeMaxMillis = max(qi.AgeMaxMillis, age)
			s.Queues[f.queue] = qi
		}
	}
	for _, sp := range b.schedulers {
		s.Schedulers = append(s.Schedulers, schedulerInfo{ID: peerName(sp.id), Pod: a.env.PodID, HB: unixFloat(sp.lastSeen), Connected: sp.connected.UTC()})
	}
	sort.Slice(s.Workers, func(i, j int) bool { return s.Workers[i].ID < s.Workers[j].ID })
	sort.Slice(s.Schedulers, func(i, j int) bool { return s.Schedulers[i].ID < s.Schedulers[j].ID })
	return s
}

func (a *Adapter) flushEvery() time.Duration {
	return max(min(a.cfg.heartbeat, 2*time.Second), 50*time.Millisecond)
}

// flusher writes this pod's snapshot periodically and soon after a change.
func (a *Adapter) flusher() {
	defer a.wg.Done()
	t := time.NewTicker(a.flushEvery())
	defer t.Stop()
	refresh := time.NewTicker(max(a.cfg.queueTTL/8, time.Second))
	defer refresh.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-refresh.C:
			a.queues.refresh()
			continue
		case <-t.C:
		case <-a.flushNow:
		}
		if err := a.writeSnapshot(); err != nil && a.ctx.Err() == nil {
			a.log.Debug("eventmq pod snapshot", "err", err)
		}
	}
}

func (a *Adapter) writeSnapshot() error {
	ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
	defer cancel()
	kv, err := a.js.KV(ctx, BucketPods)
	if err != nil {
		return err
	}
	data, err := json.Marshal(a.snapshot())
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, podKey(a.env.PodID), data)
	return err
}

// cluster reads the snapshots of every live pod (this pod's from memory).
func (a *Adapter) cluster(ctx context.Context) ([]podSnapshot, error) {
	own := a.snapshot()
	out := []podSnapshot{own}
	kv, err := a.js.KV(ctx, BucketPods)
	if err != nil {
		return out, err
	}
	keys, err := kv.Keys(ctx, "")
	if err != nil {
		return out, err
	}
	stale := max(3*a.flushEvery(), 2*time.Second)
	for _, k := range keys {
		if k == podKey(a.env.PodID) {
			continue
		}
		e, err := kv.Get(ctx, k)
		if err != nil {
			if errors.Is(err, jetstream.ErrNotFound) {
				continue
			}
			return out, err
		}
		var s podSnapshot
		if json.Unmarshal(e.Value, &s) != nil || time.Since(s.Updated) > stale {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

// queueDepth returns (waiting, in flight) of a queue from its consumer.
func (a *Adapter) queueDepth(ctx context.Context, q string) (uint64, int, error) {
	c, err := a.b.consumer(ctx, q)
	if err != nil {
		return 0, 0, err
	}
	return c.Pending(ctx)
}

// knownQueues is default plus every declared queue plus the queues of local workers.
func (a *Adapter) knownQueues() []string {
	set := map[string]bool{DefaultQueue: true}
	for _, q := range a.queues.list() {
		set[q.Name] = true
	}
	a.b.mu.Lock()
	for _, w := range a.b.workers {
		for _, q := range w.queues {
			set[q.Name] = true
		}
	}
	a.b.mu.Unlock()
	out := make([]string, 0, len(set))
	for q := range set {
		out = append(out, q)
	}
	sort.Strings(out)
	return out
}

func (a *Adapter) updateDepths() {
	ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
	defer cancel()
	for _, q := range a.knownQueues() {
		w, f, err := a.queueDepth(ctx, q)
		if err != nil {
			continue
		}
		a.m.depth.WithLabelValues(q).Set(float64(w) + float64(f))
	}
}

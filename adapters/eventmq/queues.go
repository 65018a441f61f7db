package eventmq

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"sort"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// queueRegistry is the cluster-wide set of queue names workers declared (KV EVENTMQ_QUEUES), so
// that "unknown queue → default" is decided the same way on every pod. Entries expire after
// --eventmq-queue-ttl without a worker declaring the queue again.
type queueRegistry struct {
	a     *Adapter
	mu    sync.RWMutex
	names map[string]queueRecord // by name
	put   map[string]time.Time   // when this pod last wrote the name
}

// queueRecord is the value of a key of EVENTMQ_QUEUES.
type queueRecord struct {
	Name     string    `json:"name"`
	Weight   int       `json:"weight"`
	Pod      string    `json:"pod"`
	Declared time.Time `json:"declared"`
}

func newQueueRegistry(a *Adapter) *queueRegistry {
	return &queueRegistry{a: a, names: map[string]queueRecord{}, put: map[string]time.Time{}}
}

// queueKey is a KV-safe key for a queue name.
func queueKey(name string) string {
	sum := sha1.Sum([]byte(name))
	return "q." + hex.EncodeToString(sum[:10])
}

func (r *queueRegistry) start() error {
	a := r.a
	kv, err := a.js.KV(a.ctx, BucketQueues)
	if err != nil {
		return err
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		watchForever(a, kv, func(e jetstream.Entry) {
			var rec queueRecord
			if e.Deleted {
				r.mu.Lock()
				for n := range r.names {
					if queueKey(n) == e.Key {
						delete(r.names, n)
					}
				}
				r.mu.Unlock()
				return
			}
			if json.Unmarshal(e.Value, &rec) == nil && rec.Name != "" {
				r.mu.Lock()
				r.names[rec.Name] = rec
				r.mu.Unlock()
			}
		})
	}()
	return nil
}

// watchForever watches every key of kv and calls fn for each update, restarting the watch when
// it ends before the adapter stops.
func watchForever(a *Adapter, kv *jetstream.KV, fn func(jetstream.Entry)) {
	for a.ctx.Err() == nil {
		ch, err := kv.Watch(a.ctx, ">", true)
		if err == nil {
			for e := range ch {
				if e.Key != "" {
					fn(e)
				}
			}
		}
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// known reports whether a worker declared the queue within the queue TTL (KV drops expired
// entries without telling watchers, so the age is checked here).
func (r *queueRegistry) known(name string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	rec, ok := r.names[name]
	return ok && time.Since(rec.Declared) < r.a.cfg.queueTTL
}

func (r *queueRegistry) list() []queueRecord {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]queueRecord, 0, len(r.names))
	for _, q := range r.names {
		if time.Since(q.Declared) < r.a.cfg.queueTTL {
			out = append(out, q)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// declare records the queues of a worker (writing KV only when this pod has not refreshed them
// recently).
func (r *queueRegistry) declare(qs []QueueWeight) {
	a := r.a
	now := time.Now()
	var todo []queueRecord
	r.mu.Lock()
	for _, q := range qs {
		rec := queueRecord{Name: q.Name, Weight: q.Weight, Pod: a.env.PodID, Declared: now.UTC()}
		if now.Sub(r.put[q.Name]) > a.cfg.queueTTL/4 {
			r.put[q.Name] = now
			r.names[q.Name] = rec
			todo = append(todo, rec)
		}
	}
	r.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		defer cancel()
		kv, err := a.js.KV(ctx, BucketQueues)
		if err != nil {
			a.log.Warn("queue registry", "err", err)
			return
		}
		for _, rec := range todo {
			data, _ := json.Marshal(rec)
			if _, err := kv.Put(ctx, queueKey(rec.Name), data); err != nil {
				a.log.Warn("queue registry put", "queue", rec.Name, "err", err)
				r.mu.Lock()
				delete(r.put, rec.Name)
				r.mu.Unlock()
			}
		}
	}()
}

// refresh re-declares the queues of the local workers (keeps them known while they live).
func (r *queueRegistry) refresh() {
	b := r.a.b
	var qs []QueueWeight
	b.mu.Lock()
	for _, w := range b.workers {
		qs = append(qs, w.queues...)
	}
	b.mu.Unlock()
	if len(qs) > 0 {
		r.declare(qs)
	}
}

package tracker

// stash.go: stashes with drip-feed, and enqueueing straight from NATS (the submit subject).

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// StashState is a stash's drip-feed setting and the items it has released that are not finished
// yet (KV TRACKER_CONFIG key stash.<name>).
type StashState struct {
	Concurrency int      `json:"concurrency"`
	Active      []string `json:"active"`
}

func (q *Queue) stashConsumer(ctx context.Context, stash string) (*jetstream.Consumer, error) {
	subj := q.stashSubject(stash)
	q.consMu.Lock()
	c, ok := q.stashCons[subj]
	q.consMu.Unlock()
	if ok {
		return c, nil
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(stash))
	c, err := q.js.EnsureConsumer(ctx, jetstream.ConsumerSpec{Stream: streamStash, Durable: fmt.Sprintf("TRACKER_ST_%016x", h.Sum64()),
		Description: "tracker stash " + stash, FilterSubjects: []string{subj}, AckWait: 30 * time.Second})
	if err != nil {
		return nil, err
	}
	q.consMu.Lock()
	q.stashCons[subj] = c
	q.consMu.Unlock()
	return c, nil
}

// release moves a stashed item into the ready queue.
func (q *Queue) release(ctx context.Context, id string) error {
	_, err := q.transition(ctx, id, func(r *Record) (effects, error) {
		if r.Status != StatusStashed {
			return effects{}, jetstream.ErrSkip
		}
		return effects{enqueue: true, events: []string{"queued"}, reason: "drip-fed", attempt: -1}, nil
	})
	return err
}

// dripOnce releases items of one stash up to its concurrency.
func (q *Queue) dripOnce(ctx context.Context, stash string) error {
	key := "stash." + stash
	ent, err := q.config.Get(ctx, key)
	if err != nil {
		return err
	}
	var st StashState
	if err := json.Unmarshal(ent.Value, &st); err != nil {
		return fmt.Errorf("stash %s: %w", stash, err)
	}
	if st.Concurrency <= 0 {
		return nil
	}
	var active []string
	for _, id := range st.Active {
		e, err := q.items.Get(ctx, id)
		if errors.Is(err, jetstream.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		r, err := decodeRecord(e.Value)
		if err != nil {
			continue
		}
		switch r.Status {
		case StatusTodo, StatusClaimed:
			active = append(active, id)
		case StatusStashed: // released before a crash: finish the job
			if err := q.release(ctx, id); err != nil {
				return err
			}
			active = append(active, id)
		}
	}
	free := st.Concurrency - len(active)
	var jobs []*jetstream.Job
	if free > 0 {
		cons, err := q.stashConsumer(ctx, stash)
		if err != nil {
			return err
		}
		jobs, err = cons.FetchNoWait(min(free, 256))
		if err != nil {
			q.consMu.Lock()
			delete(q.stashCons, q.stashSubject(stash))
			q.consMu.Unlock()
			return err
		}
	}
	var ids []string
	for _, j := range jobs {
		var tok token
		if json.Unmarshal(j.Data, &tok) == nil && tok.ID != "" {
			ids = append(ids, tok.ID)
		}
	}
	if len(ids) == 0 && len(active) == len(st.Active) {
		for _, j := range jobs {
			_ = j.AckAsync()
		}
		return nil
	}
	st.Active = append(active, ids...)
	b, _ := json.Marshal(st)
	if _, err := q.config.Update(ctx, key, b, ent.Revision); err != nil {
		for _, j := range jobs {
			_ = j.Retry(0)
		}
		if errors.Is(err, jetstream.ErrConflict) {
			return nil
		}
		return err
	}
	for i, j := range jobs {
		if i < len(ids) {
			if err := q.release(ctx, ids[i]); err != nil {
				var se *statusError
				if !errors.As(err, &se) {
					return err // stays in Active; the next round releases it
				}
			}
		}
		_ = j.AckAsync()
	}
	return nil
}

// SetStash sets a stash's drip-feed concurrency (0 pauses it).
func (q *Queue) SetStash(ctx context.Context, stash string, concurrency int) (StashState, error) {
	var out StashState
	_, err := q.config.Mutate(ctx, "stash."+stash, func(cur []byte, exists bool) ([]byte, error) {
		st := StashState{}
		if exists {
			if err := json.Unmarshal(cur, &st); err != nil {
				return nil, err
			}
		}
		st.Concurrency = concurrency
		if st.Active == nil {
			st.Active = []string{}
		}
		out = st
		return json.Marshal(st)
	})
	return out, err
}

func (a *Adapter) dripLoop() {
	t := time.NewTicker(a.dripEvery)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(a.ctx, a.cmdTimeout)
		keys, err := a.q.config.Keys(ctx, "stash.*")
		if err != nil && !strings.Contains(err.Error(), "no keys") {
			a.env.Log.Debug("tracker: stash keys", "err", err)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if err := a.q.dripOnce(ctx, strings.TrimPrefix(k, "stash.")); err != nil && ctx.Err() == nil {
				a.env.Log.Warn("tracker: drip-feed", "stash", k, "err", err)
			}
		}
		cancel()
	}
}

// submitLoop enqueues items published on tracker.submit; invalid ones go to tracker.rejects with
// the reason.
func (a *Adapter) submitLoop() {
	var cons *jetstream.Consumer
	for {
		var err error
		ctx, cancel := context.WithTimeout(a.ctx, a.cmdTimeout)
		cons, err = a.env.JS.Consumer(ctx, streamSubmit, consSubmit)
		cancel()
		if err == nil {
			break
		}
		a.env.Log.Warn("tracker: submit consumer", "err", err)
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	// submissions are handled by submitWorkers goroutines at once; the items of one queue
	// (pipeline type, run_on, priority, stash) all go to the same worker, in their order
	var wg sync.WaitGroup
	work := make([]chan submission, submitWorkers)
	for i := range work {
		work[i] = make(chan submission, 4)
		wg.Add(1)
		go func(ch chan submission) {
			defer wg.Done()
			for s := range ch {
				a.handleSubmit(s)
			}
		}(work[i])
	}
	defer func() {
		for _, ch := range work {
			close(ch)
		}
		wg.Wait()
	}()
	stop, err := cons.Consume(func(j *jetstream.Job) {
		s := submission{j: j}
		s.it, s.err = DecodeNewItem(j.Data)
		shard := 0
		if s.err == nil {
			h := fnv.New32a()
			for _, k := range []string{s.it.PipelineType, s.it.RunOn, strconv.Itoa(s.it.Priority), s.it.Stash} {
				_, _ = h.Write([]byte(k))
				_, _ = h.Write([]byte{0})
			}
			shard = int(h.Sum32() % submitWorkers)
		}
		work[shard] <- s
	}, 64)
	if err != nil {
		a.env.Log.Error("tracker: submit consume", "err", err)
		return
	}
	<-a.ctx.Done()
	stop()
}

// submitWorkers is how many submissions a pod handles at once.
const submitWorkers = 16

// submission is a message of the submit stream, decoded.
type submission struct {
	j   *jetstream.Job
	it  NewItem
	err error
}

// reject sends a submission that cannot be queued to tracker.rejects with the reason.
func (a *Adapter) reject(j *jetstream.Job, reason string) {
	b, _ := json.Marshal(map[string]any{"reason": reason, "data": string(j.Data), "time": epoch(time.Now())})
	ctx, cancel := context.WithTimeout(a.ctx, a.cmdTimeout)
	defer cancel()
	if _, err := a.env.JS.Publish(ctx, a.env.JS.Subject("tracker", "rejects"), b,
		jetstream.PubOpts{MsgID: fmt.Sprintf("reject:%d:%d", j.Sequence, j.Time.UnixNano())}); err != nil {
		_ = j.Retry(time.Second)
		return
	}
	_ = j.AckAsync()
}

func (a *Adapter) handleSubmit(s submission) {
	j, it := s.j, s.it
	if s.err != nil {
		a.reject(j, s.err.Error())
		return
	}
	lookFirst := it.ID != "" // a submitter's own id may be submitted again
	if it.ID == "" {
		// a redelivered submission must not enqueue twice: derive the id from the stored message
		h := sha256.New()
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], j.Sequence)
		h.Write(n[:])
		binary.BigEndian.PutUint64(n[:], uint64(j.Time.UnixNano()))
		h.Write(n[:])
		h.Write(j.Data)
		var b [16]byte
		copy(b[:], h.Sum(nil))
		b[6] = b[6]&0x0f | 0x50
		b[8] = b[8]&0x3f | 0x80
		it.ID = uuidString(b)
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.cmdTimeout)
	defer cancel()
	if _, _, err := a.q.enqueue(ctx, it, lookFirst); err != nil {
		var se *statusError
		if errors.As(err, &se) && se.status < 500 {
			a.reject(j, se.msg)
			return
		}
		a.env.Log.Warn("tracker: submit", "err", err)
		_ = j.Retry(time.Second)
		return
	}
	_ = j.AckAsync()
}

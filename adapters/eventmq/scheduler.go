package eventmq

import (
	"context"
	"crypto/sha1"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// The scheduler keeps SCHEDULEs in KV EVENTMQ_SCHEDULES (key = the original's job hash) and fires
// each due run exactly once across all pods: every pod may publish the run's job (its NATS msg id
// is derived from the schedule and the run's time, so JetStream keeps one copy), and only the pod
// whose compare-and-set on the schedule's revision wins moves it to its next run.

// scheduleRecord is the value of a key of EVENTMQ_SCHEDULES.
type scheduleRecord struct {
	Hash     string `json:"hash"`
	Queue    string `json:"queue"`
	Headers  string `json:"headers"`
	Interval int    `json:"interval"`
	Cron     string `json:"cron,omitempty"`
	// Payload is the job frame (json.dumps(["run", {...}])) exactly as received.
	Payload string `json:"payload"`
	// RunCount is the number of runs left; -1 runs forever.
	RunCount int       `json:"run_count"`
	NextRun  time.Time `json:"next_run"`
	Runs     int64     `json:"runs"`
	MsgID    string    `json:"msgid"`
	Created  time.Time `json:"created"`
}

type schedEntry struct {
	rec scheduleRecord
	rev uint64
}

type scheduler struct {
	a  *Adapter
	kv *jetstream.KV

	mu   sync.Mutex
	recs map[string]schedEntry
}

func newScheduler(a *Adapter) *scheduler { return &scheduler{a: a, recs: map[string]schedEntry{}} }

func (s *scheduler) start() error {
	a := s.a
	kv, err := a.js.KV(a.ctx, BucketSchedules)
	if err != nil {
		return err
	}
	s.kv = kv
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		watchForever(a, kv, func(e jetstream.Entry) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if e.Deleted {
				delete(s.recs, e.Key)
			} else {
				var rec scheduleRecord
				if json.Unmarshal(e.Value, &rec) == nil {
					if cur, ok := s.recs[e.Key]; !ok || cur.rev < e.Revision {
						s.recs[e.Key] = schedEntry{rec: rec, rev: e.Revision}
					}
				}
			}
			a.m.schedules.Set(float64(len(s.recs)))
		})
	}()
	a.every(a.cfg.scheduleTick, s.tick)
	return nil
}

// next is the run after from.
func (r *scheduleRecord) next(from time.Time) (time.Time, error) {
	if r.Interval >= 0 {
		return from.Add(time.Duration(max(r.Interval, 1)) * time.Second), nil
	}
	c, err := parseCron(r.Cron)
	if err != nil {
		return time.Time{}, err
	}
	t := c.Next(from)
	if t.IsZero() {
		return t, fmt.Errorf("cron %q never fires: %w", r.Cron, ErrField)
	}
	return t, nil
}

// schedule stores a SCHEDULE. Without nohaste the first run happens at once (as the original).
func (s *scheduler) schedule(ctx context.Context, m Schedule) error {
	hash, err := ScheduleHash(m.Payload)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	rec := scheduleRecord{Hash: hash, Queue: m.Queue, Headers: m.Headers.Raw, Interval: m.Interval, Cron: m.Cron,
		Payload: string(m.Payload), RunCount: m.Headers.RunCount, MsgID: m.MsgID, Created: now}
	if rec.Interval < 0 {
		rec.Interval = -1
		if _, err := parseCron(rec.Cron); err != nil {
			return err
		}
	}
	if !m.Headers.NoHaste && rec.RunCount != 0 {
		if err := s.fire(ctx, &rec, "haste:"+m.MsgID); err != nil {
			return err
		}
		rec.Runs++
		if rec.RunCount > 0 {
			rec.RunCount--
		}
	}
	if rec.RunCount == 0 {
		return s.kv.Delete(ctx, hash, 0)
	}
	if rec.NextRun, err = rec.next(now); err != nil {
		return err
	}
	data, _ := json.Marshal(rec)
	rev, err := s.kv.Put(ctx, hash, data)
	if err != nil {
		return err
	}
	s.remember(hash, rec, rev)
	return nil
}

func (s *scheduler) remember(key string, rec scheduleRecord, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.recs[key]; !ok || cur.rev < rev {
		s.recs[key] = schedEntry{rec: rec, rev: rev}
	}
}

// unschedule removes the schedule with the same job hash.
func (s *scheduler) unschedule(ctx context.Context, m Schedule) error {
	hash, err := ScheduleHash(m.Payload)
	if err != nil {
		return err
	}
	if err := s.kv.Delete(ctx, hash, 0); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.recs, hash)
	s.mu.Unlock()
	return nil
}

// runMsgID is the deterministic msgid of one run of a schedule.
func runMsgID(hash, run string) string {
	sum := sha1.Sum([]byte("eventmq-schedule:" + hash + ":" + run))
	var b [16]byte
	copy(b[:], sum[:16])
	return formatUUID(b, 5)
}

// fire publishes one run's job, as the original scheduler's REQUEST (headers reply-requested).
func (s *scheduler) fire(ctx context.Context, rec *scheduleRecord, run string) error {
	a := s.a
	msgid := runMsgID(rec.Hash, run)
	if err := a.enqueue(ctx, a.effectiveQueue(rec.Queue), rec.Queue, msgid, "reply-requested", []byte(rec.Payload)); err != nil {
		return fmt.Errorf("schedule %s run %s: %w", rec.Hash, run, err)
	}
	return nil
}

func (s *scheduler) tick() {
	a := s.a
	now := time.Now()
	var due []struct {
		key string
		e   schedEntry
	}
	s.mu.Lock()
	for k, e := range s.recs {
		if !e.rec.NextRun.After(now) {
			due = append(due, struct {
				key string
				e   schedEntry
			}{k, e})
		}
	}
	s.mu.Unlock()
	for _, d := range due {
		ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
		if err := s.run(ctx, d.key, d.e, now); err != nil && a.ctx.Err() == nil {
			a.log.Warn("schedule run", "schedule", d.key, "err", err)
		}
		cancel()
	}
}

func (s *scheduler) run(ctx context.Context, key string, e schedEntry, now time.Time) error {
	rec := e.rec
	if err := s.fire(ctx, &rec, strconv.FormatInt(rec.NextRun.UnixMilli(), 10)); err != nil {
		return err
	}
	rec.Runs++
	if rec.RunCount > 0 {
		rec.RunCount--
	}
	var err error
	if rec.RunCount == 0 {
		err = s.kv.Delete(ctx, key, e.rev)
		if err == nil {
			s.mu.Lock()
			delete(s.recs, key)
			s.mu.Unlock()
		}
	} else {
		from := rec.NextRun
		if rec.Interval < 0 || from.Add(time.Duration(max(rec.Interval, 1))*time.Second).Before(now) {
			from = now
		}
		if rec.NextRun, err = rec.next(from); err != nil {
			return err
		}
		data, _ := json.Marshal(rec)
		var rev uint64
		rev, err = s.kv.Update(ctx, key, data, e.rev)
		if err == nil {
			s.remember(key, rec, rev)
		}
	}
	if errors.Is(err, jetstream.ErrConflict) {
		return nil // another pod moved it on (and published the same run, de-duplicated)
	}
	if err == nil {
		s.a.m.fired.Inc()
	}
	return err
}

func (s *scheduler) list() []scheduleRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]scheduleRecord, 0, len(s.recs))
	for _, e := range s.recs {
		out = append(out, e.rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Hash < out[j].Hash })
	return out
}

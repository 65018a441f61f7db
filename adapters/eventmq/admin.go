package eventmq

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

// onAdmin answers emq-cli on the administrative socket: [”, eMQP/1.0, CMD, admin:uuid] →
// [”, eMQP/1.0, REPLY, id, json]; DISCONNECT → ACK, then KBYE to every worker and scheduler.
func (a *Adapter) onAdmin(zm zmtp.Message) {
	m, err := Parse(zm.Frames)
	if err != nil {
		a.bad("admin", zm.Peer, err)
		return
	}
	a.in(m.Command)
	switch m.Command {
	case CmdStatus, CmdRouterShowWorkers, CmdRouterShowSchedulers:
		peer := append([]byte(nil), zm.Peer...)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
			defer cancel()
			var v any
			var err error
			switch m.Command {
			case CmdStatus:
				v, err = a.statusReply(ctx)
			case CmdRouterShowWorkers:
				v, err = a.workersReply(ctx)
			default:
				v, err = a.schedulersReply(ctx)
			}
			if err != nil {
				a.fail("admin")
				a.log.Warn("admin "+m.Command, "err", err)
			}
			data, _ := json.Marshal(v)
			_ = a.send(a.admin, peer, CmdReply, string(data))
		}()
	case CmdDisconnect:
		_ = a.send(a.admin, zm.Peer, CmdAck, m.MsgID)
		// Every pod says KBYE to its workers and schedulers (this one too, through NATS; directly
		// when NATS does not take the broadcast).
		if err := a.js.PublishCore(a.js.Subject("eventmq", "control", "disconnect"), []byte(m.MsgID), nil); err != nil {
			a.b.kbyeAll()
		}
	default:
		// HELLO and anything else: ignored, as the original does.
	}
}

// statusReply has the original get_status() shape, from every live pod.
func (a *Adapter) statusReply(ctx context.Context) (map[string]any, error) {
	pods, err := a.cluster(ctx)
	inflight := map[string]int{}
	avg := map[string]int64{}
	maxLat := map[string]int64{}
	processed := map[string]int64{}
	byWorker := map[string]int64{}
	sums := map[string]int64{}
	for _, p := range pods {
		for q, qi := range p.Queues {
			inflight[q] += qi.Inflight
			sums[q] += qi.AgeSumMillis
			maxLat[q] = max(maxLat[q], qi.AgeMaxMillis)
			processed[q] += qi.Dispatched
		}
		for _, w := range p.Workers {
			byWorker[w.ID] += w.Processed
		}
	}
	for q, n := range inflight {
		if n > 0 {
			avg[q] = sums[q] / int64(n)
		} else {
			delete(maxLat, q)
		}
	}
	for q := range inflight {
		if inflight[q] == 0 {
			delete(inflight, q)
		}
	}
	waiting := map[string]uint64{}
	for _, q := range a.knownQueues() {
		w, _, derr := a.queueDepth(ctx, q)
		if derr != nil {
			err = errors.Join(err, derr)
			continue
		}
		if w > 0 {
			waiting[q] = w
		}
	}
	return map[string]any{
		"inflight_messages_by_queue":    inflight,
		"latency_messages_by_queue":     avg,
		"max_latency_messages_by_queue": maxLat,
		"waiting_messages_by_queue":     waiting,
		"processed_messages_by_queue":   processed,
		"processed_messages_by_worker":  byWorker,
	}, err
}

type workerEntry struct {
	Queues         []QueueWeight `json:"queues"`
	HB             float64       `json:"hb"`
	AvailableSlots int           `json:"available_slots"`
	Pod            string        `json:"pod"`
	Inflight       int           `json:"inflight"`
}

// workersReply has the original get_workers_status() shape.
func (a *Adapter) workersReply(ctx context.Context) (map[string]any, error) {
	pods, err := a.cluster(ctx)
	workers := map[string]workerEntry{}
	queues := map[string][][2]any{}
	for _, p := range pods {
		for _, w := range p.Workers {
			workers[w.ID] = workerEntry{Queues: w.Queues, HB: w.HB, AvailableSlots: w.AvailableSlots, Pod: w.Pod, Inflight: w.Inflight}
			for _, q := range w.Queues {
				queues[q.Name] = append(queues[q.Name], [2]any{q.Weight, w.ID})
			}
		}
	}
	for _, l := range queues {
		sort.SliceStable(l, func(i, j int) bool { return l[i][0].(int) > l[j][0].(int) })
	}
	return map[string]any{"connected_workers": workers, "connected_queues": queues}, err
}

// schedulersReply has the original get_schedulers_status() shape.
func (a *Adapter) schedulersReply(ctx context.Context) (map[string]any, error) {
	pods, err := a.cluster(ctx)
	out := map[string]map[string]any{}
	for _, p := range pods {
		for _, s := range p.Schedulers {
			out[s.ID] = map[string]any{"hb": s.HB, "pod": s.Pod}
		}
	}
	return map[string]any{"connected_schedulers": out}, err
}

// ---- HTTP admin API ----

// QueueStatus is one entry of GET /api/v1/eventmq/queues.
type QueueStatus struct {
	Name        string `json:"name"`
	Waiting     uint64 `json:"waiting"`
	Inflight    int    `json:"inflight"`
	Workers     int    `json:"workers"`
	Slots       int    `json:"available_slots"`
	Dispatched  int64  `json:"dispatched"`
	Done        int64  `json:"done"`
	Failed      int64  `json:"failed"`
	Redelivered int64  `json:"redelivered"`
}

func (a *Adapter) registerAdminRoutes(env *bridge.Env) {
	if env.Admin == nil {
		return
	}
	g := env.Admin.Group("/eventmq")
	g.GET("/queues", func(c echo.Context) error {
		ctx := c.Request().Context()
		pods, err := a.cluster(ctx)
		if err != nil {
			return echo.NewHTTPError(http.StatusServiceUnavailable, err.Error())
		}
		byName := map[string]*QueueStatus{}
		get := func(q string) *QueueStatus {
			s := byName[q]
			if s == nil {
				s = &QueueStatus{Name: q}
				byName[q] = s
			}
			return s
		}
		for _, q := range a.knownQueues() {
			s := get(q)
			w, f, err := a.queueDepth(ctx, q)
			if err == nil {
				s.Waiting, s.Inflight = w, f
			}
		}
		for _, p := range pods {
			for q, qi := range p.Queues {
				s := get(q)
				s.Dispatched += qi.Dispatched
				s.Done += qi.Done
				s.Failed += qi.Failed
				s.Redelivered += qi.Redelivered
			}
			for _, w := range p.Workers {
				for _, q := range w.Queues {
					s := get(q.Name)
					s.Workers++
					s.Slots += w.AvailableSlots
				}
			}
		}
		out := make([]QueueStatus, 0, len(byName))
		for _, s := range byName {
			out = append(out, *s)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return c.JSON(http.StatusOK, map[string]any{"queues": out})
	})
	g.GET("/workers", func(c echo.Context) error {
		pods, err := a.cluster(c.Request().Context())
		if err != nil {
			return echo.NewHTTPError(http.StatusServiceUnavailable, err.Error())
		}
		workers := []workerInfo{}
		schedulers := []schedulerInfo{}
		for _, p := range pods {
			workers = append(workers, p.Workers...)
			schedulers = append(schedulers, p.Schedulers...)
		}
		return c.JSON(http.StatusOK, map[string]any{"workers": workers, "schedulers": schedulers})
	})
	g.GET("/schedules", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]any{"schedules": a.sched.list()})
	})
	g.GET("/jobs/:msgid", func(c echo.Context) error {
		msgid := c.Param("msgid")
		if checkText("msgid", []byte(msgid), MaxMsgIDLen, false) != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "bad msgid")
		}
		st, err := a.jobStatus(c.Request().Context(), msgid)
		if errors.Is(err, jetstream.ErrNotFound) {
			return echo.NewHTTPError(http.StatusNotFound, "no job "+msgid+" (unknown, or done without reply-requested, or its result expired)")
		}
		if err != nil {
			return echo.NewHTTPError(http.StatusServiceUnavailable, err.Error())
		}
		return c.JSON(http.StatusOK, st)
	})
}

// JobStatus is GET /api/v1/eventmq/jobs/{msgid}.
type JobStatus struct {
	MsgID  string        `json:"msgid"`
	Status string        `json:"status"` // pending | done | dead
	Queue  string        `json:"queue,omitempty"`
	Record *resultRecord `json:"record,omitempty"`
}

func (a *Adapter) jobStatus(ctx context.Context, msgid string) (JobStatus, error) {
	m, err := a.js.LastMsg(ctx, StreamResults, a.resultSubject(msgid))
	if err == nil {
		var rec resultRecord
		if err := json.Unmarshal(m.Data, &rec); err != nil {
			return JobStatus{}, err
		}
		return JobStatus{MsgID: msgid, Status: rec.Status, Queue: rec.Queue, Record: &rec}, nil
	}
	if !errors.Is(err, jetstream.ErrNotFound) {
		return JobStatus{}, err
	}
	counts, err := a.js.SubjectCounts(ctx, StreamJobs, a.js.Subject("eventmq", "jobs", "*", jetstream.Token(msgid)))
	if err != nil {
		return JobStatus{}, err
	}
	for subj, n := range counts {
		if n == 0 {
			continue
		}
		parts := strings.Split(a.js.Names().Unprefix(subj), ".")
		q := ""
		if len(parts) >= 3 {
			q = untoken(parts[2])
		}
		return JobStatus{MsgID: msgid, Status: "pending", Queue: q}, nil
	}
	return JobStatus{}, jetstream.ErrNotFound
}

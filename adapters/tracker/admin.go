package tracker

// admin.go: the tracker's admin API under /api/v1/tracker:
//
//	POST   /pipelines {"name","budget"?,"claims_per_minute"?} → 201 {"name","secret"} (secret shown once)
//	GET    /pipelines                       → [{name, created, budget, claims_per_minute, open_claims, connections}]
//	PATCH  /pipelines/{name} {"budget"?,"claims_per_minute"?}
//	DELETE /pipelines/{name}                → 204
//	POST   /items  one item or {"items":[…]} (schemas/tracker/submit-item.json) → 201 {"ids":[…]}
//	GET    /items/{id}                      → the item record (schemas/tracker/item-record.json)
//	POST   /items/{id}/requeue {"reason"?}  → the record (claim revoked; done → 409)
//	POST   /items/{id}/abandon {"reason"?}  → the record (error + dead letter; claim revoked)
//	GET    /queues                          → {"pipeline_types": {type: {todo, claimed, done, error, stashed}}}
//	GET    /limbo?older_than=24h            → claims older than that
//	GET    /pipeline-types, PUT /pipeline-types/{name} {"lease":"24h","max_tries":3}
//	GET    /stashes, PUT /stashes/{name} {"concurrency":N} (drip-feed; 0 pauses)

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

func (a *Adapter) registerAdmin(env *bridge.Env) {
	if env.Admin == nil {
		return
	}
	g := env.Admin.Group("/tracker")
	g.POST("/pipelines", a.adminAddPipeline)
	g.GET("/pipelines", a.adminListPipelines)
	g.DELETE("/pipelines/:name", a.adminDeletePipeline)
	g.PATCH("/pipelines/:name", a.adminPatchPipeline)
	g.POST("/items", a.adminQueue)
	g.GET("/items/:id", a.adminItem)
	g.POST("/items/:id/requeue", a.adminRequeue)
	g.POST("/items/:id/abandon", a.adminAbandon)
	g.GET("/queues", a.adminQueues)
	g.GET("/limbo", a.adminLimbo)
	g.GET("/pipeline-types", a.adminListTypes)
	g.PUT("/pipeline-types/:name", a.adminPutType)
	g.GET("/stashes", a.adminListStashes)
	g.PUT("/stashes/:name", a.adminPutStash)
}

func apiErr(c echo.Context, status int, format string, args ...any) error {
	return c.JSON(status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// fromErr maps a queue error to an HTTP answer.
func (a *Adapter) fromErr(c echo.Context, err error) error {
	var se *statusError
	if errors.As(err, &se) {
		return apiErr(c, se.status, "%s", se.msg)
	}
	a.env.Log.Warn("tracker admin", "path", c.Path(), "err", err)
	return apiErr(c, http.StatusServiceUnavailable, "%v", err)
}

// decodeStrict reads a JSON body refusing unknown fields.
func decodeStrict(c echo.Context, v any) error {
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, 32<<20))
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func (a *Adapter) ctxFor(c echo.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Request().Context(), 30*time.Second)
}

type pipelineView struct {
	Name            string  `json:"name"`
	Created         float64 `json:"created"`
	Budget          int     `json:"budget"`
	ClaimsPerMinute int     `json:"claims_per_minute"`
	OpenClaims      int     `json:"open_claims"`
	Connections     int     `json:"connections"`
}

func (a *Adapter) view(p Pipeline) pipelineView {
	a.mu.Lock()
	n := len(a.byPipe[p.Name])
	a.mu.Unlock()
	return pipelineView{Name: p.Name, Created: p.Created, Budget: p.Budget, ClaimsPerMinute: p.ClaimsPerMinute,
		OpenClaims: a.q.index.countPipeline(p.Name), Connections: n}
}

func (a *Adapter) adminAddPipeline(c echo.Context) error {
	var in struct {
		Name            string `json:"name"`
		Budget          int    `json:"budget"`
		ClaimsPerMinute int    `json:"claims_per_minute"`
	}
	if err := decodeStrict(c, &in); err != nil {
		return apiErr(c, 400, "invalid body: %v", err)
	}
	if !reName.MatchString(in.Name) {
		return apiErr(c, 400, "name must match %s", reName)
	}
	if in.Budget < 0 || in.ClaimsPerMinute < 0 {
		return apiErr(c, 400, "budget and claims_per_minute must not be negative")
	}
	secret := newSecret()
	p := Pipeline{Name: in.Name, Hash: hashSecret(secret, uint32(a.argonMemory)), Created: epoch(time.Now()), Budget: in.Budget, ClaimsPerMinute: in.ClaimsPerMinute}
	b, _ := json.Marshal(p)
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	if _, err := a.q.pipes.Create(ctx, p.Name, b, 0); err != nil {
		if errors.Is(err, jetstream.ErrExists) {
			return apiErr(c, 409, "pipeline %s exists", p.Name)
		}
		return a.fromErr(c, err)
	}
	return c.JSON(201, map[string]any{"name": p.Name, "secret": secret})
}

func (a *Adapter) adminListPipelines(c echo.Context) error {
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	keys, err := a.q.pipes.Keys(ctx, "")
	if err != nil && !isNoKeys(err) {
		return a.fromErr(c, err)
	}
	sort.Strings(keys)
	out := []pipelineView{}
	for _, k := range keys {
		e, err := a.q.pipes.Get(ctx, k)
		if err != nil {
			continue
		}
		var p Pipeline
		if json.Unmarshal(e.Value, &p) == nil {
			out = append(out, a.view(p))
		}
	}
	return c.JSON(200, out)
}

func isNoKeys(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte("no keys"))
}

func (a *Adapter) adminDeletePipeline(c echo.Context) error {
	name := c.Param("name")
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	if _, err := a.q.pipes.Get(ctx, name); err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return apiErr(c, 404, "pipeline %s not found", name)
		}
		return a.fromErr(c, err)
	}
	if err := a.q.pipes.Delete(ctx, name, 0); err != nil {
		return a.fromErr(c, err)
	}
	a.auth.forget(name)
	a.forgetLimits(name)
	return c.NoContent(204)
}

func (a *Adapter) adminPatchPipeline(c echo.Context) error {
	name := c.Param("name")
	var in struct {
		Budget          *int `json:"budget"`
		ClaimsPerMinute *int `json:"claims_per_minute"`
	}
	if err := decodeStrict(c, &in); err != nil {
		return apiErr(c, 400, "invalid body: %v", err)
	}
	if (in.Budget != nil && *in.Budget < 0) || (in.ClaimsPerMinute != nil && *in.ClaimsPerMinute < 0) {
		return apiErr(c, 400, "budget and claims_per_minute must not be negative")
	}
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	var p Pipeline
	_, err := a.q.pipes.Mutate(ctx, name, func(cur []byte, exists bool) ([]byte, error) {
		if !exists {
			return nil, errStatus(404, "pipeline %s not found", name)
		}
		if err := json.Unmarshal(cur, &p); err != nil {
			return nil, err
		}
		if in.Budget != nil {
			p.Budget = *in.Budget
		}
		if in.ClaimsPerMinute != nil {
			p.ClaimsPerMinute = *in.ClaimsPerMinute
		}
		return json.Marshal(p)
	})
	if err != nil {
		return a.fromErr(c, err)
	}
	a.forgetLimits(name)
	return c.JSON(200, a.view(p))
}

func (a *Adapter) adminQueue(c echo.Context) error {
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, 32<<20))
	if err != nil {
		return apiErr(c, 400, "read body: %v", err)
	}
	var batch struct {
		Items []json.RawMessage `json:"items"`
	}
	var raws []json.RawMessage
	if !mayHaveItemsKey(body) {
		raws = []json.RawMessage{body} // one item: no "items" key can be in it
	} else {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&batch); err == nil && batch.Items != nil {
			raws = batch.Items
		} else {
			raws = []json.RawMessage{body}
		}
	}
	if len(raws) == 0 || len(raws) > 10000 {
		return apiErr(c, 400, "between 1 and 10000 items per request")
	}
	items := make([]NewItem, len(raws))
	for i, raw := range raws {
		it, err := DecodeNewItem(raw)
		if err != nil {
			return apiErr(c, 400, "item %d: %v", i, err)
		}
		items[i] = it
	}
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	ids, errs := a.q.EnqueueBatch(ctx, items)
	for i, err := range errs {
		if err != nil {
			var se *statusError
			if errors.As(err, &se) {
				return apiErr(c, se.status, "item %d: %s (items before it were queued: %v)", i, se.msg, ids[:i])
			}
			return apiErr(c, 503, "item %d: %v", i, err)
		}
	}
	if _, pretty := c.QueryParams()["pretty"]; !pretty && !c.Echo().Debug {
		// what c.JSON writes, encoded by hand (this answers every enqueue)
		b := make([]byte, 0, 16+40*len(ids))
		b = append(b, `{"ids":[`...)
		for i, id := range ids {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, id)
		}
		return c.JSONBlob(201, append(b, "]}\n"...))
	}
	return c.JSON(201, map[string]any{"ids": ids})
}

// mayHaveItemsKey says whether body may hold a key the batch form's "items" field matches
// (encoding/json matches field names case-insensitively, and keys may be escaped).
func mayHaveItemsKey(body []byte) bool {
	for _, c := range body {
		if c == '\\' || c >= 0x80 { // escapes; non-ASCII folding (encoding/json folds 'ſ' to 's')
			return true
		}
	}
	for i := 0; i+6 <= len(body); i++ {
		if bytes.EqualFold(body[i:i+6], []byte(`items"`)) {
			return true
		}
	}
	return false
}

func (a *Adapter) adminItem(c echo.Context) error {
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	id := c.Param("id")
	if !reID.MatchString(id) {
		return apiErr(c, 404, "item %s not found", id)
	}
	e, err := a.q.items.Get(ctx, id)
	if err != nil {
		if errors.Is(err, jetstream.ErrNotFound) {
			return apiErr(c, 404, "item %s not found", id)
		}
		return a.fromErr(c, err)
	}
	return c.JSONBlob(200, e.Value)
}

func (a *Adapter) adminReason(c echo.Context) string {
	var in struct {
		Reason string `json:"reason"`
		By     string `json:"by"`
	}
	_ = json.NewDecoder(io.LimitReader(c.Request().Body, 1<<16)).Decode(&in)
	if in.Reason == "" {
		in.Reason = "operator"
	}
	return in.Reason
}

// Requeue puts an item back in the queue (claimed: the claim is revoked; error or stashed: it is
// queued again). A done item is refused.
func (q *Queue) Requeue(ctx context.Context, id, reason string) (*Record, error) {
	return q.transition(ctx, id, func(r *Record) (effects, error) {
		now := epoch(time.Now())
		eff := effects{enqueue: true, events: []string{"queued"}, reason: "requeued: " + reason, attempt: -1}
		switch r.Status {
		case StatusDone:
			return effects{}, errStatus(409, "item %s is done", id)
		case StatusTodo:
			return effects{}, jetstream.ErrSkip
		case StatusClaimed:
			msg := "requeued by operator: " + reason
			att := r.Claim.Attempt
			r.Attempts[att].Error = &msg
			r.Attempts[att].End = fptr(now)
			eff.revoke = &revocation{pipeline: r.Claim.Pipeline, attempt: att, reason: "requeued by operator"}
			eff.events = append([]string{"revoked"}, eff.events...)
		}
		r.FinishedAt = nil
		r.AdminLog = append(r.AdminLog, AdminLog{Time: now, Action: "requeue", Reason: reason})
		return eff, nil
	})
}

// Abandon gives up on an item: it becomes error and is dead-lettered (a claim is revoked).
func (q *Queue) Abandon(ctx context.Context, id, reason string) (*Record, error) {
	return q.transition(ctx, id, func(r *Record) (effects, error) {
		now := epoch(time.Now())
		eff := effects{events: []string{"error"}, reason: "abandoned: " + reason, attempt: -1, dlq: "abandoned by operator: " + reason}
		switch r.Status {
		case StatusDone:
			return effects{}, errStatus(409, "item %s is done", id)
		case StatusError:
			return effects{}, jetstream.ErrSkip
		case StatusClaimed:
			msg := "abandoned by operator: " + reason
			att := r.Claim.Attempt
			r.Attempts[att].Error = &msg
			r.Attempts[att].End = fptr(now)
			eff.revoke = &revocation{pipeline: r.Claim.Pipeline, attempt: att, reason: "abandoned by operator"}
			eff.events = append([]string{"revoked"}, eff.events...)
		}
		r.Status = StatusError
		r.Claim = nil
		r.FinishedAt = fptr(now)
		r.AdminLog = append(r.AdminLog, AdminLog{Time: now, Action: "abandon", Reason: reason})
		return eff, nil
	})
}

func (a *Adapter) adminRequeue(c echo.Context) error {
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	r, err := a.q.Requeue(ctx, c.Param("id"), a.adminReason(c))
	if err != nil {
		return a.fromErr(c, err)
	}
	return c.JSON(200, r)
}

func (a *Adapter) adminAbandon(c echo.Context) error {
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	r, err := a.q.Abandon(ctx, c.Param("id"), a.adminReason(c))
	if err != nil {
		return a.fromErr(c, err)
	}
	return c.JSON(200, r)
}

// scan calls fn with every item record (a snapshot read through a KV watch).
func (q *Queue) scan(ctx context.Context, fn func(*Record)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := q.items.Watch(ctx, ">", true)
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-ch:
			if !ok {
				return ctx.Err()
			}
			if e.Key == "" {
				return nil
			}
			if e.Deleted {
				continue
			}
			if r, err := decodeRecord(e.Value); err == nil {
				fn(r)
			}
		}
	}
}

func (a *Adapter) adminQueues(c echo.Context) error {
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	out := map[string]map[string]int{}
	err := a.q.scan(ctx, func(r *Record) {
		m := out[r.PipelineType]
		if m == nil {
			m = map[string]int{StatusTodo: 0, StatusClaimed: 0, StatusDone: 0, StatusError: 0, StatusStashed: 0}
			out[r.PipelineType] = m
		}
		m[r.Status]++
	})
	if err != nil {
		return a.fromErr(c, err)
	}
	return c.JSON(200, map[string]any{"pipeline_types": out})
}

func (a *Adapter) adminLimbo(c echo.Context) error {
	older := 24 * time.Hour
	if s := c.QueryParam("older_than"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return apiErr(c, 400, "older_than must be a duration like 24h")
		}
		older = d
	}
	cut := epoch(time.Now().Add(-older))
	out := []map[string]any{}
	for _, ci := range a.q.index.all() {
		if ci.claimed > cut {
			continue
		}
		out = append(out, map[string]any{"id": ci.id, "pipeline": ci.pipeline, "pipeline_type": ci.ptype,
			"attempt": ci.attempt, "claimed_at": ci.claimed, "lease_until": ci.lease})
	}
	return c.JSON(200, out)
}

func (a *Adapter) adminListTypes(c echo.Context) error {
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	keys, err := a.q.config.Keys(ctx, "ptype.*")
	if err != nil && !isNoKeys(err) {
		return a.fromErr(c, err)
	}
	out := map[string]any{"defaults": TypeConfig{Lease: Duration(a.lease), MaxTries: a.maxTries}}
	types := map[string]TypeConfig{}
	for _, k := range keys {
		name := k[len("ptype."):]
		types[name] = a.q.typeConfig(ctx, name)
	}
	out["pipeline_types"] = types
	return c.JSON(200, out)
}

func (a *Adapter) adminPutType(c echo.Context) error {
	name := c.Param("name")
	if !reTypeTok.MatchString(name) {
		return apiErr(c, 400, "pipeline type must match %s", reTypeTok)
	}
	var in TypeConfig
	if err := decodeStrict(c, &in); err != nil {
		return apiErr(c, 400, "invalid body: %v", err)
	}
	if in.Lease < 0 || in.MaxTries < 0 {
		return apiErr(c, 400, "lease and max_tries must not be negative")
	}
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	b, _ := json.Marshal(in)
	if _, err := a.q.config.Put(ctx, "ptype."+name, b); err != nil {
		return a.fromErr(c, err)
	}
	a.q.invalidateTypeConfig(name)
	return c.JSON(200, a.q.typeConfig(ctx, name))
}

func (a *Adapter) adminListStashes(c echo.Context) error {
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	keys, err := a.q.config.Keys(ctx, "stash.*")
	if err != nil && !isNoKeys(err) {
		return a.fromErr(c, err)
	}
	out := map[string]any{}
	for _, k := range keys {
		e, err := a.q.config.Get(ctx, k)
		if err != nil {
			continue
		}
		var st StashState
		if json.Unmarshal(e.Value, &st) == nil {
			out[k[len("stash."):]] = st
		}
	}
	return c.JSON(200, out)
}

func (a *Adapter) adminPutStash(c echo.Context) error {
	name := c.Param("name")
	if !reTypeTok.MatchString(name) {
		return apiErr(c, 400, "stash must match %s", reTypeTok)
	}
	var in struct {
		Concurrency int `json:"concurrency"`
	}
	if err := decodeStrict(c, &in); err != nil {
		return apiErr(c, 400, "invalid body: %v", err)
	}
	if in.Concurrency < 0 {
		return apiErr(c, 400, "concurrency must not be negative")
	}
	ctx, cancel := a.ctxFor(c)
	defer cancel()
	st, err := a.q.SetStash(ctx, name, in.Concurrency)
	if err != nil {
		return a.fromErr(c, err)
	}
	return c.JSON(200, st)
}

package gilmour

// http.go: the proxy's HTTP routes (spec §1.1 C1–C9, P1 and the signal route of Decisions 2).

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

func (a *Adapter) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		code, msg := http.StatusInternalServerError, err.Error()
		var he *echo.HTTPError
		if errors.As(err, &he) {
			code = he.Code
			if s, ok := he.Message.(string); ok {
				msg = s
			}
		}
		_ = statusOf(c, code, msg)
	}
	inflight := make(chan struct{}, a.cfg.MaxInflight)
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			select {
			case inflight <- struct{}{}:
				defer func() { <-inflight }()
				return next(c)
			default:
				a.env.Metrics.Errors.WithLabelValues("gilmour", "overloaded").Inc()
				return statusOf(c, http.StatusServiceUnavailable, "too many requests in flight")
			}
		}
	})
	e.POST("/nodes", a.createNode)
	e.GET("/nodes/:id", a.getNode)
	e.DELETE("/nodes/:id", a.deleteNode)
	e.POST("/nodes/:id/slots", func(c echo.Context) error { return a.addSubs(c, false) })
	e.GET("/nodes/:id/slots", func(c echo.Context) error { return a.listSubs(c, false) })
	e.DELETE("/nodes/:id/slots", func(c echo.Context) error { return a.removeSubs(c, false) })
	e.POST("/nodes/:id/services", func(c echo.Context) error { return a.addSubs(c, true) })
	e.GET("/nodes/:id/services", func(c echo.Context) error { return a.listSubs(c, true) })
	e.DELETE("/nodes/:id/services", func(c echo.Context) error { return a.removeSubs(c, true) })
	e.POST("/request/:id", a.request)
	e.POST("/request/:id/", a.request)
	e.POST("/signal/:id", a.signal)
	e.POST("/signal/:id/", a.signal)
	return e
}

// body reads the request body up to the limit; errTooLarge answers 413.
func (a *Adapter) body(c echo.Context) ([]byte, error) {
	r := http.MaxBytesReader(c.Response(), c.Request().Body, int64(a.cfg.MaxBody))
	b, err := io.ReadAll(r)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, echo.NewHTTPError(http.StatusRequestEntityTooLarge, "body larger than the limit")
		}
		return nil, echo.NewHTTPError(http.StatusBadRequest, "read body: "+err.Error())
	}
	return b, nil
}

// fail maps an error to the Decisions' status codes.
func (a *Adapter) fail(c echo.Context, op string, err error) error {
	var he *echo.HTTPError
	switch {
	case errors.As(err, &he):
		return err
	case errors.Is(err, errNodeNotFound):
		return statusOf(c, http.StatusNotFound, "node not found")
	case IsBadRequest(err):
		a.env.Metrics.Errors.WithLabelValues("gilmour", "bad_request").Inc()
		return statusOf(c, http.StatusBadRequest, err.Error())
	default:
		a.env.Metrics.Errors.WithLabelValues("gilmour", op).Inc()
		a.log.Warn("gilmour: "+op, "err", err)
		return statusOf(c, http.StatusInternalServerError, err.Error())
	}
}

func (a *Adapter) opCtx(c echo.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Request().Context(), 30*time.Second)
}

func (a *Adapter) createNode(c echo.Context) error {
	b, err := a.body(c)
	if err != nil {
		return err
	}
	nc, err := DecodeNodeCreate(b)
	if err != nil {
		return a.fail(c, "create_node", err)
	}
	host := nc.Host
	if host == "" {
		host, _, err = net.SplitHostPort(c.Request().RemoteAddr)
		if err != nil {
			host = c.Request().RemoteAddr
		}
	}
	now := time.Now().UTC()
	rec := nodeRecord{ID: NewID(), Host: host, Port: nc.Port, HealthCheck: nc.HealthCheck,
		Slots: addSubs(nil, nc.Slots), Services: addSubs(nil, nc.Services), Status: StatusOK, Created: now, Changed: now}
	ctx, cancel := a.opCtx(c)
	defer cancel()
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	_, perr := a.node.ping(pctx, rec)
	pcancel()
	if perr != nil {
		a.env.Metrics.Errors.WithLabelValues("gilmour", "register_ping").Inc()
		return statusOf(c, http.StatusBadGateway, "health check failed: "+perr.Error())
	}
	// consumers first: signals published from now on wait for the node
	for _, s := range rec.Slots {
		if _, err := a.env.JS.EnsureConsumer(ctx, a.bus.consumerSpec(slotKeyOf(rec.ID, s), a.cfg.SlotAckWait)); err != nil {
			return a.fail(c, "create_node", err)
		}
	}
	if err := a.reg.create(ctx, rec); err != nil {
		a.dropConsumers(ctx, rec.ID, rec.Slots)
		return a.fail(c, "create_node", err)
	}
	a.met.nodeEvent("registered")
	return c.JSON(http.StatusOK, CreateResponse{ID: rec.ID, Status: rec.Status})
}

func (a *Adapter) getNode(c echo.Context) error {
	ctx, cancel := a.opCtx(c)
	defer cancel()
	rec, err := a.reg.get(ctx, c.Param("id"))
	if err != nil {
		return a.fail(c, "get_node", err)
	}
	return c.JSON(http.StatusOK, rec.detail())
}

// deleteNode frees everything; calls already running finish (subscriptions stop, connections
// and in-flight deliveries are left alone).
func (a *Adapter) deleteNode(c echo.Context) error {
	ctx, cancel := a.opCtx(c)
	defer cancel()
	id := c.Param("id")
	rec, err := a.reg.get(ctx, id)
	if err != nil {
		return a.fail(c, "delete_node", err)
	}
	if err := a.reg.remove(ctx, id); err != nil {
		return a.fail(c, "delete_node", err)
	}
	a.mu.Lock()
	delete(a.nodes, id) // the watch confirms it; publish routes of this pod stop at once
	a.mu.Unlock()
	a.reconcile()
	a.dropConsumers(ctx, id, rec.Slots)
	a.met.nodeEvent("deleted")
	return statusOf(c, http.StatusOK, "ok")
}

// dropConsumers deletes the slot consumers no registered node uses anymore.
func (a *Adapter) dropConsumers(ctx context.Context, nodeID string, slots []Sub) {
	if len(slots) == 0 {
		return
	}
	inUse := map[slotKey]bool{}
	nodes, err := a.reg.list(ctx)
	if err != nil {
		a.log.Warn("gilmour: list nodes", "err", err)
		return
	}
	for _, n := range nodes {
		for _, s := range n.Slots {
			inUse[slotKeyOf(n.ID, s)] = true
		}
	}
	for _, s := range slots {
		k := slotKeyOf(nodeID, s)
		if inUse[k] {
			continue
		}
		if err := a.env.JS.DeleteConsumer(ctx, SlotStream, k.durable()); err != nil {
			a.log.Warn("gilmour: delete slot consumer", "pattern", k.Pattern, "err", err)
		}
	}
}

func (a *Adapter) addSubs(c echo.Context, service bool) error {
	ctx, cancel := a.opCtx(c)
	defer cancel()
	id := c.Param("id")
	if _, err := a.reg.get(ctx, id); err != nil {
		return a.fail(c, "add_subscription", err)
	}
	b, err := a.body(c)
	if err != nil {
		return err
	}
	subs, err := DecodeSubs(b, service)
	if err != nil {
		return a.fail(c, "add_subscription", err)
	}
	if !service {
		for _, s := range subs {
			if _, err := a.env.JS.EnsureConsumer(ctx, a.bus.consumerSpec(slotKeyOf(id, s), a.cfg.SlotAckWait)); err != nil {
				return a.fail(c, "add_subscription", err)
			}
		}
	}
	_, err = a.reg.mutate(ctx, id, func(r *nodeRecord) error {
		if service {
			r.Services = addSubs(append([]Sub(nil), r.Services...), subs)
		} else {
			r.Slots = addSubs(append([]Sub(nil), r.Slots...), subs)
		}
		return nil
	})
	if err != nil {
		return a.fail(c, "add_subscription", err)
	}
	return statusOf(c, http.StatusOK, "ok")
}

func (a *Adapter) listSubs(c echo.Context, service bool) error {
	ctx, cancel := a.opCtx(c)
	defer cancel()
	rec, err := a.reg.get(ctx, c.Param("id"))
	if err != nil {
		return a.fail(c, "list_subscriptions", err)
	}
	d := rec.detail()
	if service {
		return c.JSON(http.StatusOK, map[string][]Sub{"services": d.Services})
	}
	return c.JSON(http.StatusOK, map[string][]Sub{"slots": d.Slots})
}

func (a *Adapter) removeSubs(c echo.Context, service bool) error {
	ctx, cancel := a.opCtx(c)
	defer cancel()
	id := c.Param("id")
	topic, path := c.QueryParam("topic"), c.QueryParam("path")
	if _, err := a.reg.get(ctx, id); err != nil {
		return a.fail(c, "remove_subscription", err)
	}
	if topic == "" {
		return statusOf(c, http.StatusBadRequest, "missing topic")
	}
	var removed []Sub
	_, err := a.reg.mutate(ctx, id, func(r *nodeRecord) error {
		if service {
			r.Services, removed = removeSubs(r.Services, topic, path)
		} else {
			r.Slots, removed = removeSubs(r.Slots, topic, path)
		}
		return nil
	})
	if err != nil {
		return a.fail(c, "remove_subscription", err)
	}
	if !service {
		a.dropConsumers(ctx, id, removed)
	}
	return statusOf(c, http.StatusOK, "ok")
}

// request is P1: a request to one topic or a composition; it blocks until the answer. The HTTP
// status is the answer's code.
func (a *Adapter) request(c echo.Context) error {
	start := time.Now()
	rec, err := a.lookupCtx(c, c.Param("id"))
	if err != nil {
		return a.fail(c, "request", err)
	}
	b, err := a.body(c)
	if err != nil {
		return err
	}
	pr, err := DecodePublishRequest(b)
	if err != nil {
		return a.fail(c, "request", err)
	}
	timeout := a.cfg.RequestTimeout
	if pr.Timeout > 0 {
		timeout = time.Duration(pr.Timeout) * time.Second
	}
	rctx, rcancel := context.WithTimeout(c.Request().Context(), timeout)
	defer rcancel()
	var msgs []Message
	op := "request"
	if pr.Composition == nil {
		msgs = []Message{a.requestTopic(rctx, pr.Topic, pr.Message, 0)}
	} else {
		op = "composition"
		x := &Executor{Request: a.requestTopic, Lambda: func(ctx context.Context, path string, data json.RawMessage) Message {
			return a.lambda(ctx, rec, path, data)
		}}
		msgs = x.Run(rctx, pr.Composition, pr.Message)
	}
	resp := NewResponse(msgs)
	label := pr.Topic
	if pr.Composition != nil {
		label = "(composition)"
	}
	a.met.requested(label, op, resp.Code, time.Since(start))
	return writeResponse(c, httpStatus(resp.Code), resp)
}

// writeResponse is c.JSON(code, resp) without reflection when the answer is plain (no ?pretty).
func writeResponse(c echo.Context, code int, resp PublishResponse) error {
	if c.Request().URL.RawQuery == "" && !c.Echo().Debug {
		if b, ok := encodePublishResponse(resp); ok {
			return c.Blob(code, echo.MIMEApplicationJSON, b)
		}
	}
	return c.JSON(code, resp)
}

// requestTopic sends one request; a step timeout (seconds) shortens the requester's deadline.
func (a *Adapter) requestTopic(ctx context.Context, topic string, data json.RawMessage, timeout int) Message {
	d := a.cfg.RequestTimeout
	if dl, ok := ctx.Deadline(); ok {
		d = time.Until(dl)
	}
	if timeout > 0 {
		d = min(d, time.Duration(timeout)*time.Second)
	}
	return a.bus.request(ctx, topic, data, d)
}

// lambda posts {data} to the calling node's path; the answer is the step's output.
func (a *Adapter) lambda(ctx context.Context, rec nodeRecord, path string, data json.RawMessage) Message {
	status, body, err := a.node.post(ctx, rec, path, LambdaCall{Data: data})
	switch {
	case err != nil && ctx.Err() != nil:
		return Message{Data: StringData("Execution timed out"), Code: 499}
	case err != nil:
		return Message{Data: StringData(err.Error()), Code: 500}
	case status/100 != 2:
		return Message{Data: RawData(body), Code: 500}
	}
	return Message{Data: RawData(body), Code: 200}
}

func httpStatus(code int) int {
	if code < 100 || code > 999 {
		return http.StatusInternalServerError
	}
	return code
}

// signal is P2: store a signal durably, then answer {"status":"ok"}.
func (a *Adapter) signal(c echo.Context) error {
	ctx, cancel := a.opCtx(c)
	defer cancel()
	if _, err := a.lookup(ctx, c.Param("id")); err != nil {
		return a.fail(c, "signal", err)
	}
	b, err := a.body(c)
	if err != nil {
		return err
	}
	sr, err := DecodeSignalRequest(b)
	if err != nil {
		return a.fail(c, "signal", err)
	}
	if err := a.bus.publishSignal(ctx, sr.Topic, sr.Message); err != nil {
		a.env.Metrics.Errors.WithLabelValues("gilmour", "signal").Inc()
		a.log.Warn("gilmour: signal", "topic", sr.Topic, "err", err)
		return statusOf(c, http.StatusServiceUnavailable, err.Error())
	}
	a.met.signal(sr.Topic, "published", 0)
	return statusOf(c, http.StatusOK, "ok")
}

// lookup finds a node for the publish routes: this pod's view of the registry first (kept by the
// KV watch), then KV itself (a node registered through another pod a moment ago).
func (a *Adapter) lookup(ctx context.Context, id string) (nodeRecord, error) {
	if rec, ok := a.known(id); ok {
		return rec, nil
	}
	return a.reg.get(ctx, id)
}

// lookupCtx is lookup for an HTTP route; the KV read (only when the node is not in this pod's
// view) is bounded like every other operation.
func (a *Adapter) lookupCtx(c echo.Context, id string) (nodeRecord, error) {
	if rec, ok := a.known(id); ok {
		return rec, nil
	}
	ctx, cancel := a.opCtx(c)
	defer cancel()
	return a.reg.get(ctx, id)
}

// known returns the node from this pod's view of the registry.
func (a *Adapter) known(id string) (nodeRecord, bool) {
	a.mu.Lock()
	rec, ok := a.nodes[id]
	a.mu.Unlock()
	return rec, ok
}

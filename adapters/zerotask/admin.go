package zerotask

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

// routes mounts, on the admin group (/api/v1):
//
//	POST /zerotask/rpc            the JSON-RPC methods over HTTP (body: one request or a batch)
//	GET  /zerotask/tasks?status=  tasks (status 1000…9000 or queued/assigned/running/finished/failed; limit=)
//	GET  /zerotask/nodes          nodes with their liveness
func (a *Adapter) routes(g *echo.Group) {
	g.POST("/zerotask/rpc", a.httpRPC)
	g.GET("/zerotask/tasks", a.httpTasks)
	g.GET("/zerotask/nodes", a.httpNodes)
}

func (a *Adapter) httpRPC(c echo.Context) error {
	limit := int64(a.env.ZMQMaxMessage)
	if limit <= 0 {
		limit = 1 << 20
	}
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, limit+1))
	if err != nil {
		return c.JSONBlob(http.StatusBadRequest, EncodeError(nil, rpcErr(CodeParseError, "Parse error: "+err.Error())))
	}
	if int64(len(body)) > limit {
		return c.JSONBlob(http.StatusRequestEntityTooLarge, EncodeError(nil, rpcErr(CodeInvalidRequest,
			"Invalid JSON-RPC request: larger than "+strconv.FormatInt(limit, 10)+" bytes.")))
	}
	if !a.acquire() {
		return c.NoContent(http.StatusServiceUnavailable)
	}
	defer a.release()
	ctx, cancel := context.WithTimeout(c.Request().Context(), a.reqTimeout)
	defer cancel()
	return c.JSONBlob(http.StatusOK, a.b.Handle(ctx, caller{transport: viaHTTP}, body))
}

// TaskView is a task as the admin API lists it.
type TaskView struct {
	Task
	StatusName string `json:"status_name"`
}

func parseStatus(s string) (int, bool) {
	if s == "" {
		return 0, true
	}
	if n, err := strconv.Atoi(s); err == nil {
		return n, StatusName(n) != "unknown"
	}
	for _, st := range []int{StatusQueued, StatusAssigned, StatusRunning, StatusFinished, StatusFailed} {
		if strings.EqualFold(s, StatusName(st)) {
			return st, true
		}
	}
	return 0, false
}

func (a *Adapter) httpTasks(c echo.Context) error {
	status, ok := parseStatus(c.QueryParam("status"))
	if !ok {
		return echo.NewHTTPError(http.StatusBadRequest, "status must be 1000, 3000, 5000, 7000, 9000 or its name")
	}
	limit := 100
	if l := c.QueryParam("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 10000 {
			return echo.NewHTTPError(http.StatusBadRequest, "limit must be 1..10000")
		}
		limit = n
	}
	ctx := c.Request().Context()
	keys, err := a.b.tasks.Keys(ctx, "")
	if err != nil && !strings.Contains(err.Error(), "no keys") {
		return echo.NewHTTPError(http.StatusServiceUnavailable, err.Error())
	}
	sort.Strings(keys)
	out := struct {
		Tasks     []TaskView `json:"tasks"`
		Truncated bool       `json:"truncated"`
	}{Tasks: []TaskView{}}
	for _, k := range keys {
		e, err := a.b.tasks.Get(ctx, k)
		if err != nil {
			continue
		}
		var t Task
		if json.Unmarshal(e.Value, &t) != nil || (status != 0 && t.Status != status) {
			continue
		}
		if len(out.Tasks) == limit {
			out.Truncated = true
			break
		}
		out.Tasks = append(out.Tasks, TaskView{Task: t, StatusName: StatusName(t.Status)})
	}
	return c.JSON(http.StatusOK, out)
}

// NodeView is a node as the admin API lists it.
type NodeView struct {
	Peer
	Alive bool `json:"alive"`
}

func (a *Adapter) httpNodes(c echo.Context) error {
	ctx := c.Request().Context()
	keys, err := a.b.nodes.Keys(ctx, "")
	if err != nil && !strings.Contains(err.Error(), "no keys") {
		return echo.NewHTTPError(http.StatusServiceUnavailable, err.Error())
	}
	sort.Strings(keys)
	out := struct {
		Nodes []NodeView `json:"nodes"`
	}{Nodes: []NodeView{}}
	now := time.Now()
	for _, k := range keys {
		e, err := a.b.nodes.Get(ctx, k)
		if err != nil {
			continue
		}
		var p Peer
		if json.Unmarshal(e.Value, &p) != nil {
			continue
		}
		out.Nodes = append(out.Nodes, NodeView{Peer: p, Alive: p.alive(now, a.cfg.NodeTimeout)})
	}
	return c.JSON(http.StatusOK, out)
}

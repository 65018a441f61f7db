package gilmour

// admin.go: GET /api/v1/gilmour/nodes.

import (
	"context"
	"net/http"
	"sort"
	"time"

	"github.com/labstack/echo/v4"
)

// AdminNode is one node as the admin API shows it.
type AdminNode struct {
	NodeDetail
	Created         time.Time  `json:"created"`
	Changed         time.Time  `json:"changed"`
	LastHealthCheck *time.Time `json:"last_health_check"`
	LastResult      string     `json:"last_result,omitempty"`
	CheckedBy       string     `json:"checked_by,omitempty"`
}

// AdminNodes is the answer of GET /api/v1/gilmour/nodes.
type AdminNodes struct {
	Nodes []AdminNode `json:"nodes"`
}

func (a *Adapter) adminRoutes(g *echo.Group) {
	g.GET("/gilmour/nodes", a.adminNodes)
}

func (a *Adapter) adminNodes(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 30*time.Second)
	defer cancel()
	nodes, err := a.reg.list(ctx)
	if err != nil {
		return c.JSON(http.StatusInternalServerError, map[string]string{"error": err.Error()})
	}
	out := AdminNodes{Nodes: []AdminNode{}}
	for _, n := range nodes {
		an := AdminNode{NodeDetail: n.detail(), Created: n.Created, Changed: n.Changed}
		if l, _, err := a.reg.lease(ctx, n.ID); err == nil {
			if !l.LastCheck.IsZero() {
				t := l.LastCheck
				an.LastHealthCheck = &t
			}
			an.LastResult, an.CheckedBy = l.LastResult, l.Pod
		}
		out.Nodes = append(out.Nodes, an)
	}
	sort.Slice(out.Nodes, func(i, j int) bool { return out.Nodes[i].Created.Before(out.Nodes[j].Created) })
	return c.JSON(http.StatusOK, out)
}

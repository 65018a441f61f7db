package bridge

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

//go:embed dashboard.html
var dashboardHTML []byte

func goVersion() string { return runtime.Version() }

// adminServer serves /healthz, /readyz, /metrics, the admin API under /api/v1 and the dashboard.
type adminServer struct {
	p    *Pod
	e    *echo.Echo
	api  *echo.Group
	ln   net.Listener
	srv  *http.Server
	done sync.WaitGroup
}

func newAdminServer(p *Pod, ln net.Listener) *adminServer {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		code, msg := http.StatusInternalServerError, err.Error()
		var he *echo.HTTPError
		if errors.As(err, &he) {
			code = he.Code
			if m, ok := he.Message.(string); ok {
				msg = m
			}
		}
		if !c.Response().Committed {
			_ = c.JSON(code, map[string]string{"error": msg})
		}
	}
	s := &adminServer{p: p, e: e, ln: ln}
	e.GET("/healthz", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]any{"status": "alive", "pod": p.id})
	})
	e.GET("/readyz", func(c echo.Context) error {
		ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
		defer cancel()
		ok, reason := p.Ready(ctx)
		p.metrics.ready.Set(b2f(ok))
		if !ok {
			return c.JSON(http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": reason})
		}
		return c.JSON(http.StatusOK, map[string]any{"ready": true})
	})
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{Registry: p.reg})))
	auth := s.auth
	e.GET("/", func(c echo.Context) error { return c.HTMLBlob(http.StatusOK, dashboardHTML) })
	s.api = e.Group("/api/v1", auth)
	s.api.GET("", s.root)
	s.api.GET("/", s.root)
	s.api.GET("/status", s.status)
	return s
}

// auth requires the bearer token when one is configured.
func (s *adminServer) auth(next echo.HandlerFunc) echo.HandlerFunc {
	token := s.p.cfg.AdminToken
	return func(c echo.Context) error {
		if token == "" {
			return next(c)
		}
		got, ok := strings.CutPrefix(c.Request().Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="jetbridge"`)
			return echo.NewHTTPError(http.StatusUnauthorized, "admin token required (Authorization: Bearer …)")
		}
		return next(c)
	}
}

func (s *adminServer) root(c echo.Context) error {
	var routes []string
	for _, r := range s.e.Routes() {
		if strings.HasPrefix(r.Path, "/api/v1/") {
			routes = append(routes, r.Method+" "+r.Path)
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"name": "jetbridge", "version": Version, "routes": routes})
}

// Status is the answer of GET /api/v1/status.
type Status struct {
	Version    string         `json:"version"`
	Pod        string         `json:"pod"`
	Uptime     string         `json:"uptime"`
	Ready      bool           `json:"ready"`
	Reason     string         `json:"reason,omitempty"`
	NATS       NATSStatus     `json:"nats"`
	Durability string         `json:"durability"`
	Prefix     string         `json:"subject_prefix"`
	Listeners  []ListenerInfo `json:"listeners"`
	Assets     any            `json:"assets"`
}

// NATSStatus is the NATS part of Status.
type NATSStatus struct {
	Mode       string `json:"mode"` // embedded or external
	Servers    string `json:"servers"`
	Connected  bool   `json:"connected"`
	Server     string `json:"server"`
	Reconnects uint64 `json:"reconnects"`
	Replicas   int    `json:"replicas"`
	LastError  string `json:"last_error,omitempty"`
}

func (s *adminServer) status(c echo.Context) error {
	p := s.p
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	ready, reason := p.Ready(ctx)
	st := p.js.State()
	ns := NATSStatus{Mode: "external", Servers: redact(p.cfg.NATSURL), Connected: st.Connected, Server: st.Server,
		Reconnects: st.Reconnects, Replicas: p.js.Replicas(), LastError: st.LastError}
	if p.embedded != nil {
		ns.Mode, ns.Servers = "embedded", p.embedded.ClientURL()
	}
	p.assetsMu.Lock()
	assets := append([]any(nil), anySlice(p.assets)...)
	p.assetsMu.Unlock()
	return c.JSON(http.StatusOK, Status{Version: Version, Pod: p.id, Uptime: time.Since(p.startedAt).Round(time.Second).String(),
		Ready: ready, Reason: reason, NATS: ns, Durability: p.cfg.Durability, Prefix: p.js.Names().Prefix(),
		Listeners: p.Listeners(), Assets: assets})
}

func anySlice[T any](in []T) []any {
	out := make([]any, len(in))
	for i, v := range in {
		out[i] = v
	}
	return out
}

// redact hides passwords in NATS URLs.
func redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if s := strings.Index(u, "://"); s >= 0 && s < at {
				parts[i] = u[:s+3] + "***@" + u[at+1:]
			}
		}
	}
	return strings.Join(parts, ",")
}

func (s *adminServer) start() {
	if s.ln == nil {
		return
	}
	s.srv = &http.Server{Handler: s.e, ReadHeaderTimeout: 10 * time.Second}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.p.log.Error("admin listener", "err", err)
		}
	}()
}

func (s *adminServer) stop() {
	if s.srv == nil {
		if s.ln != nil {
			s.ln.Close()
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	s.done.Wait()
}

// Package gilmour is the Gilmour HTTP proxy on NATS: any program that speaks HTTP registers as a
// Gilmour node (services, slots, compositions), and plain NATS clients take part through the
// Gilmour envelope on gilmour.request.* and gilmour.slot.*.
package gilmour

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

// Config is set by the adapter's flags.
type Config struct {
	HealthInterval time.Duration
	DirtyAfter     time.Duration
	HandlerTimeout time.Duration
	RequestTimeout time.Duration
	MaxBody        int
	SlotAckWait    time.Duration
	SlotMaxDeliver int
	SlotRetry      time.Duration
	SlotInflight   int
	SignalMaxAge   time.Duration
	MaxInflight    int
}

// Adapter is the Gilmour protocol adapter.
type Adapter struct {
	cfg Config

	env  *bridge.Env
	log  *slog.Logger
	bus  bus
	reg  registry
	hc   *http.Client
	srv  *http.Server
	met  *metrics
	node *nodeClient

	ctx        context.Context
	cancel     context.CancelFunc
	wg         sync.WaitGroup // background loops
	work       sync.WaitGroup // in-flight service calls and deliveries (see track)
	workers    sync.WaitGroup // service call workers (see dispatch)
	jobs       chan func()    // service calls handed to idle workers
	idle       atomic.Int32   // idle workers
	workMu     sync.Mutex
	workClosed bool

	recMu    sync.Mutex // serialises reconcile
	mu       sync.Mutex
	nodes    map[string]nodeRecord
	services map[svcKey]*jetstream.Subscription
	pullers  map[slotKey]*puller
	draining bool
}

// New returns the adapter; configuration comes from its flags.
func New() *Adapter {
	return &Adapter{cfg: Config{
		HealthInterval: 10 * time.Second, DirtyAfter: 60 * time.Second,
		HandlerTimeout: 600 * time.Second, RequestTimeout: 600 * time.Second,
		SlotAckWait: 30 * time.Second, SlotMaxDeliver: 5, SlotRetry: time.Second, SlotInflight: 16,
		SignalMaxAge: 24 * time.Hour, MaxInflight: 10000,
	}}
}

// Name implements bridge.Adapter.
func (a *Adapter) Name() string { return "gilmour" }

// Listeners implements bridge.Adapter.
func (a *Adapter) Listeners() []bridge.ListenerSpec {
	return []bridge.ListenerSpec{{Name: "gilmour", Flag: "gilmour-listen", Default: ":8080",
		Usage: "Gilmour HTTP proxy listener (nodes, requests, signals)"}}
}

// Flags implements bridge.Adapter.
func (a *Adapter) Flags(fs *pflag.FlagSet) {
	c := &a.cfg
	fs.DurationVar(&c.HealthInterval, "gilmour-health-interval", c.HealthInterval, "how often each node's health_check is called")
	fs.DurationVar(&c.DirtyAfter, "gilmour-dirty-after", c.DirtyAfter, "a node whose port cannot be reached for this long becomes dirty")
	fs.DurationVar(&c.HandlerTimeout, "gilmour-handler-timeout", c.HandlerTimeout, "default timeout of a service or slot handler call (when the subscription gives none)")
	fs.DurationVar(&c.RequestTimeout, "gilmour-request-timeout", c.RequestTimeout, "default requester timeout of POST /request (when the body gives none)")
	fs.IntVar(&c.MaxBody, "gilmour-max-body", 0, "largest HTTP body accepted, in bytes (0 = --max-message)")
	fs.DurationVar(&c.SlotAckWait, "gilmour-slot-ack-wait", c.SlotAckWait, "lease of a signal delivery: redelivered by another pod after this when a pod dies")
	fs.IntVar(&c.SlotMaxDeliver, "gilmour-slot-max-deliver", c.SlotMaxDeliver, "delivery attempts of a signal before it is dead-lettered")
	fs.DurationVar(&c.SlotRetry, "gilmour-slot-retry", c.SlotRetry, "first retry delay of a failed signal delivery (doubles per attempt, max 1m)")
	fs.IntVar(&c.SlotInflight, "gilmour-slot-inflight", c.SlotInflight, "signal deliveries in flight per slot consumer and pod")
	fs.DurationVar(&c.SignalMaxAge, "gilmour-signal-max-age", c.SignalMaxAge, "how long an undelivered signal is kept")
	fs.IntVar(&c.MaxInflight, "gilmour-max-inflight", c.MaxInflight, "HTTP requests handled at once by this pod; more get 503")
}

// Assets implements bridge.Adapter.
func (a *Adapter) Assets(n jetstream.Names) jetstream.Assets {
	return assets(n, a.cfg.SignalMaxAge, 0)
}

// Start implements bridge.Adapter.
func (a *Adapter) Start(ctx context.Context, env *bridge.Env) error {
	if a.cfg.HealthInterval <= 0 || a.cfg.DirtyAfter <= 0 || a.cfg.HandlerTimeout <= 0 || a.cfg.RequestTimeout <= 0 ||
		a.cfg.SlotAckWait < time.Second || a.cfg.SlotMaxDeliver < 1 || a.cfg.SlotInflight < 1 || a.cfg.MaxInflight < 1 {
		return errors.New("gilmour: invalid flags (durations must be > 0, slot ack wait >= 1s, counts >= 1)")
	}
	if a.cfg.MaxBody <= 0 {
		a.cfg.MaxBody = env.MaxMessage
	}
	if a.cfg.MaxBody <= 0 {
		a.cfg.MaxBody = 1 << 20
	}
	a.env, a.log = env, env.Log
	a.bus = bus{js: env.JS}
	kv, err := env.JS.KV(ctx, Bucket)
	if err != nil {
		return fmt.Errorf("gilmour: %w", err)
	}
	a.reg = registry{kv: kv}
	a.met = newMetrics(env.Registry)
	a.hc = &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
	}}
	a.node = &nodeClient{hc: a.hc, pool: newConnPool()}
	a.nodes = map[string]nodeRecord{}
	a.services = map[svcKey]*jetstream.Subscription{}
	a.pullers = map[slotKey]*puller{}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.jobs = make(chan func())

	updates, err := kv.Watch(a.ctx, "node.>", true)
	if err != nil {
		a.cancel()
		return fmt.Errorf("gilmour: %w", err)
	}
	a.wg.Add(2)
	go func() { defer a.wg.Done(); a.watch(updates) }()
	go func() { defer a.wg.Done(); a.healthLoop() }()

	if env.Admin != nil {
		a.adminRoutes(env.Admin)
	}
	if ln, ok := env.Listeners["gilmour"]; ok {
		e := a.routes()
		a.srv = &http.Server{Handler: e, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 60 * time.Second,
			IdleTimeout: 120 * time.Second, ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
			ConnState: func(_ net.Conn, st http.ConnState) {
				switch st {
				case http.StateNew:
					env.Metrics.Connections.WithLabelValues("gilmour").Inc()
				case http.StateClosed, http.StateHijacked:
					env.Metrics.Connections.WithLabelValues("gilmour").Dec()
				}
			}}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("gilmour listener", "err", err)
			}
		}()
	}
	return nil
}

// Drain implements bridge.Adapter: stop taking HTTP requests, stop subscriptions, and let
// running calls and deliveries finish until ctx ends.
func (a *Adapter) Drain(ctx context.Context) error {
	var errs []error
	if a.srv != nil {
		if err := a.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("gilmour http shutdown: %w", err))
		}
	}
	a.mu.Lock()
	a.draining = true
	for k, s := range a.services {
		_ = s.Drain()
		delete(a.services, k)
	}
	pullers := a.pullers
	a.pullers = map[slotKey]*puller{}
	a.mu.Unlock()
	for _, p := range pullers {
		p.stop()
	}
	if err := a.waitWork(ctx); err != nil {
		errs = append(errs, fmt.Errorf("gilmour drain: %w", err))
	}
	return errors.Join(errs...)
}

// Stop implements bridge.Adapter: everything stops now; unacknowledged deliveries are redelivered
// by other pods after the ack wait.
func (a *Adapter) Stop() error {
	if a.cancel == nil {
		return nil
	}
	if a.srv != nil {
		_ = a.srv.Close()
	}
	a.cancel()
	a.mu.Lock()
	a.draining = true
	for k, s := range a.services {
		_ = s.Unsubscribe()
		delete(a.services, k)
	}
	pullers := a.pullers
	a.pullers = map[slotKey]*puller{}
	a.mu.Unlock()
	for _, p := range pullers {
		p.stop()
	}
	a.wg.Wait()
	_ = a.waitWork(context.Background())
	a.workers.Wait()
	a.hc.CloseIdleConnections()
	a.node.pool.close()
	return nil
}

// statusOf answers {"status": msg} with code.
func statusOf(c echo.Context, code int, msg string) error {
	return c.JSON(code, StatusResponse{Status: msg})
}

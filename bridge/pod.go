package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetbridge/jetbridge/jetstream"
)

// Version is the build's version (set with -ldflags "-X github.com/jetbridge/jetbridge/bridge.Version=…").
var Version = "dev"

// ListenerInfo is one listener as the startup lines and /api/v1/status show it.
type ListenerInfo struct {
	Name    string `json:"name"`
	Flag    string `json:"flag"`
	Address string `json:"address"` // real bound address, or "off"
}

// Pod is one jetbridge process: NATS (embedded or external), the admin listener and every adapter.
type Pod struct {
	cfg      Config
	adapters []Adapter
	log      *slog.Logger
	id       string

	reg     *prometheus.Registry
	metrics *Metrics

	embedded *jetstream.Embedded
	js       *jetstream.Client

	listeners map[string]net.Listener
	infos     []ListenerInfo
	admin     *adminServer

	provisioned atomic.Bool
	assetsMu    sync.Mutex
	assets      []jetstream.AssetState
	provErr     atomic.Value // string

	started   []Adapter
	bg        sync.WaitGroup
	bgCancel  context.CancelFunc
	shutdown  sync.Once
	startedAt time.Time
}

// NewPod prepares a pod; Start runs it.
func NewPod(cfg Config, adapters []Adapter, log *slog.Logger) *Pod {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	p := &Pod{cfg: cfg, adapters: adapters, log: log, id: fmt.Sprintf("%s-%s", jetstream.Token(host), hex.EncodeToString(b)),
		reg: prometheus.NewRegistry(), listeners: map[string]net.Listener{}}
	p.provErr.Store("not provisioned yet")
	p.metrics = NewMetrics(p.reg, Version)
	p.metrics.buildInfo.WithLabelValues(Version, goVersion()).Set(1)
	return p
}

// ID is the pod's unique id.
func (p *Pod) ID() string { return p.id }

// Registry is the pod's Prometheus registry.
func (p *Pod) Registry() *prometheus.Registry { return p.reg }

// Client is the pod's NATS client (nil before Start).
func (p *Pod) Client() *jetstream.Client { return p.js }

// Embedded is the embedded NATS server, or nil when running against a cluster.
func (p *Pod) Embedded() *jetstream.Embedded { return p.embedded }

// Listeners returns every listener with its real address, in start-up order.
func (p *Pod) Listeners() []ListenerInfo { return append([]ListenerInfo(nil), p.infos...) }

// Addr returns the real address of a listener by name ("admin", "nats", "nats-monitor", or an
// adapter listener), or "" when it is off.
func (p *Pod) Addr(name string) string {
	for _, l := range p.infos {
		if l.Name == name && l.Address != "off" {
			return l.Address
		}
	}
	return ""
}

// bindError is the one clear line for a listener that cannot bind.
func bindError(name, addr, flag string, err error) error {
	return fmt.Errorf("%s listener cannot bind %s: %v (change it with --%s ADDR or disable it with --%s off)",
		name, addr, unwrapOp(err), flag, flag)
}

func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Start binds every listener, starts or connects to NATS, serves the admin listener, provisions
// every asset (waiting for NATS if need be) and starts the adapters. On error everything already
// started is stopped again.
func (p *Pod) Start(ctx context.Context) (err error) {
	p.startedAt = time.Now()
	defer func() {
		if err != nil {
			p.closeAll()
		}
	}()
	cfg := p.cfg
	if cfg.Durability != "fast" && cfg.Durability != "strict" {
		return fmt.Errorf("--durability must be fast or strict, not %q", cfg.Durability)
	}
	if !off(cfg.AdminListen) && !isLoopback(cfg.AdminListen) && cfg.AdminToken == "" {
		return fmt.Errorf("admin listener %s is not on loopback: set --admin-token (or JETBRIDGE_ADMIN_TOKEN)", cfg.AdminListen)
	}
	// 1. Adapter listeners and the admin listener, so that a port in use stops start-up at once.
	for _, a := range p.adapters {
		for _, l := range a.Listeners() {
			addr := l.Default
			if v, ok := cfg.Listen[l.Name]; ok && v != nil {
				addr = *v
			}
			if off(addr) {
				p.infos = append(p.infos, ListenerInfo{Name: l.Name, Flag: l.Flag, Address: "off"})
				continue
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return bindError(l.Name, addr, l.Flag, err)
			}
			p.listeners[l.Name] = ln
			p.infos = append(p.infos, ListenerInfo{Name: l.Name, Flag: l.Flag, Address: ln.Addr().String()})
		}
	}
	var adminLn net.Listener
	if !off(cfg.AdminListen) {
		adminLn, err = net.Listen("tcp", cfg.AdminListen)
		if err != nil {
			return bindError("admin", cfg.AdminListen, "admin-listen", err)
		}
		p.infos = append(p.infos, ListenerInfo{Name: "admin", Flag: "admin-listen", Address: adminLn.Addr().String()})
	} else {
		p.infos = append(p.infos, ListenerInfo{Name: "admin", Flag: "admin-listen", Address: "off"})
	}
	p.admin = newAdminServer(p, adminLn)

	// 2. NATS.
	if cfg.NATSURL == "" {
		for _, chk := range []struct{ name, addr, flag string }{
			{"nats", cfg.NATSListen, "nats-listen"}, {"nats-monitor", cfg.NATSMonitorListen, "nats-monitor-listen"},
		} {
			if off(chk.addr) || strings.HasSuffix(chk.addr, ":0") {
				continue
			}
			ln, err := net.Listen("tcp", chk.addr)
			if err != nil {
				return bindError(chk.name, chk.addr, chk.flag, err)
			}
			ln.Close()
		}
		store := filepath.Join(cfg.DataDir, "nats")
		if err := os.MkdirAll(store, 0o750); err != nil {
			return fmt.Errorf("data folder %s: %w", store, err)
		}
		p.embedded, err = jetstream.StartEmbedded(jetstream.EmbeddedConfig{StoreDir: store, Listen: cfg.NATSListen,
			MonitorListen: cfg.NATSMonitorListen, SyncAlways: cfg.Durability == "strict", ServerName: "jetbridge-" + p.id,
			MaxPayload: int32(min(max(cfg.MaxMessage+64<<10, 1<<20), 64<<20))})
		if err != nil {
			return err
		}
		p.infos = append(p.infos, ListenerInfo{Name: "nats", Flag: "nats-listen", Address: orOff(p.embedded.ClientAddr())},
			ListenerInfo{Name: "nats-monitor", Flag: "nats-monitor-listen", Address: orOff(p.embedded.MonitorAddr())})
		if cfg.Durability == "fast" {
			p.log.Warn("durability fast: the embedded store fsyncs every 2 minutes, so a power loss can lose the last two minutes of acknowledged writes; use --durability strict to fsync every write")
		}
	}
	// The pod talks to its embedded server in-process by default: with the clients in other
	// processes (as they are) this measured faster than loopback TCP for every protocol (Sink
	// 0.49x -> 0.62x of raw publish, Gilmour requests 0.24x -> 0.30x of raw request-reply), since
	// no pod <-> server message costs a system call. --nats-in-process=false uses the client
	// listener like any client (it measured better only with the load generator in the pod's
	// own process). Without a client listener it is in-process in any case.
	inProc, urls := p.embedded, cfg.NATSURL
	if p.embedded != nil && p.embedded.ClientURL() != "" && !cfg.NATSInProcess {
		inProc, urls = nil, p.embedded.ClientURL()
	}
	p.js, err = jetstream.Connect(ctx, jetstream.ConnConfig{
		Embedded: inProc, URLs: urls, CredsFile: cfg.NATSCreds, NkeyFile: cfg.NATSNkey,
		User: cfg.NATSUser, Password: cfg.NATSPassword, TLSCA: cfg.NATSTLSCA, TLSCert: cfg.NATSTLSCert, TLSKey: cfg.NATSTLSKey,
		Name: "jetbridge " + p.id, Prefix: cfg.SubjectPrefix, Replicas: cfg.Replicas, Logger: p.log.With("component", "nats"),
		OnStateChange: func(st jetstream.State) {
			p.metrics.natsConnected.Set(b2f(st.Connected))
			p.metrics.natsReconnects.Set(float64(st.Reconnects))
		},
	})
	if err != nil {
		return err
	}
	p.metrics.natsConnected.Set(b2f(p.js.State().Connected))
	p.admin.start()

	// 3. Assets, waiting for NATS as long as ctx (and --startup-timeout) allow.
	pctx := ctx
	if cfg.StartupTimeout > 0 {
		var cancel context.CancelFunc
		pctx, cancel = context.WithTimeout(ctx, cfg.StartupTimeout)
		defer cancel()
	}
	if err := p.provision(pctx); err != nil {
		return err
	}

	// 4. Adapters and the background workers.
	bgctx, cancel := context.WithCancel(context.Background())
	p.bgCancel = cancel
	for _, a := range p.adapters {
		env := &Env{JS: p.js, Log: p.log.With("protocol", a.Name()), Metrics: p.metrics, Registry: p.reg,
			Admin: p.admin.api, Listeners: map[string]net.Listener{}, DataDir: cfg.DataDir, PodID: p.id,
			MaxMessage: cfg.MaxMessage, ZMQMaxMessage: cfg.ZMQMaxMessage}
		for _, l := range a.Listeners() {
			if ln, ok := p.listeners[l.Name]; ok {
				env.Listeners[l.Name] = ln
			}
		}
		if err := a.Start(bgctx, env); err != nil {
			return fmt.Errorf("start %s: %w", a.Name(), err)
		}
		p.started = append(p.started, a)
	}
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		for bgctx.Err() == nil {
			if err := p.js.RunDeadLetterMover(bgctx); err != nil && bgctx.Err() == nil {
				p.log.Debug("dead-letter mover", "err", err)
				select {
				case <-bgctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
	}()
	return nil
}

func orOff(s string) string {
	if s == "" {
		return "off"
	}
	return s
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func off(v string) bool { return v == "" || v == "off" }

func (p *Pod) declared() jetstream.Assets {
	var all jetstream.Assets
	all.Merge(jetstream.DeadLetterAssets(p.js.Names(), 0))
	var wq []string
	for _, a := range p.adapters {
		as := a.Assets(p.js.Names())
		for _, s := range as.Streams {
			if s.Retention == jetstream.WorkQueue {
				wq = append(wq, s.Name)
			}
		}
		all.Merge(as)
	}
	sort.Strings(wq)
	all.Merge(p.js.DeadLetterMoverAssets(wq))
	return all
}

// provision retries until every asset is in place; a configuration conflict fails at once.
func (p *Pod) provision(ctx context.Context) error {
	assets := p.declared()
	delay := 250 * time.Millisecond
	for {
		states, err := p.js.Provision(ctx, assets)
		p.assetsMu.Lock()
		p.assets = states
		p.assetsMu.Unlock()
		if err == nil {
			p.provisioned.Store(true)
			p.provErr.Store("")
			p.log.Info("assets provisioned", "count", len(states))
			return nil
		}
		p.provErr.Store(err.Error())
		if p.js.State().Connected && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			if pingErr := p.js.Ping(ctx); pingErr == nil {
				return err // NATS answers and still refuses: a real conflict
			}
		}
		p.log.Warn("waiting for NATS to provision assets", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("provisioning: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// Ready reports whether the pod can serve: NATS connected, JetStream answering, assets provisioned.
func (p *Pod) Ready(ctx context.Context) (bool, string) {
	if p.js == nil {
		return false, "starting"
	}
	if !p.js.State().Connected {
		return false, "nats not connected"
	}
	if !p.provisioned.Load() {
		return false, "assets not provisioned: " + p.provErr.Load().(string)
	}
	if err := p.js.Ping(ctx); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// Shutdown stops accepting, lets in-flight commands finish (bounded by --drain-timeout), stops
// the adapters, flushes and closes NATS, and shuts the embedded server down.
func (p *Pod) Shutdown(ctx context.Context) error {
	var errs []error
	p.shutdown.Do(func() {
		timeout := p.cfg.DrainTimeout
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		dctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, a := range p.started {
			wg.Add(1)
			go func(a Adapter) {
				defer wg.Done()
				if err := a.Drain(dctx); err != nil {
					p.log.Warn("drain", "protocol", a.Name(), "err", err)
				}
			}(a)
		}
		wg.Wait()
		for _, a := range p.started {
			if err := a.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("stop %s: %w", a.Name(), err))
			}
		}
		p.closeAll()
	})
	return errors.Join(errs...)
}

// closeAll stops background work, the admin server, NATS and listeners not handed to adapters.
func (p *Pod) closeAll() {
	if p.bgCancel != nil {
		p.bgCancel()
	}
	p.bg.Wait()
	if p.admin != nil {
		p.admin.stop()
	}
	for name, ln := range p.listeners {
		if !p.handedOver(name) {
			ln.Close()
		}
	}
	if p.js != nil {
		if p.js.State().Connected {
			fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = p.js.Flush(fctx)
			cancel()
		}
		p.js.Drain(2 * time.Second)
	}
	if p.embedded != nil {
		p.embedded.Shutdown()
	}
}

func (p *Pod) handedOver(name string) bool {
	for _, a := range p.started {
		for _, l := range a.Listeners() {
			if l.Name == name {
				return true
			}
		}
	}
	return false
}

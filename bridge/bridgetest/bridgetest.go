// Package bridgetest runs one adapter inside a test the way the pod runs it: assets provisioned,
// listeners bound on 127.0.0.1:0, the admin API served by an httptest server, and Drain/Stop at the
// end of the test. Start it twice against the same NATS server to get two "pods".
package bridgetest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

// Pod is one adapter running in a test.
type Pod struct {
	Env *bridge.Env
	// Addrs are the real listener addresses by ListenerSpec.Name.
	Addrs map[string]string
	// AdminURL is the base URL of the admin server (e.g. AdminURL + "/api/v1/status").
	AdminURL string
	// Registry holds the pod's metrics.
	Registry *prometheus.Registry

	adapter bridge.Adapter
	stopped bool
}

var podSeq int

// Start provisions a's assets on js, binds its listeners on 127.0.0.1:0 (except those whose
// flag is set to "off" in args), parses args (e.g. "--tracker-info-url=x") into a's flags and
// starts it. The adapter is drained and stopped when the test ends (or by Kill/Shutdown).
func Start(t testing.TB, js *jetstream.Client, a bridge.Adapter, args ...string) *Pod {
	t.Helper()
	fs := pflag.NewFlagSet(a.Name(), pflag.ContinueOnError)
	listen := map[string]*string{}
	for _, l := range a.Listeners() {
		listen[l.Name] = fs.String(l.Flag, "127.0.0.1:0", l.Usage)
	}
	a.Flags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%s flags: %v", a.Name(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	assets := a.Assets(js.Names())
	assets.Merge(jetstream.DeadLetterAssets(js.Names(), 0))
	if _, err := js.Provision(ctx, assets); err != nil {
		t.Fatalf("%s provision: %v", a.Name(), err)
	}
	podSeq++
	reg := prometheus.NewRegistry()
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	p := &Pod{adapter: a, Registry: reg, AdminURL: srv.URL, Addrs: map[string]string{}}
	p.Env = &bridge.Env{
		JS:            js,
		Log:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("protocol", a.Name()),
		Metrics:       bridge.NewMetrics(reg, "test"),
		Registry:      reg,
		Admin:         e.Group("/api/v1"),
		Listeners:     map[string]net.Listener{},
		DataDir:       t.TempDir(),
		PodID:         fmt.Sprintf("testpod-%d-%d", os.Getpid(), podSeq),
		MaxMessage:    1 << 20,
		ZMQMaxMessage: 1 << 20,
	}
	for name, addr := range listen {
		if *addr == "off" {
			continue
		}
		ln, err := net.Listen("tcp", *addr)
		if err != nil {
			t.Fatalf("%s listener %s: %v", a.Name(), name, err)
		}
		p.Env.Listeners[name] = ln
		p.Addrs[name] = ln.Addr().String()
	}
	if err := a.Start(context.Background(), p.Env); err != nil {
		t.Fatalf("%s start: %v", a.Name(), err)
	}
	t.Cleanup(func() { p.Shutdown(t) })
	return p
}

// Shutdown drains (bounded by 10 s) and stops the adapter, like SIGTERM on a pod.
func (p *Pod) Shutdown(t testing.TB) {
	if p.stopped {
		return
	}
	p.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.adapter.Drain(ctx); err != nil {
		t.Logf("%s drain: %v", p.adapter.Name(), err)
	}
	if err := p.adapter.Stop(); err != nil {
		t.Logf("%s stop: %v", p.adapter.Name(), err)
	}
}

// Kill stops the adapter without draining, like a pod that dies: Stop only.
func (p *Pod) Kill(t testing.TB) {
	if p.stopped {
		return
	}
	p.stopped = true
	if err := p.adapter.Stop(); err != nil {
		t.Logf("%s stop: %v", p.adapter.Name(), err)
	}
}

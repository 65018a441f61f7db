package bridgetest

import (
	"context"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/bridge"
)

// StartPod runs a whole pod in-process, as `jetbridge serve` does: an embedded NATS server in a
// temp folder and every listener (each adapter's, the admin listener, NATS) on 127.0.0.1:0. args
// are extra flags ("--durability=strict", "--nats-url=…"). Read the real addresses back with
// pod.Addr(name) or pod.Listeners(). The pod is shut down when the test ends.
func StartPod(t testing.TB, adapters []bridge.Adapter, args ...string) *bridge.Pod {
	t.Helper()
	var cfg bridge.Config
	fs := pflag.NewFlagSet("pod", pflag.ContinueOnError)
	cfg.RegisterFlags(fs, adapters)
	base := []string{"--data", t.TempDir(), "--nats-listen", "127.0.0.1:0", "--nats-monitor-listen", "off",
		"--admin-listen", "127.0.0.1:0"}
	for _, a := range adapters {
		for _, l := range a.Listeners() {
			base = append(base, "--"+l.Flag, "127.0.0.1:0")
		}
	}
	if err := fs.Parse(append(base, args...)); err != nil {
		t.Fatalf("pod flags: %v", err)
	}
	p := bridge.NewPod(cfg, adapters, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatalf("start pod: %v", err)
	}
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	return p
}

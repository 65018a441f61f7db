package zerotask

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/bridge"
)

// The adapter inside the real pod (embedded NATS, listeners bound by the pod, admin server, env
// and flags as the binary parses them), with every other protocol left out.
func TestRealPod(t *testing.T) {
	adapters := []bridge.Adapter{New()}
	var cfg bridge.Config
	fs := pflag.NewFlagSet("pod", pflag.ContinueOnError)
	cfg.RegisterFlags(fs, adapters)
	t.Setenv("JETBRIDGE_ZEROTASK_NODE_TIMEOUT", "3s")
	if err := fs.Parse([]string{"--data", t.TempDir(), "--nats-listen", "127.0.0.1:0", "--nats-monitor-listen", "off",
		"--admin-listen", "127.0.0.1:0", "--zerotask-listen", "127.0.0.1:0", "--zerotask-pub-listen", "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	if err := bridge.ApplyEnvAndFile(fs, ""); err != nil {
		t.Fatal(err)
	}
	pod := bridge.NewPod(cfg, adapters, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := pod.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := pod.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	if a := adapters[0].(*Adapter); a.cfg.NodeTimeout != 3*time.Second {
		t.Fatalf("env variable not applied: %v", a.cfg.NodeTimeout)
	}
	addr, pubAddr := pod.Addr("zerotask"), pod.Addr("zerotask-pub")
	if addr == "" || pubAddr == "" {
		t.Fatal("listeners missing")
	}
	node, err := ztDial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	client, err := ztDial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	w := &benchWorker{client: client, node: node}
	if err := client.Call(ctx, MethodPrefix+"client_connect", []any{}, &w.cid); err != nil {
		t.Fatal(err)
	}
	if err := node.Call(ctx, MethodPrefix+"node_connect", []any{}, &w.nid); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if err := w.roundTrip(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

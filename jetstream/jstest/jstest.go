// Package jstest starts real NATS servers for tests: one embedded JetStream server in a temp dir
// on a random port, or an in-process cluster of several on loopback.
package jstest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// quiet logs only warnings and errors, so that test output stays readable.
var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// Server starts an embedded JetStream server on 127.0.0.1 with a random client port and a temp
// store; it is shut down when the test ends.
func Server(t testing.TB) *jetstream.Embedded {
	t.Helper()
	return ServerIn(t, t.TempDir())
}

// ServerIn is Server with a given store folder (restart tests reuse the folder).
func ServerIn(t testing.TB, dir string) *jetstream.Embedded {
	t.Helper()
	e, err := jetstream.StartEmbedded(jetstream.EmbeddedConfig{StoreDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("start embedded nats: %v", err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

// ServerAt starts a server whose client port is the given one (to restart a server on the same
// address after stopping it).
func ServerAt(t testing.TB, dir, listen string) *jetstream.Embedded {
	t.Helper()
	var e *jetstream.Embedded
	var err error
	Eventually(t, 10*time.Second, func() error {
		e, err = jetstream.StartEmbedded(jetstream.EmbeddedConfig{StoreDir: dir, Listen: listen})
		return err
	})
	t.Cleanup(e.Shutdown)
	return e
}

// Connect opens a client to e over TCP (with prefix "") and closes it when the test ends.
func Connect(t testing.TB, e *jetstream.Embedded) *jetstream.Client {
	t.Helper()
	return ConnectURL(t, e.ClientURL(), "", 1)
}

// ConnectURL opens a client to urls with a subject prefix and replica count.
func ConnectURL(t testing.TB, urls, prefix string, replicas int) *jetstream.Client {
	t.Helper()
	c, err := jetstream.Connect(context.Background(), jetstream.ConnConfig{URLs: urls, Prefix: prefix, Replicas: replicas, Logger: quiet})
	if err != nil {
		t.Fatalf("connect %s: %v", urls, err)
	}
	t.Cleanup(c.Close)
	Eventually(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx)
	})
	return c
}

// Cluster is an in-process NATS cluster on loopback.
type Cluster struct {
	Nodes []*jetstream.Embedded
	dirs  []string
	cfgs  []jetstream.EmbeddedConfig
}

// URLs is the comma-separated client URL list of the running nodes.
func (c *Cluster) URLs() string {
	s := ""
	for _, n := range c.Nodes {
		if n == nil {
			continue
		}
		if s != "" {
			s += ","
		}
		s += n.ClientURL()
	}
	return s
}

// Kill stops node i (its store stays).
func (c *Cluster) Kill(i int) {
	c.Nodes[i].Shutdown()
	c.Nodes[i] = nil
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartCluster starts n JetStream servers routed to each other on loopback and waits until
// JetStream has a meta leader (a client can create R3 assets).
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	c := &Cluster{}
	for i := 0; i < n; i++ {
		cfg := jetstream.EmbeddedConfig{
			StoreDir: t.TempDir(), Listen: "127.0.0.1:0", ServerName: fmt.Sprintf("n%d", i+1),
			ClusterName: "jbtest", ClusterListen: fmt.Sprintf("127.0.0.1:%d", ports[i]), Routes: routes,
		}
		e, err := jetstream.StartEmbedded(cfg)
		if err != nil {
			t.Fatalf("start cluster node %d: %v", i+1, err)
		}
		c.Nodes = append(c.Nodes, e)
		c.cfgs = append(c.cfgs, cfg)
	}
	t.Cleanup(func() {
		for _, e := range c.Nodes {
			if e != nil {
				e.Shutdown()
			}
		}
	})
	cl, err := jetstream.Connect(context.Background(), jetstream.ConnConfig{URLs: c.URLs(), Replicas: n, Logger: quiet})
	if err != nil {
		t.Fatalf("connect cluster: %v", err)
	}
	defer cl.Close()
	Eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return cl.Ping(ctx)
	})
	return c
}

// Eventually polls fn until it returns nil or the deadline passes (then the test fails with fn's
// last error). It is the only way tests wait: never sleep as synchronisation.
func Eventually(t testing.TB, within time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	delay := 5 * time.Millisecond
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(delay)
		delay = min(delay*2, 200*time.Millisecond)
	}
}

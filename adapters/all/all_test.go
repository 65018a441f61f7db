package all_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/adapters/all"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
)

// The whole pod with every protocol: every listener is bound on a real port and accepts
// connections, the pod is ready, and every adapter's assets are provisioned.
func TestWholePodWithEveryProtocol(t *testing.T) {
	adapters := all.Adapters()
	p := bridgetest.StartPod(t, adapters)
	names := map[string]bool{}
	for _, a := range adapters {
		for _, l := range a.Listeners() {
			names[l.Name] = true
			addr := p.Addr(l.Name)
			if addr == "" || strings.HasSuffix(addr, ":0") {
				t.Fatalf("listener %s not bound: %q", l.Name, addr)
			}
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatalf("listener %s (%s): %v", l.Name, addr, err)
			}
			c.Close()
		}
	}
	for _, want := range []string{"tracker", "gilmour", "sink", "zerotask", "zerotask-pub", "eventmq-frontend",
		"eventmq-backend", "eventmq-admin", "eventmq-pub-in", "eventmq-pub-out"} {
		if !names[want] {
			t.Errorf("no adapter serves the contract's listener %s", want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ok, reason := p.Ready(ctx); !ok {
		t.Fatalf("pod not ready: %s", reason)
	}
	resp, err := http.Get("http://" + p.Addr("admin") + "/api/v1/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("admin API root: %d", resp.StatusCode)
	}
}

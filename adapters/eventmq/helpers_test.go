package eventmq

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// fastFlags make heartbeats, leases and polls short so that the tests stay fast.
var fastFlags = []string{
	"--eventmq-heartbeat-interval=100ms", "--eventmq-heartbeat-timeout=1500ms",
	"--eventmq-lease=5s", "--eventmq-poll-wait=300ms", "--eventmq-schedule-tick=50ms",
}

func startPod(t testing.TB, js *jetstream.Client, args ...string) *bridgetest.Pod {
	t.Helper()
	return bridgetest.Start(t, js, New(), append(append([]string(nil), fastFlags...), args...)...)
}

func newServer(t testing.TB) (*jetstream.Embedded, *jetstream.Client) {
	t.Helper()
	e := jstest.Server(t)
	return e, jstest.Connect(t, e)
}

// goPeer is a Go DEALER speaking eMQP.
type goPeer struct {
	t        testing.TB
	d        *Dealer
	stopBeat func()
}

func dialPeer(t testing.TB, addr, identity string) *goPeer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := DialDealer(ctx, addr, identity)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { d.Close() })
	return &goPeer{t: t, d: d}
}

func (p *goPeer) send(cmd string, body ...string) string {
	p.t.Helper()
	f := Encode(cmd, body...)
	if err := p.d.Send(f...); err != nil {
		p.t.Fatalf("send %s: %v", cmd, err)
	}
	return string(f[3])
}

// recv returns the next message whose command is not in skip.
func (p *goPeer) recv(within time.Duration, skip ...string) Message {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			p.t.Fatalf("nothing but %v within %v", skip, within)
		}
		fr, err := p.d.Recv(left)
		if err != nil {
			p.t.Fatalf("recv: %v", err)
		}
		m, err := Parse(fr)
		if err != nil {
			p.t.Fatalf("bad frames %q: %v", fr, err)
		}
		skipped := false
		for _, s := range skip {
			if m.Command == s {
				skipped = true
			}
		}
		if !skipped {
			return m
		}
	}
}

// worker INFORMs and waits for ACK and the first HEARTBEAT.
func goWorker(t testing.TB, addr, queues string) *goPeer {
	t.Helper()
	w := dialPeer(t, addr, "w-"+NewID())
	id := w.send(CmdInform, queues, TypeWorker)
	ack := w.recv(5 * time.Second)
	if ack.Command != CmdAck || len(ack.Body) != 1 || string(ack.Body[0]) != id {
		t.Fatalf("want ACK of %s, got %s %q", id, ack.Command, ack.Body)
	}
	hb := w.recv(5 * time.Second)
	if hb.Command != CmdHeartbeat {
		t.Fatalf("want HEARTBEAT right after ACK, got %s", hb.Command)
	}
	w.beat(t)
	return w
}

// beat sends HEARTBEAT every 100 ms (as a JobManager does every 3 s) until the test ends or
// the peer stops.
func (p *goPeer) beat(t testing.TB) {
	stop := make(chan struct{})
	done := make(chan struct{})
	p.stopBeat = func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}
	go func() {
		defer close(done)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				if p.d.Send(Encode(CmdHeartbeat, Timestamp(time.Now()))...) != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(p.stopBeat)
}

func jobPayload(callable string, args ...any) string {
	if args == nil {
		args = []any{}
	}
	b, _ := json.Marshal([]any{"run", map[string]any{"callable": callable, "path": "tests.jobs", "args": args,
		"kwargs": map[string]any{}, "class_args": []any{}, "class_kwargs": map[string]any{}}})
	return string(b)
}

func getJSON(t testing.TB, url string, out any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("GET %s: %v: %s", url, err, b)
		}
	}
	return resp.StatusCode
}

func eventually(t testing.TB, within time.Duration, fn func() error) {
	t.Helper()
	jstest.Eventually(t, within, fn)
}

func errorf(format string, a ...any) error { return fmt.Errorf(format, a...) }

var _ = strings.TrimSpace

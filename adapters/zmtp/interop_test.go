package zmtp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/jetbridge/jetbridge/adapters/zmtp/zmtptest"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Interop tests against real libzmq through Debian's python3-zmq.

const python = zmtptest.Python

func requirePyzmq(t testing.TB) {
	t.Helper()
	zmtptest.RequirePyzmq(t, "pyzmq/libzmq interop")
}

type pyDriver struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startDriver(t testing.TB) *pyDriver {
	t.Helper()
	requirePyzmq(t)
	d := &pyDriver{t: t, lines: make(chan string, 16), stderr: &lockedBuffer{}}
	d.cmd = exec.Command(python, "testdata/driver.py")
	d.cmd.Stderr = d.stderr
	var err error
	if d.stdin, err = d.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			d.lines <- sc.Text()
		}
		close(d.lines)
	}()
	t.Cleanup(func() {
		_ = d.stdin.Close()
		done := make(chan struct{})
		go func() { _ = d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = d.cmd.Process.Kill()
			<-done
		}
	})
	return d
}

func (d *pyDriver) do(cmd map[string]any) map[string]any {
	d.t.Helper()
	b, _ := json.Marshal(cmd)
	if _, err := d.stdin.Write(append(b, '\n')); err != nil {
		d.t.Fatalf("driver write: %v (stderr: %s)", err, d.stderr.String())
	}
	select {
	case line, ok := <-d.lines:
		if !ok {
			d.t.Fatalf("driver exited (stderr: %s)", d.stderr.String())
		}
		var res map[string]any
		if err := json.Unmarshal([]byte(line), &res); err != nil {
			d.t.Fatalf("driver said %q: %v", line, err)
		}
		if res["ok"] != true {
			d.t.Fatalf("driver %v: %v", cmd, res["error"])
		}
		return res
	case <-time.After(30 * time.Second):
		d.t.Fatalf("driver did not answer %v (stderr: %s)", cmd, d.stderr.String())
	}
	return nil
}

func hexFrames(frames ...string) []string {
	out := make([]string, len(frames))
	for i, f := range frames {
		out[i] = hex.EncodeToString([]byte(f))
	}
	return out
}

func (d *pyDriver) socket(name, typ, addr string, identity string, opts map[string]int) {
	d.t.Helper()
	if opts == nil {
		opts = map[string]int{}
	}
	d.do(map[string]any{"op": "socket", "name": name, "type": typ, "addr": "tcp://" + addr,
		"identity": hex.EncodeToString([]byte(identity)), "opts": opts})
}

func (d *pyDriver) send(name string, frames ...string) {
	d.t.Helper()
	d.do(map[string]any{"op": "send", "name": name, "frames": hexFrames(frames...)})
}

// recv returns the frames, or ok=false on timeout.
func (d *pyDriver) recv(name string, timeout time.Duration) ([]string, bool) {
	d.t.Helper()
	res := d.do(map[string]any{"op": "recv", "name": name, "timeout": timeout.Milliseconds()})
	if res["timeout"] == true {
		return nil, false
	}
	var out []string
	for _, f := range res["frames"].([]any) {
		b, err := hex.DecodeString(f.(string))
		if err != nil {
			d.t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out, true
}

func (d *pyDriver) mustRecv(name string, want ...string) {
	d.t.Helper()
	got, ok := d.recv(name, testIO)
	if !ok {
		d.t.Fatalf("%s: no message (want %q)", name, want)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		d.t.Fatalf("%s: got %q, want %q", name, got, want)
	}
}

func TestInteropReq(t *testing.T) {
	d := startDriver(t)
	r := startRouter(t, Options{})
	errs := make(chan error, 1)
	go func() {
		for {
			m, err := r.Recv(context.Background())
			if err != nil {
				return
			}
			env, body := SplitEnvelope(m.Frames)
			if len(env) != 1 || len(body) != 1 {
				errs <- fmt.Errorf("REQ frames %q", m.Frames)
				return
			}
			_ = r.Reply(context.Background(), m, append([]byte("re:"), body[0]...))
		}
	}()
	d.socket("req", "REQ", r.Addr().String(), "", nil)
	for i := 0; i < 5; i++ {
		d.send("req", fmt.Sprint("hello ", i))
		d.mustRecv("req", fmt.Sprint("re:hello ", i))
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	ev := nextEvent(t, r.Events(), PeerConnected)
	if ev.SocketType != TypeReq || len(ev.Peer) != 5 || ev.Peer[0] != 0 {
		t.Fatalf("event %+v", ev)
	}
}

func TestInteropDealerIdentity(t *testing.T) {
	d := startDriver(t)
	r := startRouter(t, Options{})
	d.socket("named", "DEALER", r.Addr().String(), "worker-7", nil)
	d.socket("anon", "DEALER", r.Addr().String(), "", nil)
	ctx, cancel := context.WithTimeout(context.Background(), testIO)
	defer cancel()
	ids := map[string][]byte{}
	d.send("named", "from-named", "x")
	d.send("anon", "from-anon", "y")
	for i := 0; i < 2; i++ {
		m, err := r.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids[string(m.Frames[0])] = m.Peer
		if err := r.Send(ctx, m.Peer, []byte("to"), m.Frames[0]); err != nil {
			t.Fatal(err)
		}
	}
	if string(ids["from-named"]) != "worker-7" {
		t.Fatalf("named peer id %q", ids["from-named"])
	}
	if id := ids["from-anon"]; len(id) != 5 || id[0] != 0 {
		t.Fatalf("generated id %x", id)
	}
	d.mustRecv("named", "to", "from-named")
	d.mustRecv("anon", "to", "from-anon")
}

func TestInteropDuplicateIdentity(t *testing.T) {
	d := startDriver(t)
	reg := prometheus.NewRegistry()
	r := startRouter(t, Options{Registerer: reg, Name: "dup"})
	go echo(r, nil)
	d.socket("first", "DEALER", r.Addr().String(), "same", nil)
	d.send("first", "one")
	d.mustRecv("first", "one")
	d.socket("second", "DEALER", r.Addr().String(), "same", nil)
	// Non-blocking: once refused, libzmq's DEALER may have no pipe to
	// queue into (EAGAIN), which is as good as a message never answered.
	d.do(map[string]any{"op": "send", "name": "second", "frames": hexFrames("two"), "noblock": true})
	waitFor(t, "the second connection to be refused", func() bool {
		return metricValue(t, reg, "jetbridge_zmtp_handshake_failures_total", "dup") >= 1
	})
	if got, ok := d.recv("second", 300*time.Millisecond); ok {
		t.Fatalf("second peer got %q", got)
	}
	d.send("first", "three")
	d.mustRecv("first", "three")
	connected := 0
	for len(r.Events()) > 0 {
		ev := <-r.Events()
		if ev.Kind == PeerConnected {
			connected++
		} else {
			t.Fatalf("unexpected %+v", ev)
		}
	}
	if connected != 1 {
		t.Fatalf("%d connected events", connected)
	}
}

func TestInteropHeartbeats(t *testing.T) {
	d := startDriver(t)
	reg := prometheus.NewRegistry()
	r := startRouter(t, Options{Registerer: reg, Name: "hb"})
	go echo(r, nil)
	d.socket("hb", "DEALER", r.Addr().String(), "hb", map[string]int{
		"HEARTBEAT_IVL": 100, "HEARTBEAT_TTL": 2000, "HEARTBEAT_TIMEOUT": 500,
	})
	d.socket("hbreq", "REQ", r.Addr().String(), "", map[string]int{
		"HEARTBEAT_IVL": 100, "HEARTBEAT_TTL": 2000, "HEARTBEAT_TIMEOUT": 500,
	})
	d.send("hb", "before")
	d.mustRecv("hb", "before")
	d.send("hbreq", "before")
	d.mustRecv("hbreq", "before")
	// Control frames out = PONGs. Wait for 30 of them (15 heartbeat
	// periods for 2 peers); without PONGs libzmq drops a connection after
	// 500 ms and reconnects.
	connected := 0
	drain := func() {
		for len(r.Events()) > 0 {
			ev := <-r.Events()
			if ev.Kind != PeerConnected {
				t.Fatalf("peer dropped (heartbeats not answered?): %+v", ev)
			}
			connected++
		}
	}
	waitFor(t, "30 PONGs", func() bool {
		drain()
		return metricValue(t, reg, "jetbridge_zmtp_frames_out_total", "hb")-
			metricValue(t, reg, "jetbridge_zmtp_messages_out_total", "hb") >= 30
	})
	d.send("hb", "after")
	d.mustRecv("hb", "after")
	d.send("hbreq", "after")
	d.mustRecv("hbreq", "after")
	drain()
	if connected != 2 {
		t.Fatalf("%d connections for 2 peers: a peer reconnected", connected)
	}
}

func TestInteropSilentClient(t *testing.T) {
	d := startDriver(t)
	r := startRouter(t, Options{HandshakeTimeout: 30 * time.Second})
	go echo(r, nil)
	for i := 0; i < 3; i++ {
		dialTCP(t, r.Addr()) // never says anything
	}
	start := time.Now()
	d.socket("req", "REQ", r.Addr().String(), "", nil)
	d.send("req", "hi")
	d.mustRecv("req", "hi")
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("round trip took %s behind silent clients", el)
	}
}

func TestInteropSlowReader(t *testing.T) {
	d := startDriver(t)
	r := startRouter(t, Options{SendHWM: 50})
	d.socket("slow", "DEALER", r.Addr().String(), "slow", map[string]int{"RCVHWM": 1})
	d.socket("fast", "DEALER", r.Addr().String(), "fast", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d.send("slow", "hello")
	d.send("fast", "hello")
	for i := 0; i < 2; i++ {
		if _, err := r.Recv(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Fill the slow peer: its writer is stuck once ErrWouldBlock persists.
	big := make([]byte, 64<<10)
	blocked := 0
	for blocked < 200 {
		err := r.Send(ctx, []byte("slow"), big)
		switch {
		case errors.Is(err, ErrWouldBlock):
			blocked++
			time.Sleep(time.Millisecond)
		case err != nil:
			t.Fatal(err)
		default:
			blocked = 0
		}
		if ctx.Err() != nil {
			t.Fatal("slow peer never filled up")
		}
	}
	start := time.Now()
	for i := 0; i < 20; i++ {
		if err := r.Send(ctx, []byte("fast"), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		d.mustRecv("fast", fmt.Sprint(i))
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("fast peer delayed %s by the slow one", el)
	}
}

func testInteropSub(t *testing.T, typ string) {
	d := startDriver(t)
	s := startPub(t, Options{})
	d.socket("sub", typ, s.Addr().String(), "", nil)
	d.do(map[string]any{"op": "sub", "name": "sub", "prefix": hex.EncodeToString([]byte("a."))})
	d.do(map[string]any{"op": "sub", "name": "sub", "prefix": hex.EncodeToString([]byte("b."))})
	waitSubs(t, s, "a.", "b.")
	publish(t, s, "a.1", "c.1", "b.1", "a", "a.2")
	d.mustRecv("sub", "a.1", "payload")
	d.mustRecv("sub", "b.1", "payload")
	d.mustRecv("sub", "a.2", "payload")
	d.do(map[string]any{"op": "unsub", "name": "sub", "prefix": hex.EncodeToString([]byte("a."))})
	waitSubs(t, s, "b.")
	publish(t, s, "a.3", "b.2")
	d.mustRecv("sub", "b.2", "payload")
	d.do(map[string]any{"op": "sub", "name": "sub", "prefix": ""})
	waitSubs(t, s, "", "b.")
	publish(t, s, "anything")
	d.mustRecv("sub", "anything", "payload")
}

func TestInteropSub(t *testing.T)  { testInteropSub(t, "SUB") }
func TestInteropXSub(t *testing.T) { testInteropSub(t, "XSUB") }

type loadResult struct {
	OK        bool    `json:"ok"`
	Msgs      int     `json:"msgs"`
	Seconds   float64 `json:"seconds"`
	MsgsPerS  float64 `json:"msgs_per_s"`
	Error     *string `json:"error"`
	rawOutput string
}

func runLoad(t testing.TB, r *Router, peers, msgs, window int) loadResult {
	t.Helper()
	requirePyzmq(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "testdata/load.py", "tcp://"+r.Addr().String(),
		fmt.Sprint(peers), fmt.Sprint(msgs), fmt.Sprint(window))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res loadResult
	res.rawOutput = string(out)
	if jerr := json.Unmarshal(bytes.TrimSpace(out), &res); jerr != nil {
		t.Fatalf("load.py: %v / %v: %s %s", err, jerr, out, stderr.String())
	}
	if !res.OK {
		t.Fatalf("load.py failed: %s", *res.Error)
	}
	return res
}

func TestInterop100Dealers(t *testing.T) {
	r := startRouter(t, Options{})
	errs := make(chan error, 1)
	go echo(r, errs)
	res := runLoad(t, r, 100, 1000, 50)
	if res.Msgs != 100*1000 {
		t.Fatalf("%d replies", res.Msgs)
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	t.Logf("100 pyzmq DEALERs x 1000: %.0f msgs/s round trip", res.MsgsPerS)
}

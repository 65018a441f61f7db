package zmtp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRouterDealerRoundTrip(t *testing.T) {
	r := startRouter(t, Options{})
	go echo(r, nil)
	p := mustPeer(t, r.Addr(), TypeDealer, []byte("worker-1"))
	ev := nextEvent(t, r.Events(), PeerConnected)
	if string(ev.Peer) != "worker-1" || ev.SocketType != TypeDealer || ev.RemoteAddr == nil {
		t.Fatalf("event %+v", ev)
	}
	long := bytes.Repeat([]byte("x"), 70000) // long frame, read incrementally
	for i := 0; i < 3; i++ {
		want := [][]byte{[]byte(fmt.Sprint("m", i)), {}, long}
		if err := p.send(want...); err != nil {
			t.Fatal(err)
		}
		got, err := p.recv(testIO)
		if err != nil {
			t.Fatal(err)
		}
		// echo keeps the envelope ["m<i>", ""] and the body.
		if len(got) != 3 || !bytes.Equal(got[0], want[0]) || len(got[1]) != 0 || !bytes.Equal(got[2], long) {
			t.Fatalf("got %d frames", len(got))
		}
	}
	if !r.Connected([]byte("worker-1")) || len(r.Peers()) != 1 {
		t.Fatal("peer not listed")
	}
	p.c.Close()
	ev = nextEvent(t, r.Events(), PeerDisconnected)
	if string(ev.Peer) != "worker-1" || ev.Err != nil {
		t.Fatalf("event %+v", ev)
	}
	waitFor(t, "peer removal", func() bool { return !r.Connected([]byte("worker-1")) })
}

func TestRouterReqEnvelopeAndGeneratedID(t *testing.T) {
	r := startRouter(t, Options{})
	p := mustPeer(t, r.Addr(), TypeReq, nil)
	if err := p.send([]byte{}, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testIO)
	defer cancel()
	m, err := r.Recv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Peer) != 5 || m.Peer[0] != 0 {
		t.Fatalf("generated id %x", m.Peer)
	}
	if len(m.Frames) != 2 || len(m.Frames[0]) != 0 || string(m.Body()[0]) != "hello" {
		t.Fatalf("frames %q", m.Frames)
	}
	if err := r.Reply(ctx, m, []byte("world")); err != nil {
		t.Fatal(err)
	}
	got, err := p.recv(testIO)
	if err != nil || len(got) != 2 || len(got[0]) != 0 || string(got[1]) != "world" {
		t.Fatalf("reply %q %v", got, err)
	}
	// A second anonymous peer gets another id.
	p2 := mustPeer(t, r.Addr(), TypeDealer, nil)
	_ = p2.send([]byte("x"))
	m2, err := r.Recv(ctx)
	if err != nil || bytes.Equal(m2.Peer, m.Peer) || len(m2.Peer) != 5 {
		t.Fatalf("second id %x vs %x (%v)", m2.Peer, m.Peer, err)
	}
}

func TestRouterSendErrors(t *testing.T) {
	r := startRouter(t, Options{})
	ctx := context.Background()
	if err := r.Send(ctx, []byte("nobody"), []byte("x")); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("unknown peer: %v", err)
	}
	if err := r.Send(ctx, []byte("nobody")); !errors.Is(err, ErrEmptyMessage) {
		t.Fatalf("empty: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := r.Send(cctx, []byte("nobody"), []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if _, err := r.Recv(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("recv cancelled: %v", err)
	}
	r.Close()
	if err := r.Send(ctx, []byte("nobody"), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: %v", err)
	}
	if _, err := r.Recv(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("recv closed: %v", err)
	}
	if _, ok := <-r.Events(); ok {
		t.Fatal("events channel not closed")
	}
}

func TestRouterDuplicateIdentity(t *testing.T) {
	r := startRouter(t, Options{})
	go echo(r, nil)
	first := mustPeer(t, r.Addr(), TypeDealer, []byte("dup"))
	nextEvent(t, r.Events(), PeerConnected)
	_, err := dialPeer(t, r.Addr(), TypeDealer, []byte("dup"))
	if err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Fatalf("second peer with the same identity: %v", err)
	}
	if err := first.send([]byte("still"), []byte("here")); err != nil {
		t.Fatal(err)
	}
	got, err := first.recv(testIO)
	if err != nil || string(got[1]) != "here" {
		t.Fatalf("first peer after refusal: %q %v", got, err)
	}
	// Once the first leaves, the identity is free again; a client that
	// reconnects at once may be refused a few times, and the events always
	// read connected, disconnected, connected.
	first.c.Close()
	var again *testPeer
	waitFor(t, "reconnection with the same identity", func() bool {
		again, err = dialPeer(t, r.Addr(), TypeDealer, []byte("dup"))
		return err == nil
	})
	if ev := nextEvent(t, r.Events(), 0); ev.Kind != PeerDisconnected || string(ev.Peer) != "dup" {
		t.Fatalf("first event after reconnect %+v", ev)
	}
	if ev := nextEvent(t, r.Events(), 0); ev.Kind != PeerConnected || string(ev.Peer) != "dup" {
		t.Fatalf("second event after reconnect %+v", ev)
	}
	_ = again.send([]byte("a"), []byte("b"))
	if got, err := again.recv(testIO); err != nil || string(got[0]) != "a" {
		t.Fatalf("reconnected peer: %q %v", got, err)
	}
}

func TestRouterRefusesBadPeers(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := startRouter(t, Options{Registerer: reg, Name: "bad", HandshakeTimeout: time.Second})
	go echo(r, nil)
	good := mustPeer(t, r.Addr(), TypeDealer, []byte("good"))

	// Refusals explained with an ERROR command (default handshake timeout,
	// so that a loaded machine cannot turn them into timeouts).
	r2 := startRouter(t, Options{Registerer: reg, Name: "bad"})
	if _, err := dialPeer(t, r2.Addr(), TypeSub, nil); err == nil || !strings.Contains(err.Error(), "socket type") {
		t.Fatalf("SUB on ROUTER: %v", err)
	}
	if _, err := dialPeer(t, r2.Addr(), TypeDealer, bytes.Repeat([]byte("i"), 256)); err == nil || !strings.Contains(err.Error(), "identity") {
		t.Fatalf("identity of 256 bytes: %v", err)
	}

	greet := func() []byte { return AppendGreeting(nil, Greeting{Major: 3, Minor: 1, Mechanism: "NULL"}) }
	bad := [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		append(AppendGreeting(nil, Greeting{Major: 2, Mechanism: "NULL"})[:11], make([]byte, 53)...),
		AppendGreeting(nil, Greeting{Major: 3, Minor: 1, Mechanism: "CURVE"}),
		append(greet(), AppendFrame(nil, 0, []byte("data before READY"))...),
		append(greet(), AppendCommandFrame(nil, CmdReady, []byte{0})...),
		append(greet(), ReadyFrame(nil)...), // no Socket-Type
		append(greet(), AppendCommandFrame(nil, CmdPing, []byte{0, 0})...),
		append(greet(), ErrorFrame("go away")...),
		append(greet(), 0x02, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
		greet()[:30], // truncated: handshake timeout
		nil,          // silent: handshake timeout
	}
	conns := make([]net.Conn, len(bad))
	for i, b := range bad {
		conns[i] = dialTCP(t, r.Addr())
		if len(b) > 0 {
			if _, err := conns[i].Write(b); err != nil {
				t.Fatalf("bad input %d: %v", i, err)
			}
		}
	}
	for _, c := range conns {
		expectClosed(t, c, nil)
	}
	// The good peer is unaffected.
	_ = good.send([]byte("a"), []byte("b"))
	if got, err := good.recv(testIO); err != nil || string(got[1]) != "b" {
		t.Fatalf("good peer: %q %v", got, err)
	}
	waitFor(t, "handshake failure count", func() bool {
		return metricValue(t, reg, "jetbridge_zmtp_handshake_failures_total", "bad") == float64(len(bad)+2)
	})
}

func TestRouterOversize(t *testing.T) {
	r := startRouter(t, Options{MaxMessageSize: 1000})
	go echo(r, nil)
	good := mustPeer(t, r.Addr(), TypeDealer, []byte("good"))
	cases := map[string][]byte{
		"one frame over":   AppendFrame(nil, 0, make([]byte, 1001)),
		"long claim 2^62":  {0x02, 0x40, 0, 0, 0, 0, 0, 0, 0},
		"total over":       AppendMessage(nil, [][]byte{make([]byte, 600), make([]byte, 600)}),
		"command over":     AppendCommandFrame(nil, "HUGE", make([]byte, 1000)),
		"bad PING":         AppendCommandFrame(nil, CmdPing, []byte{1}),
		"READY again":      ReadyFrame(Metadata{{PropSocketType, []byte("DEALER")}}),
		"reserved flag":    {0x10, 0x00},
		"garbage command":  AppendFrameHeader(nil, FlagCommand, 0),
		"peer sends ERROR": ErrorFrame("bye"),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			p := mustPeer(t, r.Addr(), TypeDealer, nil)
			if err := p.sendRaw(b); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, p.c, p.br)
		})
	}
	// Exactly at the limit passes.
	_ = good.send(make([]byte, 500), make([]byte, 500))
	if got, err := good.recv(testIO); err != nil || len(got) != 2 {
		t.Fatalf("message at the limit: %v", err)
	}
}

func TestRouterPingPongAndTTL(t *testing.T) {
	r := startRouter(t, Options{})
	p := mustPeer(t, r.Addr(), TypeDealer, []byte("hb"))
	nextEvent(t, r.Events(), PeerConnected)
	const ttl = 1500 * time.Millisecond
	if err := p.sendRaw(PingFrame(ttl, []byte("ctx-1"))); err != nil {
		t.Fatal(err)
	}
	cmd, err := p.readCommand(testIO)
	if err != nil || cmd.Name != CmdPong || string(cmd.Data) != "ctx-1" {
		t.Fatalf("PONG: %+v %v", cmd, err)
	}
	// Traffic within the TTL keeps the connection alive...
	for i := 0; i < 3; i++ {
		_ = p.sendRaw(PingFrame(ttl, nil))
		if cmd, err := p.readCommand(testIO); err != nil || cmd.Name != CmdPong || len(cmd.Data) != 0 {
			t.Fatalf("PONG %d: %+v %v", i, cmd, err)
		}
	}
	// ...then silence past the TTL closes it.
	start := time.Now()
	ev := nextEvent(t, r.Events(), PeerDisconnected)
	if !errors.Is(ev.Err, ErrHeartbeatTimeout) {
		t.Fatalf("disconnect reason %v", ev.Err)
	}
	if el := time.Since(start); el > ttl+5*time.Second {
		t.Fatalf("TTL enforced after %s", el)
	}
}

func TestRouterServerHeartbeat(t *testing.T) {
	r := startRouter(t, Options{HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: time.Second})
	go echo(r, nil)
	alive := mustPeer(t, r.Addr(), TypeDealer, []byte("alive"))
	dead := mustPeer(t, r.Addr(), TypeDealer, []byte("dead"))
	// An old 3.0 peer gets no PINGs and is never timed out.
	old, err := dialPeerMinor(t, r.Addr(), TypeDealer, []byte("old"), 0)
	if err != nil {
		t.Fatal(err)
	}
	// The live peer answers PINGs (recv does) and keeps talking.
	deadline := time.Now().Add(testIO)
	for alive.pings < 3 && time.Now().Before(deadline) {
		_ = alive.send([]byte("a"), []byte("b"))
		if _, err := alive.recv(testIO); err != nil {
			t.Fatal(err)
		}
	}
	if alive.pings < 3 {
		t.Fatalf("only %d PINGs", alive.pings)
	}
	// The silent one is dropped.
	for {
		ev := nextEvent(t, r.Events(), PeerDisconnected)
		if string(ev.Peer) == "dead" {
			if !errors.Is(ev.Err, ErrHeartbeatTimeout) {
				t.Fatalf("reason %v", ev.Err)
			}
			break
		}
		if string(ev.Peer) == "old" {
			t.Fatal("3.0 peer dropped")
		}
	}
	_ = dead
	_ = old.send([]byte("x"), []byte("y"))
	if got, err := old.recv(testIO); err != nil || string(got[0]) != "x" {
		t.Fatalf("3.0 peer: %q %v", got, err)
	}
	if !r.Connected([]byte("alive")) {
		t.Fatal("live peer dropped")
	}
}

// A TCP client that never speaks must not delay another client's handshake.
func TestRouterSilentClientDoesNotBlockAccept(t *testing.T) {
	r := startRouter(t, Options{HandshakeTimeout: 30 * time.Second})
	for i := 0; i < 5; i++ {
		dialTCP(t, r.Addr())
	}
	start := time.Now()
	mustPeer(t, r.Addr(), TypeDealer, nil)
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("handshake took %s behind silent clients", el)
	}
}

// A peer that stops reading fills its own queue; other peers are served.
func TestRouterSlowPeerIsolation(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := startRouter(t, Options{SendHWM: 10, Registerer: reg, Name: "slow"})
	slow := mustPeer(t, r.Addr(), TypeDealer, []byte("slow"))
	fast := mustPeer(t, r.Addr(), TypeDealer, []byte("fast"))
	_ = slow
	ctx := context.Background()
	big := make([]byte, 256<<10)
	var blocked bool
	for i := 0; i < 10000; i++ {
		err := r.Send(ctx, []byte("slow"), big)
		if errors.Is(err, ErrWouldBlock) {
			blocked = true
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !blocked {
		t.Fatal("slow peer never reached its high-water mark")
	}
	start := time.Now()
	for i := 0; i < 100; i++ {
		if err := r.Send(ctx, []byte("fast"), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
		got, err := fast.recv(testIO)
		if err != nil || string(got[0]) != fmt.Sprint(i) {
			t.Fatalf("fast peer: %q %v", got, err)
		}
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("fast peer delayed: %s", el)
	}
	if v := metricValue(t, reg, "jetbridge_zmtp_dropped_messages_total", "slow"); v < 1 {
		t.Fatalf("dropped = %v", v)
	}
}

func TestRouterCloseClosesPeers(t *testing.T) {
	r := startRouter(t, Options{})
	var peers []*testPeer
	for i := 0; i < 5; i++ {
		peers = append(peers, mustPeer(t, r.Addr(), TypeDealer, nil))
	}
	handshaking := dialTCP(t, r.Addr())
	waitFor(t, "5 peers", func() bool { return len(r.Peers()) == 5 })
	done := make(chan error, 1)
	go func() {
		_, err := r.Recv(context.Background())
		done <- err
	}()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv after Close: %v", err)
	}
	for _, p := range peers {
		expectClosed(t, p.c, p.br)
	}
	expectClosed(t, handshaking, nil)
	n := 0
	for ev := range r.Events() {
		if ev.Kind == PeerDisconnected {
			n++
			if !errors.Is(ev.Err, ErrClosed) {
				t.Fatalf("reason %v", ev.Err)
			}
		}
	}
	if n != 5 {
		t.Fatalf("%d disconnect events", n)
	}
	if _, err := net.DialTimeout("tcp", r.Addr().String(), time.Second); err == nil {
		t.Fatal("still listening")
	}
	if err := r.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}

// Close must not hang while peer readers wait on a full inbound queue.
func TestRouterCloseWithFullInbound(t *testing.T) {
	r := startRouter(t, Options{RecvHWM: 1})
	p := mustPeer(t, r.Addr(), TypeDealer, nil)
	for i := 0; i < 5; i++ {
		_ = p.send([]byte("x"))
	}
	waitFor(t, "reader blocked on the full queue", func() bool { return len(r.in) == 1 })
	done := make(chan error, 1)
	go func() { done <- r.Close() }()
	select {
	case <-done:
	case <-time.After(testIO):
		t.Fatal("Close hangs")
	}
	expectClosed(t, p.c, p.br)
}

func TestRouterContextStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r, err := Listen(ctx, "tcp://127.0.0.1:0", testOptions(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	p := mustPeer(t, r.Addr(), TypeDealer, nil)
	cancel()
	expectClosed(t, p.c, p.br)
	if _, err := r.Recv(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	r.Close()
	if _, err := Listen(context.Background(), "udp://127.0.0.1:0", Options{}); err == nil {
		t.Fatal("udp endpoint accepted")
	}
}

func TestRouterManyGoPeers(t *testing.T) {
	reg := prometheus.NewRegistry()
	r := startRouter(t, Options{Registerer: reg, Name: "many"})
	errs := make(chan error, 1)
	go echo(r, errs)
	const peers, msgs = 20, 200
	var wg sync.WaitGroup
	fail := make(chan error, peers)
	for i := 0; i < peers; i++ {
		p := mustPeer(t, r.Addr(), TypeDealer, []byte(fmt.Sprint("p", i)))
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := 0; j < msgs; j++ {
				if err := p.send([]byte(fmt.Sprint(j))); err != nil {
					fail <- err
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for j := 0; j < msgs; j++ {
				got, err := p.recv(testIO)
				if err != nil || string(got[0]) != fmt.Sprint(j) {
					fail <- fmt.Errorf("peer %d msg %d: %q %v", i, j, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(fail)
	for err := range fail {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if v := metricValue(t, reg, "jetbridge_zmtp_messages_in_total", "many"); v != peers*msgs {
		t.Fatalf("messages in %v", v)
	}
	if v := metricValue(t, reg, "jetbridge_zmtp_peers", "many"); v != peers {
		t.Fatalf("peers gauge %v", v)
	}
	waitFor(t, "messages out", func() bool {
		return metricValue(t, reg, "jetbridge_zmtp_messages_out_total", "many") == peers*msgs
	})
}

func TestMetricsRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := startRouter(t, Options{Registerer: reg, Name: "same"})
	b := startRouter(t, Options{Registerer: reg, Name: "same"})
	// Wrapped registerers share the registry under another key.
	c, err := ListenPub(context.Background(), "127.0.0.1:0", testOptions(Options{Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"pod": "x"}, reg), Name: "same"}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustPeer(t, a.Addr(), TypeDealer, nil)
	mustPeer(t, b.Addr(), TypeDealer, nil)
	waitFor(t, "two peers on the shared series", func() bool {
		return metricValue(t, reg, "jetbridge_zmtp_peers", "same") == 2
	})
}

// metricValue reads one jetbridge_zmtp_* series for a listener name.
func metricValue(t testing.TB, g prometheus.Gatherer, name, listener string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := false
			for _, l := range m.GetLabel() {
				if l.GetName() == "listener" && l.GetValue() == listener {
					match = true
				}
			}
			if !match {
				continue
			}
			if m.Gauge != nil {
				sum += m.GetGauge().GetValue()
			} else {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

package zmtp

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func startPub(t testing.TB, o Options) *Pub {
	t.Helper()
	p, err := ListenPub(context.Background(), "127.0.0.1:0", testOptions(o))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// subsOf returns the sorted subscriptions of every subscriber.
func (s *Pub) subsOf() [][]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out [][]string
	for _, p := range s.peers {
		p.subMu.RLock()
		var l []string
		for k, n := range p.subs {
			for i := 0; i < n; i++ {
				l = append(l, k)
			}
		}
		p.subMu.RUnlock()
		slices.Sort(l)
		out = append(out, l)
	}
	return out
}

func waitSubs(t testing.TB, s *Pub, want ...string) {
	t.Helper()
	waitFor(t, "subscriptions", func() bool {
		got := s.subsOf()
		return len(got) == 1 && slices.Equal(got[0], want)
	})
}

func expectMsgs(t testing.TB, p *testPeer, want ...string) {
	t.Helper()
	for _, w := range want {
		got, err := p.recv(testIO)
		if err != nil {
			t.Fatalf("want %q: %v", w, err)
		}
		if string(got[0]) != w {
			t.Fatalf("got %q, want %q", got[0], w)
		}
	}
}

func publish(t testing.TB, s *Pub, topics ...string) {
	t.Helper()
	for _, tp := range topics {
		if _, err := s.Publish([]byte(tp), []byte("payload")); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPubSubscribeCommands(t *testing.T) {
	s := startPub(t, Options{})
	sub := mustPeer(t, s.Addr(), TypeSub, nil)
	ev := nextEvent(t, s.Events(), PeerConnected)
	if ev.SocketType != TypeSub || len(ev.Peer) != 5 {
		t.Fatalf("event %+v", ev)
	}
	_ = sub.sendRaw(SubscribeFrame([]byte("a."), false))
	_ = sub.sendRaw(SubscribeFrame([]byte("b."), false))
	waitSubs(t, s, "a.", "b.")
	publish(t, s, "a.1", "c.1", "b.1", "a", "a.2")
	expectMsgs(t, sub, "a.1", "b.1", "a.2")
	_ = sub.sendRaw(SubscribeFrame([]byte("a."), true))
	waitSubs(t, s, "b.")
	publish(t, s, "a.3", "b.2")
	expectMsgs(t, sub, "b.2")
	// Empty prefix = everything.
	_ = sub.sendRaw(SubscribeFrame(nil, false))
	waitSubs(t, s, "", "b.")
	publish(t, s, "z", "b.3")
	expectMsgs(t, sub, "z", "b.3")
}

func TestPubSubscriptionMessages30(t *testing.T) {
	s := startPub(t, Options{})
	sub, err := dialPeerMinor(t, s.Addr(), TypeXSub, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.send([]byte("\x01a."))
	_ = sub.send([]byte("\x01a.")) // counted twice
	_ = sub.send([]byte("not a subscription"), []byte("ignored"))
	_ = sub.send([]byte("\x01x"))
	waitSubs(t, s, "a.", "a.", "x")
	publish(t, s, "a.1", "b", "x1")
	expectMsgs(t, sub, "a.1", "x1")
	_ = sub.send([]byte("\x00a."))
	waitSubs(t, s, "a.", "x")
	publish(t, s, "a.2")
	expectMsgs(t, sub, "a.2")
	_ = sub.send([]byte("\x00a."))
	_ = sub.send([]byte("\x00never"))
	waitSubs(t, s, "x")
	publish(t, s, "a.3", "x2")
	expectMsgs(t, sub, "x2")
}

func TestPubFanoutAndDrops(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := startPub(t, Options{SendHWM: 4, Registerer: reg, Name: "pub"})
	fast := mustPeer(t, s.Addr(), TypeSub, nil)
	slow := mustPeer(t, s.Addr(), TypeSub, nil)
	_ = fast.sendRaw(SubscribeFrame(nil, false))
	_ = slow.sendRaw(SubscribeFrame(nil, false))
	waitFor(t, "two subscribers", func() bool {
		n := 0
		for _, l := range s.subsOf() {
			n += len(l)
		}
		return n == 2
	})
	if s.Subscribers() != 2 {
		t.Fatal(s.Subscribers())
	}
	// The slow one never reads: its queue fills and it misses messages,
	// while the fast one receives every message it reads in time.
	big := make([]byte, 128<<10)
	for i := 0; i < 200; i++ {
		if _, err := s.Publish([]byte("t"), big); err != nil {
			t.Fatal(err)
		}
		if _, err := fast.recv(testIO); err != nil {
			t.Fatal(err)
		}
	}
	if v := metricValue(t, reg, "jetbridge_zmtp_dropped_messages_total", "pub"); v < 1 {
		t.Fatalf("dropped %v", v)
	}
	if _, err := s.Publish(); err == nil {
		t.Fatal("empty publish accepted")
	}
	_ = slow
	s.Close()
	if _, err := s.Publish([]byte("x")); err == nil {
		t.Fatal("publish after close")
	}
	expectClosed(t, fast.c, fast.br)
}

func TestPubRefusesNonSubscribers(t *testing.T) {
	s := startPub(t, Options{})
	for _, st := range []string{TypeDealer, TypeReq, TypePub, "BOGUS"} {
		if _, err := dialPeer(t, s.Addr(), st, nil); err == nil {
			t.Fatalf("%s accepted by PUB", st)
		}
	}
	start := time.Now()
	mustPeer(t, s.Addr(), TypeSub, nil)
	if time.Since(start) > 3*time.Second {
		t.Fatal("slow handshake")
	}
}

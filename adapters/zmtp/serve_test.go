package zmtp

import (
	"bytes"
	"context"
	"net"
	"testing"
)

// Serve and ServePub take listeners the pod bound itself.
func TestServeOnABoundListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Serve(context.Background(), ln, testOptions(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if r.Addr().String() != ln.Addr().String() {
		t.Fatalf("addr %s, listener %s", r.Addr(), ln.Addr())
	}
	go echo(r, nil)
	p := mustPeer(t, r.Addr(), TypeDealer, []byte("w"))
	if err := p.send([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got, err := p.recv(testIO)
	if err != nil || len(got) != 1 || !bytes.Equal(got[0], []byte("hello")) {
		t.Fatalf("echo: %q %v", got, err)
	}

	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ServePub(context.Background(), pln, testOptions(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	sub := mustPeer(t, s.Addr(), TypeSub, nil)
	_ = sub.sendRaw(SubscribeFrame([]byte("a."), false))
	waitSubs(t, s, "a.")
	publish(t, s, "b.1", "a.1")
	expectMsgs(t, sub, "a.1")

	if _, err := Serve(context.Background(), nil, Options{}); err == nil {
		t.Fatal("nil listener accepted")
	}
}

package sink

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// tlsPipe returns both ends of a TLS connection over net.Pipe (deadlines supported).
func tlsPipe(t *testing.T) (srv, cli *tls.Conn) {
	t.Helper()
	ca, err := NewCA("pipe-ca")
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.Issue("localhost", []string{"localhost"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := iss.TLS()
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	srv = tls.Server(a, &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12})
	cli = tls.Client(b, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // test pipe
	done := make(chan error, 1)
	go func() { done <- cli.Handshake() }()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() }) // not tls Close: close_notify on a pipe nobody reads waits 5 s
	return srv, cli
}

// A read deadline armed before the wait began (the reader moves it at most every idle/16) fires
// early; waitFrame moves it to idle after the wait's start and keeps waiting, and a connection
// really silent for idle still times out, not before.
func TestWaitFrameEarlyDeadline(t *testing.T) {
	srv, cli := tlsPipe(t)
	s := &session{conn: srv}
	br := bufio.NewReaderSize(srv, 16<<10)
	const idle = time.Second

	wait := time.Now()
	armed := wait.Add(-300 * time.Millisecond) // fires 700 ms into the wait
	_ = srv.SetReadDeadline(armed.Add(idle))
	go func() {
		time.Sleep(800 * time.Millisecond) // the client's own pacing: after the early deadline
		_ = WriteFrame(cli, AppendPing(nil))
	}()
	if err := s.waitFrame(br, wait, idle, &armed); err != nil {
		t.Fatalf("waitFrame after %v: %v", time.Since(wait), err)
	}
	if !armed.Equal(wait) {
		t.Fatalf("deadline not moved to the wait's start + idle")
	}
	if f, err := ReadFrame(br, nil); err != nil || MsgType(f[0]>>4) != TypePing {
		t.Fatalf("frame %x, %v", f, err)
	}

	// silent: times out at wait+idle even though the deadline on conn fires earlier
	wait = time.Now()
	armed = wait.Add(-300 * time.Millisecond)
	_ = srv.SetReadDeadline(armed.Add(idle))
	err := s.waitFrame(br, wait, idle, &armed)
	if d := time.Since(wait); !errors.Is(err, os.ErrDeadlineExceeded) || d < idle {
		t.Fatalf("silent connection: %v after %v, want a deadline error after %v", err, d, idle)
	}
}

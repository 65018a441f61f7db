package zmtp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
)

// testPeer is a minimal Go ZMTP client (DEALER, REQ, SUB...) built on the
// codec, so the server sockets are tested without Python.
type testPeer struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
	// pings received from the server (server heartbeats)
	pings int
}

const testIO = 10 * time.Second

func dialTCP(t testing.TB, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), testIO)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialPeer connects and runs the client side of the handshake. An ERROR
// from the server is returned as an error.
func dialPeer(t testing.TB, addr net.Addr, socketType string, identity []byte) (*testPeer, error) {
	t.Helper()
	return dialPeerMinor(t, addr, socketType, identity, 1)
}

func dialPeerMinor(t testing.TB, addr net.Addr, socketType string, identity []byte, minor byte) (*testPeer, error) {
	t.Helper()
	c := dialTCP(t, addr)
	p := &testPeer{t: t, c: c, br: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(testIO))
	md := Metadata{{PropSocketType, []byte(socketType)}}
	if socketType == TypeDealer || socketType == TypeReq || socketType == TypeRouter {
		md = append(md, Property{PropIdentity, identity})
	}
	hello := AppendGreeting(nil, Greeting{Major: 3, Minor: minor, Mechanism: MechanismNull})
	hello = append(hello, ReadyFrame(md)...)
	if _, err := c.Write(hello); err != nil {
		return nil, err
	}
	var gb [GreetingSize]byte
	if _, err := io.ReadFull(p.br, gb[:]); err != nil {
		return nil, fmt.Errorf("read greeting: %w", err)
	}
	g, err := ParseGreeting(gb[:])
	if err != nil {
		return nil, err
	}
	if g.Major != 3 || g.Minor != 1 || g.Mechanism != "NULL" {
		t.Fatalf("server greeting %+v", g)
	}
	f, err := p.readFrame()
	if err != nil {
		return nil, fmt.Errorf("read READY: %w", err)
	}
	cmd, err := ParseCommand(f.Body)
	if err != nil || !f.IsCommand() {
		t.Fatalf("server sent %+v (%v) instead of READY", f, err)
	}
	if cmd.Name == CmdError {
		reason, _ := ParseErrorReason(cmd.Data)
		return nil, fmt.Errorf("server ERROR %q", reason)
	}
	if cmd.Name != CmdReady {
		t.Fatalf("server sent %s", cmd.Name)
	}
	smd, err := ParseMetadata(cmd.Data)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := smd.Get(PropSocketType)
	if !Compatible(socketType, string(st)) {
		t.Fatalf("server socket type %q for %s", st, socketType)
	}
	_ = c.SetDeadline(time.Time{})
	return p, nil
}

func mustPeer(t testing.TB, addr net.Addr, socketType string, identity []byte) *testPeer {
	t.Helper()
	p, err := dialPeer(t, addr, socketType, identity)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *testPeer) readFrame() (Frame, error) {
	b0, err := p.br.ReadByte()
	if err != nil {
		return Frame{}, err
	}
	hdr := make([]byte, FrameHeaderLen(b0))
	hdr[0] = b0
	if _, err := io.ReadFull(p.br, hdr[1:]); err != nil {
		return Frame{}, err
	}
	fl, size, err := ParseFrameHeader(hdr, 1<<30)
	if err != nil {
		return Frame{}, err
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(p.br, body); err != nil {
		return Frame{}, err
	}
	return Frame{Flags: fl, Body: body}, nil
}

func (p *testPeer) send(frames ...[]byte) error {
	_, err := p.c.Write(AppendMessage(nil, frames))
	return err
}

func (p *testPeer) sendRaw(b []byte) error {
	_, err := p.c.Write(b)
	return err
}

// recv returns the next message; commands are handled (PING answered,
// counted) and skipped.
func (p *testPeer) recv(timeout time.Duration) ([][]byte, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(timeout))
	defer p.c.SetReadDeadline(time.Time{})
	var frames [][]byte
	for {
		f, err := p.readFrame()
		if err != nil {
			return nil, err
		}
		if f.IsCommand() {
			cmd, err := ParseCommand(f.Body)
			if err != nil {
				return nil, err
			}
			if cmd.Name == CmdPing {
				p.pings++
				_, ctx, _ := ParsePing(cmd.Data)
				if err := p.sendRaw(PongFrame(ctx)); err != nil {
					return nil, err
				}
			}
			continue
		}
		frames = append(frames, f.Body)
		if !f.More() {
			return frames, nil
		}
	}
}

// readCommand returns the next command frame, failing on data frames.
func (p *testPeer) readCommand(timeout time.Duration) (Command, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(timeout))
	defer p.c.SetReadDeadline(time.Time{})
	f, err := p.readFrame()
	if err != nil {
		return Command{}, err
	}
	if !f.IsCommand() {
		return Command{}, errors.New("data frame where a command was expected")
	}
	return ParseCommand(f.Body)
}

// expectClosed waits until the server closes the connection.
func expectClosed(t testing.TB, c net.Conn, br *bufio.Reader) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testIO))
	var r io.Reader = c
	if br != nil {
		r = br
	}
	_, err := io.Copy(io.Discard, r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %s", testIO)
	}
}

// quietLogger logs errors only, or everything with ZMTP_TEST_DEBUG=1.
func quietLogger() *slog.Logger {
	if os.Getenv("ZMTP_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))
}

func testOptions(o Options) Options {
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	return o
}

func startRouter(t testing.TB, o Options) *Router {
	t.Helper()
	r, err := Listen(context.Background(), "127.0.0.1:0", testOptions(o))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// echo serves r until it closes: every message is sent back to its peer
// (envelope kept). Send errors are reported on errs.
func echo(r *Router, errs chan<- error) {
	for {
		m, err := r.Recv(context.Background())
		if err != nil {
			return
		}
		if err := r.Reply(context.Background(), m, m.Body()...); err != nil && errs != nil {
			select {
			case errs <- err:
			default:
			}
		}
	}
}

// nextEvent waits for the next event of kind k (others are returned too
// when k is 0).
func nextEvent(t testing.TB, ch <-chan PeerEvent, k EventKind) PeerEvent {
	t.Helper()
	deadline := time.After(testIO)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("events channel closed")
			}
			if k == 0 || ev.Kind == k {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %v event within %s", k, testIO)
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testIO)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

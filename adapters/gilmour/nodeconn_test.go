package gilmour

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawNode is a TCP server that reads HTTP requests and answers with whatever bytes answer
// writes (the request number counts per connection); it counts the connections it accepted.
type rawNode struct {
	ln       net.Listener
	accepted atomic.Int32
	bodies   chan string
	wg       sync.WaitGroup
}

func newRawNode(t *testing.T, answer func(c net.Conn, req *http.Request, body string, n int) (keep bool)) *rawNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rn := &rawNode{ln: ln, bodies: make(chan string, 100)}
	rn.wg.Add(1)
	go func() {
		defer rn.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rn.accepted.Add(1)
			rn.wg.Add(1)
			go func() {
				defer rn.wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for n := 1; ; n++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					b, _ := io.ReadAll(req.Body)
					rn.bodies <- string(b)
					if !answer(c, req, string(b), n) {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); rn.wg.Wait() })
	return rn
}

func (rn *rawNode) host() string { return rn.ln.Addr().String() }

func TestConnPoolKeepsConnectionsAlive(t *testing.T) {
	rn := newRawNode(t, func(c net.Conn, req *http.Request, body string, n int) bool {
		if req.Method != http.MethodPost || req.URL.RequestURI() != "/h?x=1" || req.Header.Get("Content-Type") != "application/json" {
			_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return true
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
		return true
	})
	p := newConnPool()
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		st, data, err := p.post(ctx, rn.host(), "/h?x=1", []byte(`{"i":`+strconv.Itoa(i)+`}`))
		if err != nil || st != 200 || string(data) != `{"i":`+strconv.Itoa(i)+`}` {
			t.Fatalf("call %d: %d %q %v", i, st, data, err)
		}
	}
	if n := rn.accepted.Load(); n != 1 {
		t.Fatalf("20 calls one after another used %d connections, want 1", n)
	}
	if p.idleCount() != 1 {
		t.Fatalf("idle: %d", p.idleCount())
	}
}

// Answers the way real servers frame them: chunked, Connection: close, HTTP/1.0 up to EOF,
// a 103 before the answer, and two answers in one write.
func TestConnPoolAnswerFraming(t *testing.T) {
	for _, c := range []struct {
		name, answer, want string
		status             int
		reusable           bool
	}{
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n", `{"a":1}`, 200, true},
		{"close", "HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 4\r\n\r\noops", "oops", 500, false},
		{"http10 up to EOF", "HTTP/1.0 200 OK\r\n\r\n[1,2]", "[1,2]", 200, false},
		{"early hints", "HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}", "{}", 201, true},
		{"two answers at once", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2", "1", 200, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			rn := newRawNode(t, func(conn net.Conn, req *http.Request, body string, n int) bool {
				_, _ = io.WriteString(conn, c.answer)
				return !strings.HasPrefix(c.answer, "HTTP/1.0") && !strings.Contains(c.answer, "close")
			})
			p := newConnPool()
			defer p.close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, data, err := p.post(ctx, rn.host(), "/", []byte(`{}`))
			if err != nil || st != c.status || string(data) != c.want {
				t.Fatalf("got %d %q %v", st, data, err)
			}
			if got := p.idleCount() == 1; got != c.reusable {
				t.Fatalf("kept for reuse: %v, want %v", got, c.reusable)
			}
		})
	}
}

// A node that closed a kept-alive connection while it was idle: the next call goes out on a new
// connection and the node sees the request once.
func TestConnPoolSkipsConnectionsClosedWhileIdle(t *testing.T) {
	closed := make(chan struct{}, 10)
	rn := newRawNode(t, func(c net.Conn, req *http.Request, body string, n int) bool {
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		c.Close() // no Connection: close, as a server whose idle timeout is short does it
		closed <- struct{}{}
		return false
	})
	p := newConnPool()
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		st, data, err := p.post(ctx, rn.host(), "/", []byte(`1`))
		if err != nil || st != 200 || string(data) != "ok" {
			t.Fatalf("call %d: %d %q %v", i, st, data, err)
		}
		<-closed
		deadline := time.Now().Add(5 * time.Second)
		for !unusableIdle(p) { // the FIN has reached our socket
			if time.Now().After(deadline) {
				t.Fatal("closed connection not seen")
			}
			time.Sleep(time.Millisecond)
		}
	}
	if n := rn.accepted.Load(); n != 3 {
		t.Fatalf("connections: %d, want 3", n)
	}
	if n := len(rn.bodies); n != 3 {
		t.Fatalf("the node saw %d requests, want 3", n)
	}
}

// unusableIdle reports whether every idle connection of p is unusable.
func unusableIdle(p *connPool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.idle {
		for _, nc := range l {
			if !unusable(nc.c) {
				return false
			}
		}
	}
	return true
}

// A handler that does not answer in time: the call fails with DeadlineExceeded and the node sees
// its connection closed; a call whose context is cancelled does the same.
func TestConnPoolDeadlineClosesTheConnection(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	gone := make(chan struct{}, 2)
	rn := newRawNode(t, func(c net.Conn, req *http.Request, body string, n int) bool {
		go func() {
			var b [1]byte
			if _, err := c.Read(b[:]); err != nil {
				gone <- struct{}{}
			}
		}()
		<-release
		return false
	})
	p := newConnPool()
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := p.post(ctx, rn.host(), "/slow", []byte(`{}`))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("took %v", el)
	}
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the node did not see its connection closed")
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel2)
	if _, _, err := p.post(ctx2, rn.host(), "/slow", []byte(`{}`)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the node did not see the cancelled call's connection closed")
	}
	if p.idleCount() != 0 {
		t.Fatal("a timed-out connection was kept")
	}
}

// Answers that must not be read without end or reused: a body over maxNodeAnswer is cut (and
// its connection dropped), headers without end fail the call.
func TestConnPoolBoundsAnswers(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	rn := newRawNode(t, func(c net.Conn, req *http.Request, body string, n int) bool {
		if req.URL.Path == "/headers" { // 3 MiB of headers, then a proper end and a small body
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			for i := 0; i < 3*maxAnswerHeader/len(big); i++ {
				if _, err := io.WriteString(c, "X: "+big[:len(big)-10]+"\r\n"); err != nil {
					return false
				}
			}
			_, _ = io.WriteString(c, "Content-Length: 2\r\n\r\nok")
			return true
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"+big[:100])
		return true
	})
	p := newConnPool()
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, data, err := p.post(ctx, rn.host(), "/headers", nil); err == nil {
		t.Fatalf("3 MiB of headers must fail the call, got %d %q", st, data)
	}
	st, data, err := p.post(ctx, rn.host(), "/ok", nil)
	if err != nil || st != 200 || len(data) != 100 {
		t.Fatalf("normal call after: %d %d %v", st, len(data), err)
	}
}

// Nothing listens: the dial error is returned (health decides unreachable from it).
func TestConnPoolDialError(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	p := newConnPool()
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := p.post(ctx, addr, "/", nil); err == nil || !isDialError(err) {
		t.Fatalf("err %v", err)
	}
}

// Idle connections are closed by a sweep once they are older than idleFor, and by close.
func TestConnPoolSweepAndClose(t *testing.T) {
	rn := newRawNode(t, func(c net.Conn, req *http.Request, body string, n int) bool {
		_, _ = io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
		return true
	})
	p := newConnPool()
	p.idleFor = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if st, _, err := p.post(ctx, rn.host(), "/", nil); err != nil || st != 204 {
		t.Fatalf("%d %v", st, err)
	}
	if p.idleCount() != 1 {
		t.Fatal("not kept")
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.idleCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection never swept")
		}
		time.Sleep(10 * time.Millisecond)
		p.sweep()
	}
	p.idleFor = time.Minute
	if _, _, err := p.post(ctx, rn.host(), "/", nil); err != nil {
		t.Fatal(err)
	}
	p.close()
	if p.idleCount() != 0 {
		t.Fatal("close kept a connection")
	}
	if _, _, err := p.post(ctx, rn.host(), "/", nil); err != nil || p.idleCount() != 0 {
		t.Fatalf("after close: %v, idle %d", err, p.idleCount())
	}
}

// A call whose context has already ended sends nothing (the node must not run it) and leaves the
// kept-alive connection in the pool.
func TestConnPoolSendsNothingForAnEndedContext(t *testing.T) {
	rn := newRawNode(t, func(c net.Conn, req *http.Request, body string, n int) bool {
		_, _ = io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
		return true
	})
	p := newConnPool()
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := p.post(ctx, rn.host(), "/", nil); err != nil {
		t.Fatal(err)
	}
	<-rn.bodies
	ended, end := context.WithCancel(context.Background())
	end()
	for i := 0; i < 50; i++ {
		if _, _, err := p.post(ended, rn.host(), "/", nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("ended context: %v", err)
		}
	}
	past, stop := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer stop()
	if _, _, err := p.post(past, rn.host(), "/", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("past deadline: %v", err)
	}
	if st, _, err := p.post(ctx, rn.host(), "/", nil); err != nil || st != 204 {
		t.Fatalf("after: %d %v", st, err)
	}
	<-rn.bodies
	if n := len(rn.bodies); n != 0 {
		t.Fatalf("the node got %d requests of ended calls", n)
	}
	if n := rn.accepted.Load(); n != 1 {
		t.Fatalf("connections: %d, want 1 (kept)", n)
	}
}

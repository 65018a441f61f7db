package gilmour

// nodeconn.go: the HTTP/1.1 calls of service handlers and lambda steps on kept-alive connections
// that the calling goroutine drives itself. net/http's Transport runs a writer and a reader
// goroutine per connection and hands every call to both; here one goroutine writes the request,
// reads the answer (http.ReadResponse) and puts the connection back, and the call's deadline is
// the connection's deadline.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// connPool keeps idle connections to nodes, per host:port.
type connPool struct {
	dialer  net.Dialer
	maxIdle int           // per host
	idleFor time.Duration // an idle connection older than this is closed instead of used

	mu     sync.Mutex
	idle   map[string][]*nodeConn
	closed bool
}

type nodeConn struct {
	c      net.Conn
	budget budgetReader // what the reader may still take for the current call
	br     *bufio.Reader
	wb     []byte
	last   time.Time // when it went idle
}

// budgetReader reads from r while n > 0: one answer (headers and body) cannot make the proxy
// read without end.
type budgetReader struct {
	r io.Reader
	n int64
}

var errAnswerTooLarge = errors.New("node answer too large")

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, errAnswerTooLarge
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	return n, err
}

// maxAnswerHeader bounds the status line and headers of a node's answer (net/http's default
// MaxResponseHeaderBytes is 10 MiB; a node has no business sending more than this).
const maxAnswerHeader = 1 << 20

// idleReuse is how long a kept-alive connection may stay idle in the pool. Before one is used,
// its socket is looked at (unusable), so that a connection the node closed meanwhile is not
// used; what remains is the race net/http has too: the node closing just as the request leaves.
const idleReuse = 30 * time.Second

func newConnPool() *connPool {
	return &connPool{
		dialer:  net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle: 256, idleFor: idleReuse, idle: map[string][]*nodeConn{},
	}
}

// get returns an idle connection to host (reused=true) or dials a new one.
func (p *connPool) get(ctx context.Context, host string) (nc *nodeConn, reused bool, err error) {
	now := time.Now()
	p.mu.Lock()
	for l := p.idle[host]; len(l) > 0; l = p.idle[host] {
		nc = l[len(l)-1]
		l[len(l)-1] = nil
		p.idle[host] = l[:len(l)-1]
		if now.Sub(nc.last) < p.idleFor {
			p.mu.Unlock()
			if !unusable(nc.c) {
				return nc, true, nil
			}
			nc.c.Close()
			p.mu.Lock()
			continue
		}
		nc.c.Close()
	}
	if len(p.idle[host]) == 0 {
		delete(p.idle, host)
	}
	p.mu.Unlock()
	c, err := p.dialer.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, false, err
	}
	nc = &nodeConn{c: c, budget: budgetReader{r: c}}
	nc.br = bufio.NewReaderSize(&nc.budget, 4096)
	return nc, false, nil
}

// put keeps nc for the next call to host (what stays idle too long is closed by sweep).
func (p *connPool) put(host string, nc *nodeConn) {
	nc.last = time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.idle[host]) >= p.maxIdle {
		nc.c.Close()
		return
	}
	p.idle[host] = append(p.idle[host], nc)
}

// sweep closes the connections idle for longer than they may be used (nodes that went quiet or
// away); the health loop runs it on every tick.
func (p *connPool) sweep() {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for h, l := range p.idle {
		keep := l[:0]
		for _, nc := range l {
			if now.Sub(nc.last) < p.idleFor {
				keep = append(keep, nc)
			} else {
				nc.c.Close()
			}
		}
		clear(l[len(keep):])
		if len(keep) == 0 {
			delete(p.idle, h)
		} else {
			p.idle[h] = keep
		}
	}
}

// idleCount is the number of idle connections kept (for tests).
func (p *connPool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.idle {
		n += len(l)
	}
	return n
}

// close closes every idle connection and keeps no more; connections in use are closed when
// their call ends.
func (p *connPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for h, l := range p.idle {
		for _, nc := range l {
			nc.c.Close()
		}
		delete(p.idle, h)
	}
}

var longAgo = time.Unix(1, 0)

// post sends body to http://host+uri and returns the status and the answer (at most
// maxNodeAnswer bytes of it). The call's deadline is the connection's; when the context ends
// first the connection is closed (the node sees its caller go away). A request that could not
// be written at all on a kept-alive connection is sent once more on a new one; one that was
// written is never sent twice (the node may have run it), as with net/http for a POST.
func (p *connPool) post(ctx context.Context, host, uri string, body []byte) (int, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err // never sent once the caller has given up (net/http does the same)
	}
	status, data, err, unsent := p.postOnce(ctx, host, uri, body)
	if unsent && ctx.Err() == nil && !pastDeadline(ctx) {
		status, data, err, _ = p.postOnce(ctx, host, uri, body)
	}
	return status, data, err
}

// pastDeadline reports a context whose deadline has come (before its timer has marked it done).
func pastDeadline(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// postOnce is one attempt; unsent says that nothing was written to a reused connection.
func (p *connPool) postOnce(ctx context.Context, host, uri string, body []byte) (status int, data []byte, err error, unsent bool) {
	nc, reused, err := p.get(ctx, host)
	if err != nil {
		return 0, nil, err, false
	}
	if err := ctx.Err(); err != nil { // ended while dialling: the connection stays unused
		p.put(host, nc)
		return 0, nil, err, false
	}
	dl, _ := ctx.Deadline()
	if err := nc.c.SetDeadline(dl); err != nil {
		nc.c.Close()
		return 0, nil, err, false
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.c.SetDeadline(longAgo) })
	fail := func(err error) error {
		stop()
		nc.c.Close()
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && pastDeadline(ctx) {
			return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
		}
		return err
	}
	w := append(nc.wb[:0], "POST "...)
	w = append(w, uri...)
	w = append(w, " HTTP/1.1\r\nHost: "...)
	w = append(w, host...)
	w = append(w, "\r\nUser-Agent: jetbridge\r\nContent-Type: application/json\r\nContent-Length: "...)
	w = strconv.AppendInt(w, int64(len(body)), 10)
	w = append(w, "\r\n\r\n"...)
	w = append(w, body...)
	if cap(w) <= 64<<10 {
		nc.wb = w[:0]
	}
	if n, err := nc.c.Write(w); err != nil {
		return 0, nil, fail(err), reused && n == 0
	}
	nc.budget.n = maxAnswerHeader // status lines and headers, 1xx answers included
	var resp *http.Response
	for {
		if resp, err = http.ReadResponse(nc.br, nil); err != nil {
			return 0, nil, fail(fmt.Errorf("read answer: %w", err)), false
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx (e.g. 103 Early Hints): the answer follows
	}
	// the body: at most maxNodeAnswer bytes are kept; chunk framing gets the header allowance
	nc.budget.n = maxNodeAnswer + maxAnswerHeader
	data, err = io.ReadAll(io.LimitReader(resp.Body, maxNodeAnswer))
	if err != nil {
		return 0, nil, fail(fmt.Errorf("read answer: %w", err)), false
	}
	var one [1]byte
	if n, err := resp.Body.Read(one[:]); n > 0 || err != io.EOF || resp.StatusCode == http.StatusSwitchingProtocols {
		// longer than maxNodeAnswer (kept truncated, as before), a broken end, or not HTTP any
		// more: the connection is not reusable (and Close would read the rest of the body)
		stop()
		nc.c.Close()
		return resp.StatusCode, data, nil, false
	}
	resp.Body.Close()
	if !stop() || resp.Close || nc.br.Buffered() > 0 || nc.c.SetDeadline(time.Time{}) != nil {
		nc.c.Close() // the context ended meanwhile, the node closes, or it sent more than one answer
	} else {
		p.put(host, nc)
	}
	return resp.StatusCode, data, nil, false
}

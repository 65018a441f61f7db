// Package ztclient is a minimal ZeroTask client in Go: a ZMTP 3.1 REQ socket (one JSON-RPC request
// per frame, lockstep like pyzmq's) and a SUB socket for the broker's notifications. It exists for
// jetbridge's tests and load generator; it speaks the same bytes as the original Python client.
package ztclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
)

// maxFrame bounds frames read from the broker.
const maxFrame = 16 << 20

// conn is one ZMTP connection after the handshake.
type conn struct {
	c   net.Conn
	br  *bufio.Reader
	hdr [9]byte // frame header being read
}

func dial(ctx context.Context, addr, socketType string) (*conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	cn := &conn{c: c, br: bufio.NewReaderSize(c, 64<<10)}
	out := zmtp.AppendGreeting(nil, zmtp.Greeting{Major: 3, Minor: 1, Mechanism: zmtp.MechanismNull})
	out = append(out, zmtp.ReadyFrame(zmtp.Metadata{{Name: zmtp.PropSocketType, Value: []byte(socketType)}})...)
	if _, err := c.Write(out); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting to %s: %w", addr, err)
	}
	g := make([]byte, zmtp.GreetingSize)
	if _, err := io.ReadFull(cn.br, g); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting from %s: %w", addr, err)
	}
	if _, err := zmtp.ParseGreeting(g); err != nil {
		c.Close()
		return nil, err
	}
	f, err := cn.readFrame()
	if err != nil || !f.IsCommand() {
		c.Close()
		return nil, fmt.Errorf("ready from %s: %v", addr, err)
	}
	_ = c.SetDeadline(time.Time{})
	return cn, nil
}

func (cn *conn) readFrame() (zmtp.Frame, error) { return cn.readFrameInto(nil) }

// readFrameInto reads a frame whose body goes into buf when it fits (the body is then valid
// until buf is used again).
func (cn *conn) readFrameInto(buf []byte) (zmtp.Frame, error) {
	h, err := cn.br.Peek(1)
	if err != nil {
		return zmtp.Frame{}, err
	}
	hdr := cn.hdr[:zmtp.FrameHeaderLen(h[0])]
	if _, err := io.ReadFull(cn.br, hdr); err != nil {
		return zmtp.Frame{}, err
	}
	fl, n, err := zmtp.ParseFrameHeader(hdr, maxFrame)
	if err != nil {
		return zmtp.Frame{}, err
	}
	var body []byte
	if uint64(cap(buf)) >= n {
		body = buf[:n]
	} else {
		body = make([]byte, n)
	}
	if _, err := io.ReadFull(cn.br, body); err != nil {
		return zmtp.Frame{}, err
	}
	return zmtp.Frame{Flags: fl, Body: body}, nil
}

// readMessage reads one multipart message, answering PINGs on the way.
func (cn *conn) readMessage(wmu *sync.Mutex) ([][]byte, error) {
	var frames [][]byte
	for {
		f, err := cn.readFrame()
		if err != nil {
			return nil, err
		}
		if f.IsCommand() {
			cn.command(f, wmu)
			continue
		}
		frames = append(frames, f.Body)
		if !f.More() {
			return frames, nil
		}
	}
}

// command answers a PING.
func (cn *conn) command(f zmtp.Frame, wmu *sync.Mutex) {
	cmd, err := zmtp.ParseCommand(f.Body)
	if err != nil || cmd.Name != zmtp.CmdPing {
		return
	}
	if _, pctx, err := zmtp.ParsePing(cmd.Data); err == nil {
		wmu.Lock()
		_, _ = cn.c.Write(zmtp.PongFrame(pctx))
		wmu.Unlock()
	}
}

// Error is a JSON-RPC error returned by the broker.
type Error struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *Error) Error() string { return fmt.Sprintf("zerotask error %d: %s", e.Code, e.Message) }

// Req is a REQ socket: one request, then its reply. While the socket is idle, a goroutine answers
// the broker's heartbeat PINGs.
type Req struct {
	cn   *conn
	wmu  sync.Mutex // writes
	mu   sync.Mutex // reads: a round trip or the idle PING check
	rdl  time.Time  // the connection's read deadline (zero: none), under mu
	seq  atomic.Uint64
	out  []byte // send buffer, under wmu
	req  []byte // request buffer of CallRaw, under mu
	suf  []byte // expected reply suffix of CallRaw, under mu
	rbuf []byte // reply buffer of CallRaw, under mu
	done chan struct{}
	once sync.Once
}

// DialReq connects a REQ socket to the broker's ROUTER address.
func DialReq(ctx context.Context, addr string) (*Req, error) {
	cn, err := dial(ctx, addr, zmtp.TypeReq)
	if err != nil {
		return nil, err
	}
	r := &Req{cn: cn, done: make(chan struct{}), rbuf: make([]byte, 0, 4096)}
	go r.idle()
	return r, nil
}

// idle answers PINGs that arrive while no round trip is reading.
func (r *Req) idle() {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-t.C:
		}
		if !r.mu.TryLock() {
			continue
		}
		for {
			_ = r.cn.c.SetReadDeadline(time.Now().Add(time.Millisecond))
			_, err := r.cn.br.Peek(1)
			_ = r.cn.c.SetReadDeadline(time.Time{})
			r.rdl = time.Time{}
			if err != nil {
				break
			}
			f, err := r.cn.readFrame()
			if err != nil {
				break
			}
			if f.IsCommand() {
				r.cn.command(f, &r.wmu)
			}
		}
		r.mu.Unlock()
	}
}

// Close closes the socket.
func (r *Req) Close() error {
	r.once.Do(func() { close(r.done) })
	return r.cn.c.Close()
}

// Roundtrip sends one frame and returns the reply frame (REQ lockstep).
func (r *Req) Roundtrip(ctx context.Context, frame []byte) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.roundtrip(ctx, frame, false)
}

// deadlineSlack is how much earlier than the request's deadline a read may time out: the
// connection's deadline is moved only when it is off by more, not on every request.
const deadlineSlack = time.Second

// roundtrip is Roundtrip under r.mu; with reuse set the reply is read into r.rbuf.
func (r *Req) roundtrip(ctx context.Context, frame []byte, reuse bool) ([]byte, error) {
	if dl, ok := ctx.Deadline(); ok {
		if r.rdl.IsZero() || r.rdl.After(dl) || dl.Sub(r.rdl) > deadlineSlack {
			_ = r.cn.c.SetReadDeadline(dl)
			r.rdl = dl
		}
	} else if !r.rdl.IsZero() {
		_ = r.cn.c.SetReadDeadline(time.Time{})
		r.rdl = time.Time{}
	}
	r.wmu.Lock()
	r.out = zmtp.AppendMessage(r.out[:0], [][]byte{{}, frame})
	_, err := r.cn.c.Write(r.out)
	r.wmu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	if reuse {
		return r.readReply()
	}
	msg, err := r.cn.readMessage(&r.wmu)
	if err != nil {
		return nil, fmt.Errorf("recv: %w", err)
	}
	if len(msg) != 2 || len(msg[0]) != 0 {
		return nil, fmt.Errorf("reply of %d frames, not [\"\", body]", len(msg))
	}
	return msg[1], nil
}

// readReply reads a REQ reply, ["", body], into r.rbuf (valid until the next round trip).
func (r *Req) readReply() ([]byte, error) {
	var frames [2][]byte
	n := 0
	for {
		f, err := r.cn.readFrameInto(r.rbuf[:0])
		if err != nil {
			return nil, fmt.Errorf("recv: %w", err)
		}
		if f.IsCommand() {
			r.cn.command(f, &r.wmu)
			continue
		}
		if n < 2 {
			frames[n] = f.Body
		}
		n++
		if len(f.Body) > 0 && cap(f.Body) > cap(r.rbuf) {
			r.rbuf = f.Body[:0] // (a frame larger than the buffer: keep its buffer)
		}
		if !f.More() {
			break
		}
	}
	if n != 2 || len(frames[0]) != 0 {
		return nil, fmt.Errorf("reply of %d frames, not [\"\", body]", n)
	}
	return frames[1], nil
}

// Call sends a request with a fresh id and decodes its result into out (when not nil). A
// JSON-RPC error is returned as *Error.
func (r *Req) Call(ctx context.Context, method string, params, out any) error {
	id := strconv.AppendUint([]byte(`"go`), r.seq.Add(1), 10)
	id = append(id, '"')
	frame, err := appendRequest(make([]byte, 0, 128), method, params, id)
	if err != nil {
		return err
	}
	rep, err := r.Roundtrip(ctx, frame)
	if err != nil {
		return err
	}
	// The broker's usual success reply, {"jsonrpc": "2.0", "result": R, "id": ID}, is taken
	// apart without a generic decoder; anything else goes through encoding/json.
	if res, ok := bytes.CutPrefix(rep, resultPrefix); ok {
		if res, ok = bytes.CutSuffix(res, append(append([]byte(`, "id": `), id...), '}')); ok && json.Valid(res) {
			if out != nil {
				return json.Unmarshal(res, out)
			}
			return nil
		}
	}
	var resp struct {
		Result json.RawMessage `json:"result"`
		Error  *Error          `json:"error"`
		ID     json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(rep, &resp); err != nil {
		return fmt.Errorf("reply %q: %w", rep, err)
	}
	if resp.Error != nil {
		return resp.Error
	}
	if !bytes.Equal(resp.ID, id) {
		return fmt.Errorf("reply id %s, want %s", resp.ID, id)
	}
	if out != nil {
		return json.Unmarshal(resp.Result, out)
	}
	return nil
}

var resultPrefix = []byte(`{"jsonrpc": "2.0", "result": `)

// CallRaw is Call for load generators: params is the JSON of the params and the result comes
// back as raw JSON (valid only until the next call on r), without a generic encoder or decoder
// on the usual path.
func (r *Req) CallRaw(ctx context.Context, method string, params []byte) (json.RawMessage, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.seq.Add(1)
	q := append(r.req[:0], `{"jsonrpc": "2.0", "method": `...)
	q = strconv.AppendQuote(q, method)
	q = append(q, `, "params": `...)
	q = append(q, params...)
	q = append(q, `, "id": "go`...)
	idAt := len(q) - 3
	q = strconv.AppendUint(q, n, 10)
	q = append(q, '"')
	id := q[idAt:]
	q = append(q, '}')
	r.req = q
	rep, err := r.roundtrip(ctx, q, true)
	if err != nil {
		return nil, err
	}
	if res, ok := bytes.CutPrefix(rep, resultPrefix); ok {
		suffix := append(append(r.suf[:0], `, "id": `...), id...)
		r.suf = append(suffix, '}')
		if res, ok = bytes.CutSuffix(res, r.suf); ok {
			return res, nil
		}
	}
	var resp struct {
		Result json.RawMessage `json:"result"`
		Error  *Error          `json:"error"`
		ID     json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(rep, &resp); err != nil {
		return nil, fmt.Errorf("reply %q: %w", rep, err)
	}
	if resp.Error != nil {
		return nil, resp.Error
	}
	if !bytes.Equal(resp.ID, id) {
		return nil, fmt.Errorf("reply id %s, want %s", resp.ID, id)
	}
	return resp.Result, nil
}

// appendRequest appends a JSON-RPC request (a notification when id is nil).
func appendRequest(dst []byte, method string, params any, id []byte) ([]byte, error) {
	m, err := json.Marshal(method)
	if err != nil {
		return nil, err
	}
	p, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	dst = append(dst, `{"jsonrpc": "2.0", "method": `...)
	dst = append(dst, m...)
	dst = append(dst, `, "params": `...)
	dst = append(dst, p...)
	if id != nil {
		dst = append(dst, `, "id": `...)
		dst = append(dst, id...)
	}
	return append(dst, '}'), nil
}

// Notify sends a notification (no id); the broker answers null.
func (r *Req) Notify(ctx context.Context, method string, params any) error {
	frame, err := appendRequest(nil, method, params, nil)
	if err != nil {
		return err
	}
	rep, err := r.Roundtrip(ctx, frame)
	if err != nil {
		return err
	}
	if string(rep) != "null" {
		return fmt.Errorf("notification answered %q, want null", rep)
	}
	return nil
}

// Sub is a SUB socket subscribed to everything.
type Sub struct {
	cn   *conn
	wmu  sync.Mutex
	C    <-chan []byte
	done chan struct{}
	once sync.Once
}

// DialSub connects a SUB socket to the broker's PUB address, subscribes to "" and delivers every
// message's first frame on C (closed when the connection ends).
func DialSub(ctx context.Context, addr string) (*Sub, error) {
	cn, err := dial(ctx, addr, zmtp.TypeSub)
	if err != nil {
		return nil, err
	}
	if _, err := cn.c.Write(zmtp.SubscribeFrame(nil, false)); err != nil {
		cn.c.Close()
		return nil, err
	}
	ch := make(chan []byte, 1024)
	s := &Sub{cn: cn, C: ch, done: make(chan struct{})}
	go func() {
		defer close(ch)
		for {
			msg, err := cn.readMessage(&s.wmu)
			if err != nil {
				return
			}
			select {
			case ch <- msg[0]:
			case <-s.done:
				return
			}
		}
	}()
	return s, nil
}

// Close closes the socket.
func (s *Sub) Close() error {
	s.once.Do(func() { close(s.done) })
	return s.cn.c.Close()
}

// Notification is a decoded notification from the PUB socket.
type Notification struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
}

// Wait returns the first notification for which match returns true.
func (s *Sub) Wait(ctx context.Context, match func(Notification) bool) (Notification, error) {
	for {
		select {
		case <-ctx.Done():
			return Notification{}, ctx.Err()
		case raw, ok := <-s.C:
			if !ok {
				return Notification{}, errors.New("subscription closed")
			}
			var n Notification
			if json.Unmarshal(raw, &n) == nil && match(n) {
				return n, nil
			}
		}
	}
}

package zmtp

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by the server sockets.
var (
	ErrClosed            = errors.New("zmtp: listener closed")
	ErrUnknownPeer       = errors.New("zmtp: unknown peer")
	ErrWouldBlock        = errors.New("zmtp: peer send queue full")
	ErrEmptyMessage      = errors.New("zmtp: empty message")
	ErrDuplicateIdentity = errors.New("zmtp: duplicate identity")
	ErrHeartbeatTimeout  = errors.New("zmtp: heartbeat timeout")
	ErrProtocol          = errors.New("zmtp: protocol violation")
)

// EventKind tells connect from disconnect.
type EventKind int

// Event kinds.
const (
	PeerConnected EventKind = iota + 1
	PeerDisconnected
)

func (k EventKind) String() string {
	switch k {
	case PeerConnected:
		return "connected"
	case PeerDisconnected:
		return "disconnected"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// PeerEvent reports a peer that completed its handshake (PeerConnected) or
// that went away (PeerDisconnected). Every PeerConnected is followed by
// exactly one PeerDisconnected for the same Peer (unless dropped because
// the Events channel was full).
type PeerEvent struct {
	Kind       EventKind
	Peer       []byte // routing id (ROUTER) or generated id (PUB); do not modify
	SocketType string // peer's Socket-Type, e.g. "DEALER"
	RemoteAddr net.Addr
	Err        error // why a peer was disconnected; nil when it closed cleanly
}

// socketHooks specialise a listener into ROUTER or PUB.
type socketHooks interface {
	localType() string
	localMetadata() Metadata
	admit(p *peer, identity []byte) error
	remove(p *peer)
	deliver(p *peer, frames [][]byte) error
	command(p *peer, cmd Command) error
}

type listener struct {
	opts   Options
	log    *slog.Logger
	m      *metrics
	ln     net.Listener
	hooks  socketHooks
	closed chan struct{}
	once   sync.Once
	stop   func() bool // unregisters the context's AfterFunc; guarded by mu
	wg     sync.WaitGroup
	events chan PeerEvent
	nextID atomic.Uint32
	// lastWarn (unix ns) rate-limits handshake refusal warnings.
	lastWarn atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{} // every open connection, handshaking or not
	shut  bool
}

// parseEndpoint accepts "host:port" and ZeroMQ-style "tcp://host:port"
// ("*" meaning every interface).
func parseEndpoint(addr string) (string, error) {
	if i := strings.Index(addr, "://"); i >= 0 {
		if addr[:i] != "tcp" {
			return "", fmt.Errorf("zmtp: endpoint %q: only tcp:// is supported", addr)
		}
		addr = addr[i+3:]
	}
	if strings.HasPrefix(addr, "*:") {
		addr = addr[1:]
	}
	return addr, nil
}

func newListener(ctx context.Context, addr string, opts Options, hooks socketHooks) (*listener, error) {
	hostport, err := parseEndpoint(addr)
	if err != nil {
		return nil, err
	}
	opts, err = opts.withDefaults(addr)
	if err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", hostport)
	if err != nil {
		return nil, fmt.Errorf("zmtp listen %s: %w", addr, err)
	}
	return wrapListener(ln, opts, hooks), nil
}

// wrapListener makes a listener of an already bound net.Listener; opts must have its defaults.
func wrapListener(ln net.Listener, opts Options, hooks socketHooks) *listener {
	l := &listener{
		opts:   opts,
		log:    opts.Logger.With("listener", opts.Name, "socket", hooks.localType()),
		m:      newMetrics(opts.Registerer, opts.Name),
		ln:     ln,
		hooks:  hooks,
		closed: make(chan struct{}),
		events: make(chan PeerEvent, opts.EventBuffer),
		conns:  map[net.Conn]struct{}{},
	}
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	l.nextID.Store(binary.BigEndian.Uint32(seed[:]))
	return l
}

// start launches the accept loop; the socket must be fully wired to l
// (its hooks may be called from now on).
func (l *listener) start(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { _ = l.close() })
	l.mu.Lock()
	l.stop = stop
	l.mu.Unlock()
	l.wg.Add(1)
	go l.acceptLoop()
	l.log.Info("zmtp listening", "addr", l.ln.Addr().String())
}

func (l *listener) acceptLoop() {
	defer l.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closed:
				return
			default:
			}
			l.log.Warn("zmtp accept failed", "err", err, "retry_in", backoff)
			select {
			case <-l.closed:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		l.m.connections.Inc()
		l.mu.Lock()
		if l.shut {
			l.mu.Unlock()
			_ = c.Close()
			return
		}
		l.conns[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.serve(c)
	}
}

func (l *listener) close() error {
	var err error
	l.once.Do(func() {
		l.mu.Lock()
		stop := l.stop
		l.mu.Unlock()
		if stop != nil {
			stop()
		}
		close(l.closed)
		err = l.ln.Close()
		l.mu.Lock()
		l.shut = true
		for c := range l.conns {
			_ = c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
		close(l.events)
		l.log.Info("zmtp listener closed")
	})
	return err
}

func (l *listener) emit(ev PeerEvent) {
	select {
	case l.events <- ev:
	default:
		l.m.dropped.Inc()
		l.log.Warn("zmtp events channel full, event dropped", "event", ev.Kind.String(), "peer", fmt.Sprintf("%x", ev.Peer))
	}
}

func (l *listener) newRoutingID() []byte {
	v := l.nextID.Add(1)
	return []byte{0, byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// serve owns one connection: handshake, then the reader loop; it starts
// the writer and waits for nothing else (the listener WaitGroup does).
func (l *listener) serve(c net.Conn) {
	defer l.wg.Done()
	defer func() {
		_ = c.Close()
		l.mu.Lock()
		delete(l.conns, c)
		l.mu.Unlock()
	}()
	cr := &connReader{c: c}
	p, br, err := l.handshake(c, cr)
	if err != nil {
		l.m.handshakeFailures.Inc()
		// Refusals are worth a warning, but a refused libzmq client retries
		// every 100 ms: at most one warning per second per listener.
		lvl := slog.LevelDebug
		if errors.Is(err, ErrDuplicateIdentity) || errors.Is(err, ErrSocketType) || errors.Is(err, ErrMechanism) {
			now := time.Now().UnixNano()
			if last := l.lastWarn.Load(); now-last >= int64(time.Second) && l.lastWarn.CompareAndSwap(last, now) {
				lvl = slog.LevelWarn
			}
		}
		l.log.Log(context.Background(), lvl, "zmtp handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	cr.p = p
	if l.opts.HeartbeatInterval > 0 {
		cr.track = true
		p.lastRecv.Store(time.Now().UnixNano())
	}
	l.m.peers.Inc()
	l.wg.Add(1)
	go p.writeLoop()
	l.log.Debug("zmtp peer connected", "peer", fmt.Sprintf("%x", p.id), "type", p.socketType, "remote", p.remote.String(), "zmtp", fmt.Sprintf("3.%d", p.minor))
	l.emit(PeerEvent{Kind: PeerConnected, Peer: p.id, SocketType: p.socketType, RemoteAddr: p.remote})

	rerr := p.readLoop(br)
	p.close(rerr)
	reason := p.reason()
	select {
	case <-l.closed:
		reason = ErrClosed
	default:
	}
	l.log.Debug("zmtp peer disconnected", "peer", fmt.Sprintf("%x", p.id), "remote", p.remote.String(), "err", reason)
	// Emit before freeing the routing id: a reconnect with the same
	// identity is admitted only after removal, so its PeerConnected always
	// follows this PeerDisconnected on the channel.
	l.emit(PeerEvent{Kind: PeerDisconnected, Peer: p.id, SocketType: p.socketType, RemoteAddr: p.remote, Err: reason})
	l.hooks.remove(p)
	l.m.peers.Dec()
}

// handshake runs the greeting and NULL-mechanism READY exchange under the
// handshake deadline. The server sends its greeting at once, then waits
// for the client's READY before answering with READY (or ERROR when the
// peer is refused), as RFC 27 orders it.
//
// The greeting is read unbuffered, so that a connection that never gets
// past it (a port scanner, a silent client) costs no read buffer.
func (l *listener) handshake(c net.Conn, cr *connReader) (*peer, *bufio.Reader, error) {
	_ = c.SetDeadline(time.Now().Add(l.opts.HandshakeTimeout))
	if _, err := c.Write(AppendGreeting(nil, Greeting{Major: VersionMajor, Minor: VersionMinor, Mechanism: MechanismNull})); err != nil {
		return nil, nil, fmt.Errorf("send greeting: %w", err)
	}
	var gb [GreetingSize]byte
	if _, err := io.ReadFull(cr, gb[:11]); err != nil {
		return nil, nil, fmt.Errorf("read greeting: %w", err)
	}
	if _, err := ParseGreeting(gb[:11]); err != nil && !errors.Is(err, ErrTruncated) {
		return nil, nil, err
	}
	if _, err := io.ReadFull(cr, gb[11:]); err != nil {
		return nil, nil, fmt.Errorf("read greeting: %w", err)
	}
	g, err := ParseGreeting(gb[:])
	if err != nil {
		return nil, nil, err
	}
	if err := CheckGreeting(g); err != nil {
		_, _ = c.Write(ErrorFrame("unsupported mechanism"))
		return nil, nil, err
	}
	minor := byte(VersionMinor)
	if g.Major == 3 && g.Minor < minor {
		minor = g.Minor
	}
	br := bufio.NewReaderSize(cr, 32<<10)
	p := &peer{l: l, conn: c, remote: c.RemoteAddr(), minor: minor, done: make(chan struct{})}
	p.q.init(l.opts.SendHWM)

	f, err := p.readFrame(br, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("read READY: %w", err)
	}
	if !f.IsCommand() {
		return nil, nil, fmt.Errorf("message before READY: %w", ErrProtocol)
	}
	cmd, err := ParseCommand(f.Body)
	if err != nil {
		return nil, nil, err
	}
	switch cmd.Name {
	case CmdReady:
	case CmdError:
		reason, _ := ParseErrorReason(cmd.Data)
		return nil, nil, fmt.Errorf("peer sent ERROR %q: %w", reason, ErrProtocol)
	default:
		return nil, nil, fmt.Errorf("command %q before READY: %w", cmd.Name, ErrProtocol)
	}
	md, err := ParseMetadata(cmd.Data)
	if err != nil {
		return nil, nil, err
	}
	st, ok := md.Get(PropSocketType)
	if !ok {
		_, _ = c.Write(ErrorFrame("missing Socket-Type"))
		return nil, nil, fmt.Errorf("READY without Socket-Type: %w", ErrBadMetadata)
	}
	p.socketType = string(st)
	if !Compatible(l.hooks.localType(), p.socketType) {
		_, _ = c.Write(ErrorFrame("invalid socket type"))
		return nil, nil, fmt.Errorf("peer %q on %s: %w", p.socketType, l.hooks.localType(), ErrSocketType)
	}
	identity, _ := md.Get(PropIdentity)
	if len(identity) > MaxIdentity {
		_, _ = c.Write(ErrorFrame("identity too long"))
		return nil, nil, fmt.Errorf("identity of %d bytes: %w", len(identity), ErrBadMetadata)
	}
	if err := l.hooks.admit(p, identity); err != nil {
		_, _ = c.Write(ErrorFrame(err.Error()))
		return nil, nil, err
	}
	if _, err := c.Write(ReadyFrame(l.hooks.localMetadata())); err != nil {
		l.hooks.remove(p)
		return nil, nil, fmt.Errorf("send READY: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return p, br, nil
}

// connReader refreshes the read deadline from the peer's PING TTL before
// every read and records when bytes last arrived.
type connReader struct {
	c     net.Conn
	p     *peer
	track bool
}

func (r *connReader) Read(b []byte) (int, error) {
	if r.p != nil {
		if ttl := r.p.ttl.Load(); ttl > 0 {
			_ = r.c.SetReadDeadline(time.Now().Add(time.Duration(ttl)))
		}
	}
	n, err := r.c.Read(b)
	if n > 0 && r.track {
		r.p.lastRecv.Store(time.Now().UnixNano())
	}
	return n, err
}

type outItem struct {
	buf    []byte
	frames int
}

// sendQueue is a bounded FIFO of encoded messages plus an unbounded-but-
// small lane for control frames (PONG, PING) that jump the queue.
type sendQueue struct {
	mu     sync.Mutex
	items  []outItem
	ctrl   [][]byte
	hwm    int
	notify chan struct{}
}

const maxCtrl = 16

func (q *sendQueue) init(hwm int) {
	q.hwm = hwm
	q.notify = make(chan struct{}, 1)
}

func (q *sendQueue) wake() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

func (q *sendQueue) push(it outItem) bool {
	q.mu.Lock()
	if len(q.items) >= q.hwm {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, it)
	q.mu.Unlock()
	q.wake()
	return true
}

func (q *sendQueue) pushCtrl(b []byte) bool {
	q.mu.Lock()
	if len(q.ctrl) >= maxCtrl {
		q.mu.Unlock()
		return false
	}
	q.ctrl = append(q.ctrl, b)
	q.mu.Unlock()
	q.wake()
	return true
}

// take swaps the pending lanes with the given (emptied) buffers.
func (q *sendQueue) take(ctrl [][]byte, items []outItem) ([][]byte, []outItem) {
	q.mu.Lock()
	c, it := q.ctrl, q.items
	q.ctrl, q.items = ctrl[:0], items[:0]
	q.mu.Unlock()
	return c, it
}

// peer is one connection after its handshake.
type peer struct {
	l          *listener
	conn       net.Conn
	id         []byte
	key        string
	socketType string
	remote     net.Addr
	minor      byte
	q          sendQueue
	done       chan struct{}
	closeOnce  sync.Once
	errMu      sync.Mutex
	err        error
	ttl        atomic.Int64 // peer's PING TTL in ns, 0 = none
	lastRecv   atomic.Int64 // unix ns, only with server heartbeats
	hdr        [9]byte

	subMu sync.RWMutex
	subs  map[string]int // PUB: subscription prefix → count
}

func (p *peer) close(err error) {
	p.closeOnce.Do(func() {
		p.errMu.Lock()
		p.err = err
		p.errMu.Unlock()
		close(p.done)
		_ = p.conn.Close()
	})
}

func (p *peer) reason() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	if errors.Is(p.err, io.EOF) {
		return nil
	}
	return p.err
}

// readFrame reads one frame. used is the payload already accumulated in
// the current message: a data frame may not take the total past
// MaxMessageSize. The size is checked before anything is allocated, and
// large bodies are read incrementally so that a claim alone costs nothing.
func (p *peer) readFrame(br *bufio.Reader, used int64) (Frame, error) {
	b0, err := br.ReadByte()
	if err != nil {
		return Frame{}, err
	}
	n := FrameHeaderLen(b0)
	p.hdr[0] = b0
	if _, err := io.ReadFull(br, p.hdr[1:n]); err != nil {
		return Frame{}, fmt.Errorf("frame header: %w", noEOF(err))
	}
	max := uint64(p.l.opts.MaxMessageSize)
	flags, size, err := ParseFrameHeader(p.hdr[:n], max)
	if err != nil {
		return Frame{}, err
	}
	if flags&FlagCommand == 0 && size > max-uint64(used) {
		return Frame{}, fmt.Errorf("message of more than %d bytes: %w", used+int64(size), ErrTooLarge)
	}
	var body []byte
	if size <= 64<<10 {
		body = make([]byte, size)
		if _, err := io.ReadFull(br, body); err != nil {
			return Frame{}, fmt.Errorf("frame body: %w", noEOF(err))
		}
	} else {
		body, err = io.ReadAll(io.LimitReader(br, int64(size)))
		if err == nil && uint64(len(body)) != size {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return Frame{}, fmt.Errorf("frame body: %w", err)
		}
	}
	p.l.m.framesIn.Inc()
	p.l.m.bytesIn.Add(float64(n) + float64(size))
	return Frame{Flags: flags, Body: body}, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readLoop reads messages and commands until the connection fails.
func (p *peer) readLoop(br *bufio.Reader) error {
	var frames [][]byte
	var used int64
	for {
		f, err := p.readFrame(br, used)
		if err != nil {
			if len(frames) > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && p.ttl.Load() > 0 {
				err = fmt.Errorf("nothing received within the peer's PING TTL: %w", ErrHeartbeatTimeout)
			}
			return err
		}
		if f.IsCommand() {
			if err := p.handleCommand(f.Body); err != nil {
				return err
			}
			continue
		}
		frames = append(frames, f.Body)
		used += int64(len(f.Body))
		if f.More() {
			if len(frames) >= MaxFramesPerMessage {
				return fmt.Errorf("message of more than %d frames: %w", MaxFramesPerMessage, ErrTooLarge)
			}
			continue
		}
		p.l.m.messagesIn.Inc()
		if err := p.l.hooks.deliver(p, frames); err != nil {
			return err
		}
		frames, used = nil, 0
	}
}

func (p *peer) handleCommand(body []byte) error {
	cmd, err := ParseCommand(body)
	if err != nil {
		return err
	}
	switch cmd.Name {
	case CmdPing:
		ttl, ctx, err := ParsePing(cmd.Data)
		if err != nil {
			return err
		}
		if ttl > 0 {
			p.ttl.Store(int64(ttl))
		}
		p.q.pushCtrl(PongFrame(ctx)) // a full control lane means PONGs are pending already
	case CmdPong:
	case CmdError:
		reason, _ := ParseErrorReason(cmd.Data)
		return fmt.Errorf("peer sent ERROR %q: %w", reason, ErrProtocol)
	case CmdReady:
		return fmt.Errorf("READY after handshake: %w", ErrProtocol)
	default:
		return p.l.hooks.command(p, cmd)
	}
	return nil
}

// writeLoop is the only writer of the connection once the handshake is
// done; it batches whatever is queued into one flush.
func (p *peer) writeLoop() {
	defer p.l.wg.Done()
	bw := bufio.NewWriterSize(p.conn, 64<<10)
	var tick <-chan time.Time
	o := p.l.opts
	if o.HeartbeatInterval > 0 && p.minor >= 1 {
		t := time.NewTicker(o.HeartbeatInterval)
		defer t.Stop()
		tick = t.C
	}
	var ctrl [][]byte
	var items []outItem
	for {
		select {
		case <-p.done:
			return
		case <-p.l.closed:
			p.close(ErrClosed)
			return
		case <-p.q.notify:
		case <-tick:
			if time.Since(time.Unix(0, p.lastRecv.Load())) > o.HeartbeatTimeout {
				p.close(fmt.Errorf("nothing received for %s: %w", o.HeartbeatTimeout, ErrHeartbeatTimeout))
				return
			}
			p.q.pushCtrl(PingFrame(o.HeartbeatTTL, nil))
		}
		ctrl, items = p.q.take(ctrl, items)
		var frames, msgs, bytes int
		for i, b := range ctrl {
			_, _ = bw.Write(b)
			frames++
			bytes += len(b)
			ctrl[i] = nil
		}
		for i, it := range items {
			_, _ = bw.Write(it.buf)
			frames += it.frames
			msgs++
			bytes += len(it.buf)
			items[i] = outItem{}
		}
		if err := bw.Flush(); err != nil {
			p.close(fmt.Errorf("write: %w", err))
			return
		}
		if frames > 0 {
			p.l.m.framesOut.Add(float64(frames))
			p.l.m.bytesOut.Add(float64(bytes))
			p.l.m.messagesOut.Add(float64(msgs))
		}
	}
}

// enqueue encodes frames once and queues them for p.
func encode(frames [][]byte) outItem {
	return outItem{buf: AppendMessage(make([]byte, 0, MessageWireSize(frames)), frames), frames: len(frames)}
}

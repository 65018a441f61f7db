package zmtp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
)

// Message is one multipart message received by a Router.
type Message struct {
	// Peer is the routing id of the sender: its Identity property, or a
	// generated 5-byte id (0x00 + uint32) when it announced none.
	// Shared and read-only.
	Peer []byte
	// Frames are the message parts as sent by the peer. A REQ peer's
	// request arrives as ["", body...].
	Frames [][]byte
}

// Envelope returns the frames up to and including the first empty
// delimiter frame (nil when there is none), see SplitEnvelope.
func (m Message) Envelope() [][]byte { e, _ := SplitEnvelope(m.Frames); return e }

// Body returns the frames after the envelope, see SplitEnvelope.
func (m Message) Body() [][]byte { _, b := SplitEnvelope(m.Frames); return b }

// SplitEnvelope splits frames at the first empty frame: envelope is every
// frame up to and including that delimiter, body the rest. Without a
// delimiter envelope is nil and body is frames. A REP-style service
// replies with Send(ctx, peer, append(envelope, reply...)...), or simply
// Router.Reply.
func SplitEnvelope(frames [][]byte) (envelope, body [][]byte) {
	for i, f := range frames {
		if len(f) == 0 {
			return frames[: i+1 : i+1], frames[i+1:]
		}
	}
	return nil, frames
}

// Router is a ZMTP ROUTER server socket. It accepts REQ, DEALER and ROUTER
// peers. All methods are safe for concurrent use.
type Router struct {
	l  *listener
	in chan Message

	mu    sync.RWMutex
	peers map[string]*peer
}

// Listen starts a ROUTER listening on addr ("host:port", ":0", or
// "tcp://*:5555"). The listener stops when ctx is done or Close is called.
func Listen(ctx context.Context, addr string, opts Options) (*Router, error) {
	r := &Router{peers: map[string]*peer{}}
	o, err := opts.withDefaults(addr)
	if err != nil {
		return nil, err
	}
	r.in = make(chan Message, o.RecvHWM)
	l, err := newListener(ctx, addr, opts, r)
	if err != nil {
		return nil, err
	}
	r.l = l
	l.start(ctx)
	return r, nil
}

// Addr is the address the Router listens on.
func (r *Router) Addr() net.Addr { return r.l.ln.Addr() }

// Events reports peers connecting and disconnecting. The channel is closed
// after Close. Events are dropped (and counted) when it is full.
func (r *Router) Events() <-chan PeerEvent { return r.l.events }

// Close stops listening, closes every peer and waits for all goroutines.
func (r *Router) Close() error { return r.l.close() }

// Recv returns the next message from any peer. It fails with ctx's error,
// or ErrClosed once the Router is closed.
func (r *Router) Recv(ctx context.Context) (Message, error) {
	select {
	case m := <-r.in:
		return m, nil
	case <-ctx.Done():
		return Message{}, ctx.Err()
	case <-r.l.closed:
		return Message{}, ErrClosed
	}
}

// Send queues a multipart message to the peer with routing id peer. It
// never blocks on the network: frames are encoded (copied) at once and
// written by the peer's writer goroutine, so the caller may reuse them.
// It returns an error wrapping ErrUnknownPeer when no such peer is
// connected, and ErrWouldBlock (the message is dropped and counted) when
// that peer's queue holds Options.SendHWM messages.
func (r *Router) Send(ctx context.Context, peer []byte, frames ...[]byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(frames) == 0 {
		return ErrEmptyMessage
	}
	select {
	case <-r.l.closed:
		return ErrClosed
	default:
	}
	r.mu.RLock()
	p := r.peers[string(peer)]
	r.mu.RUnlock()
	if p == nil {
		return fmt.Errorf("send to %x: %w", peer, ErrUnknownPeer)
	}
	select {
	case <-p.done:
		return fmt.Errorf("send to %x (disconnecting): %w", peer, ErrUnknownPeer)
	default:
	}
	if !p.q.push(encode(frames)) {
		r.l.m.dropped.Inc()
		return fmt.Errorf("send to %x: %w", peer, ErrWouldBlock)
	}
	return nil
}

// Reply answers req: it sends req's envelope (for a REQ peer the empty
// delimiter) followed by body to req.Peer.
func (r *Router) Reply(ctx context.Context, req Message, body ...[]byte) error {
	env := req.Envelope()
	frames := make([][]byte, 0, len(env)+len(body))
	frames = append(append(frames, env...), body...)
	return r.Send(ctx, req.Peer, frames...)
}

// Connected reports whether a peer with this routing id is connected
// (false as soon as it starts disconnecting).
func (r *Router) Connected(peer []byte) bool {
	r.mu.RLock()
	p := r.peers[string(peer)]
	r.mu.RUnlock()
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Peers returns the routing ids of the connected peers.
func (r *Router) Peers() [][]byte {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([][]byte, 0, len(r.peers))
	for _, p := range r.peers {
		out = append(out, p.id)
	}
	return out
}

// socketHooks implementation.

func (r *Router) localType() string { return TypeRouter }

func (r *Router) localMetadata() Metadata {
	return Metadata{{Name: PropSocketType, Value: []byte(TypeRouter)}, {Name: PropIdentity, Value: nil}}
}

func (r *Router) admit(p *peer, identity []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(identity) > 0 {
		if _, dup := r.peers[string(identity)]; dup {
			return fmt.Errorf("identity %q already connected: %w", identity, ErrDuplicateIdentity)
		}
		p.id = bytes.Clone(identity)
	} else {
		for {
			id := r.l.newRoutingID()
			if _, dup := r.peers[string(id)]; !dup {
				p.id = id
				break
			}
		}
	}
	p.key = string(p.id)
	r.peers[p.key] = p
	return nil
}

func (r *Router) remove(p *peer) {
	r.mu.Lock()
	if r.peers[p.key] == p {
		delete(r.peers, p.key)
	}
	r.mu.Unlock()
}

func (r *Router) deliver(p *peer, frames [][]byte) error {
	select {
	case r.in <- Message{Peer: p.id, Frames: frames}:
		return nil
	case <-p.done:
		return p.reasonOr(ErrClosed)
	case <-r.l.closed:
		return ErrClosed
	}
}

func (r *Router) command(p *peer, cmd Command) error {
	return nil // SUBSCRIBE/CANCEL and unknown commands are ignored on a ROUTER
}

func (p *peer) reasonOr(def error) error {
	if err := p.reason(); err != nil {
		return err
	}
	return def
}

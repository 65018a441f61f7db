package zmtp

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// Pub is a ZMTP PUB server socket. It accepts SUB and XSUB peers and
// sends each published message to every peer with a subscription that
// is a prefix of the message's first frame. All methods are safe for
// concurrent use.
type Pub struct {
	l *listener

	mu    sync.RWMutex
	peers map[string]*peer
}

// ListenPub starts a PUB socket listening on addr. It stops when ctx is
// done or Close is called.
func ListenPub(ctx context.Context, addr string, opts Options) (*Pub, error) {
	p := &Pub{peers: map[string]*peer{}}
	l, err := newListener(ctx, addr, opts, p)
	if err != nil {
		return nil, err
	}
	p.l = l
	l.start(ctx)
	return p, nil
}

// Addr is the address the Pub listens on.
func (s *Pub) Addr() net.Addr { return s.l.ln.Addr() }

// Events reports subscribers connecting and disconnecting (with generated
// ids). The channel is closed after Close.
func (s *Pub) Events() <-chan PeerEvent { return s.l.events }

// Close stops listening, closes every subscriber and waits for all
// goroutines.
func (s *Pub) Close() error { return s.l.close() }

// Publish sends a multipart message to every subscriber whose
// subscriptions match frames[0] by prefix (an empty subscription matches
// everything). It never blocks: a subscriber whose queue is at
// Options.SendHWM misses the message (counted in dropped_messages_total).
// It returns the number of subscribers the message was queued for.
func (s *Pub) Publish(frames ...[]byte) (int, error) {
	if len(frames) == 0 {
		return 0, ErrEmptyMessage
	}
	select {
	case <-s.l.closed:
		return 0, ErrClosed
	default:
	}
	topic := frames[0]
	var it outItem
	encoded := false
	n := 0
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, p := range s.peers {
		if !p.matches(topic) {
			continue
		}
		if !encoded {
			it, encoded = encode(frames), true
		}
		if p.q.push(it) {
			n++
		} else {
			s.l.m.dropped.Inc()
		}
	}
	return n, nil
}

// Subscribers returns the number of connected subscribers.
func (s *Pub) Subscribers() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.peers)
}

func (p *peer) matches(topic []byte) bool {
	p.subMu.RLock()
	defer p.subMu.RUnlock()
	for prefix := range p.subs {
		if len(topic) >= len(prefix) && string(topic[:len(prefix)]) == prefix {
			return true
		}
	}
	return false
}

// subscribe adds (or with cancel removes one reference to) a prefix;
// duplicate subscriptions are counted as libzmq does.
func (p *peer) subscribe(prefix []byte, cancel bool) {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	k := string(prefix)
	if cancel {
		if c := p.subs[k]; c > 1 {
			p.subs[k] = c - 1
		} else {
			delete(p.subs, k)
		}
		return
	}
	if p.subs == nil {
		p.subs = map[string]int{}
	}
	p.subs[k]++
}

// socketHooks implementation.

func (s *Pub) localType() string { return TypePub }

func (s *Pub) localMetadata() Metadata {
	return Metadata{{Name: PropSocketType, Value: []byte(TypePub)}}
}

func (s *Pub) admit(p *peer, _ []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		id := s.l.newRoutingID()
		if _, dup := s.peers[string(id)]; !dup {
			p.id = id
			break
		}
	}
	p.key = string(p.id)
	s.peers[p.key] = p
	return nil
}

func (s *Pub) remove(p *peer) {
	s.mu.Lock()
	if s.peers[p.key] == p {
		delete(s.peers, p.key)
	}
	s.mu.Unlock()
}

// deliver handles messages from subscribers: ZMTP 3.0-style subscription
// messages (first byte 1 or 0); anything else (XSUB may send it) is
// ignored, as libzmq's PUB does.
func (s *Pub) deliver(p *peer, frames [][]byte) error {
	if prefix, sub, ok := ParseSubscriptionMessage(frames); ok {
		s.l.log.Debug("zmtp subscription message", "peer", fmt.Sprintf("%x", p.id), "subscribe", sub, "prefix", prefix)
		p.subscribe(prefix, !sub)
	}
	return nil
}

func (s *Pub) command(p *peer, cmd Command) error {
	s.l.log.Debug("zmtp subscription command", "peer", fmt.Sprintf("%x", p.id), "command", cmd.Name, "prefix", cmd.Data)
	switch cmd.Name {
	case CmdSubscribe:
		p.subscribe(cmd.Data, false)
	case CmdCancel:
		p.subscribe(cmd.Data, true)
	}
	return nil
}

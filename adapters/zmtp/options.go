package zmtp

import (
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults applied by Listen and ListenPub to zero Options fields.
const (
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultSendHWM          = 1000
	DefaultRecvHWM          = 1000
	DefaultMaxMessageSize   = 1 << 20
	DefaultEventBuffer      = 1024
	// MaxFramesPerMessage bounds the number of frames of one incoming
	// message (each frame costs memory beyond its payload).
	MaxFramesPerMessage = 8192
	// MaxIdentity is the longest routing id a peer may announce (libzmq's
	// ZMQ_ROUTING_ID limit).
	MaxIdentity = 255
)

// Options configure a listener. The zero value is usable.
type Options struct {
	// Name labels the listener in logs and metrics; default: the address.
	Name string
	// Logger receives connection-level logs; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the jetbridge_zmtp_* metrics; nil means none.
	// Several listeners may share a Registerer (and even a Name).
	Registerer prometheus.Registerer

	// HandshakeTimeout bounds greeting + READY exchange per connection
	// (default 5 s). It runs off the accept loop.
	HandshakeTimeout time.Duration
	// SendHWM is the per-peer send queue length in messages (default 1000).
	// Router.Send returns ErrWouldBlock and Pub.Publish drops (and counts)
	// when a peer's queue is full.
	SendHWM int
	// RecvHWM is the length of a Router's inbound queue shared by all
	// peers (default 1000). When it is full, peer readers wait (TCP
	// backpressure), as libzmq does when its receive pipe is full.
	RecvHWM int
	// MaxMessageSize bounds the total payload of one incoming message and
	// of any single frame, commands included (default 1 MiB). A peer that
	// exceeds it, or merely announces a longer frame, is disconnected.
	MaxMessageSize int
	// EventBuffer is the capacity of the Events channel (default 1024).
	// When it is full, events are dropped, logged and counted.
	EventBuffer int

	// HeartbeatInterval, when > 0, makes the listener send a PING to every
	// ZMTP 3.1 peer at this interval (peers' own PINGs are always answered).
	HeartbeatInterval time.Duration
	// HeartbeatTimeout closes a 3.1 peer from which nothing was received for
	// this long while HeartbeatInterval is set (default 3 × interval).
	HeartbeatTimeout time.Duration
	// HeartbeatTTL is the TTL announced in our PINGs (0: none).
	HeartbeatTTL time.Duration
}

func (o Options) withDefaults(addr string) (Options, error) {
	if o.Name == "" {
		o.Name = addr
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.SendHWM <= 0 {
		o.SendHWM = DefaultSendHWM
	}
	if o.RecvHWM <= 0 {
		o.RecvHWM = DefaultRecvHWM
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.MaxMessageSize < 0 {
		return o, errors.New("zmtp: negative MaxMessageSize")
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = DefaultEventBuffer
	}
	if o.HeartbeatInterval > 0 && o.HeartbeatTimeout <= 0 {
		o.HeartbeatTimeout = 3 * o.HeartbeatInterval
	}
	return o, nil
}

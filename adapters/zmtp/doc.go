// Package zmtp is jetbridge's own pure-Go ZeroMQ transport: a ZMTP 3.1
// server (RFC 37, compatible with ZMTP 3.0 peers, RFC 23) with the NULL
// security mechanism (RFC 27), accepted by real libzmq/pyzmq clients.
//
// It offers two server sockets:
//
//   - Router (Listen): a ROUTER accepting REQ, DEALER and ROUTER peers.
//     Each peer gets a routing id: its READY "Identity" property, or a
//     generated libzmq-style 5-byte id (0x00 + uint32). A second
//     connection announcing an identity that is already connected is
//     refused with an ERROR command and closed (libzmq's default without
//     ROUTER_HANDOVER). Recv returns Message{Peer, Frames}; Send to an id
//     that is not connected fails with ErrUnknownPeer. A REQ peer's
//     request arrives as ["", body...]: SplitEnvelope / Message.Body give
//     the body and Router.Reply sends [envelope..., reply...] back.
//     Events reports PeerConnected / PeerDisconnected so brokers notice
//     dead workers.
//   - Pub (ListenPub): a PUB accepting SUB and XSUB peers. Subscriptions
//     arrive as SUBSCRIBE/CANCEL commands (libzmq 4.3 SUB) or as 3.0-style
//     messages whose first byte is 1/0 (XSUB, 3.0 peers); they are counted
//     per prefix. Publish sends to every peer with a subscription that is
//     a prefix of the first frame (the empty prefix matches everything).
//
// Connections: the accept loop only accepts; every connection runs its
// greeting and READY exchange in its own goroutine under
// Options.HandshakeTimeout (default 5 s), so a silent TCP client delays
// nobody. After the handshake a peer has one reader and one writer
// goroutine. The writer owns the socket: it sends queued messages in
// batches and PONGs ahead of them. PINGs are answered by the connection
// itself (the PONG echoes the context); when a PING carries a TTL, the
// peer is closed if nothing arrives within it. With
// Options.HeartbeatInterval the server also PINGs 3.1 peers and closes
// those silent for Options.HeartbeatTimeout.
//
// Send queue policy: each peer has a queue of Options.SendHWM messages
// (default 1000). Router.Send and Pub.Publish never block on the network:
// messages are encoded (copied) at once; when a peer's queue is full,
// Router.Send returns ErrWouldBlock and Pub.Publish skips that peer, and
// the message is counted in jetbridge_zmtp_dropped_messages_total. A peer
// that stops reading therefore never delays any other peer.
//
// Limits: Options.MaxMessageSize (default 1 MiB; the pod maps
// --zmq-max-message to it) bounds every frame (commands included) and the
// total payload of one message; a longer frame is refused from its header
// alone, before any allocation, and the connection is closed. A message
// may have at most MaxFramesPerMessage frames. Malformed input closes only
// the offending connection.
//
// Metrics (Options.Registerer, nil for none; label listener=Options.Name):
// jetbridge_zmtp_peers, _connections_total, _handshake_failures_total,
// _frames_in_total, _frames_out_total, _bytes_in_total, _bytes_out_total,
// _messages_in_total, _messages_out_total, _dropped_messages_total.
// Several listeners may share a Registerer and even a Name.
//
// Logs go to Options.Logger (nil: slog.Default()): handshake failures at
// Debug (Warn for refused identities and socket types), peers at Debug.
//
// Close (or cancelling the Listen context) stops accepting, closes every
// peer and handshaking connection, waits for every goroutine and then
// closes the Events channel.
//
// The codec (greeting, frames, commands, metadata) is exported as pure
// functions over byte slices for tests and tools. Not implemented: CURVE
// and PLAIN, ROUTER_HANDOVER, client (connecting) sockets, ipc://.
package zmtp

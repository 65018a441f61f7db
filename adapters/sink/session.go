package sink

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

func jsonMarshal(v any) ([]byte, error)   { return json.Marshal(v) }
func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// writeTimeout bounds one frame write to a peer that stopped reading.
const writeTimeout = 30 * time.Second

// session is one TLS connection: handshake (§6), inbound and outbound delivery (§7), keepalive (§8).
type session struct {
	a        *Adapter
	conn     *tls.Conn
	clientID string
	connID   string
	remote   string
	log      *slog.Logger

	out      chan []byte // frames for the writer, closed once all senders are gone
	ctx      context.Context
	cancel   context.CancelFunc // kills the connection (writer and senders stop at once)
	inWG     sync.WaitGroup     // inbound publishes being written
	sem      chan struct{}
	ownerRev atomic.Uint64

	handshaken bool      // reader goroutine only
	ob         *outbound // reader goroutine only; set after a successful handshake

	closeOnce sync.Once
	reason    atomic.Value // string
	closing   atomic.Bool
}

// serve runs one accepted TCP connection until it ends.
func (a *Adapter) serve(raw net.Conn) {
	defer a.connWG.Done()
	conn := tls.Server(raw, a.tlsCfg)
	hctx, cancel := context.WithTimeout(a.ctx, a.cfg.HandshakeTimeout)
	err := conn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		a.m.handshakes.WithLabelValues("tls_failed").Inc()
		a.env.Metrics.Errors.WithLabelValues("sink", "tls").Inc()
		a.log.Debug("sink: tls handshake", "remote", raw.RemoteAddr().String(), "err", err)
		_ = raw.Close()
		return
	}
	certs := conn.ConnectionState().PeerCertificates
	var clientID string
	if len(certs) > 0 {
		clientID, err = a.authenticate(certs[0].Raw, certs[0].Subject.CommonName)
	} else {
		err = errUnknownClient
	}
	if err != nil {
		// As the original: an unknown certificate closes the socket with no Sink message.
		a.m.handshakes.WithLabelValues("unknown_certificate").Inc()
		a.log.Info("sink: connection refused", "remote", raw.RemoteAddr().String(), "err", err)
		_ = conn.Close()
		return
	}
	s := &session{a: a, conn: conn, clientID: clientID, remote: raw.RemoteAddr().String(),
		connID: a.env.PodID + "-" + strconv.FormatUint(a.connSeq.Add(1), 10),
		out:    make(chan []byte, 256), sem: make(chan struct{}, a.cfg.MaxInflight)}
	s.ctx, s.cancel = context.WithCancel(a.ctx)
	s.log = a.log.With("client", clientID, "conn", s.connID)
	a.mu.Lock()
	if a.draining {
		a.mu.Unlock()
		_ = conn.Close()
		return
	}
	a.conns[s] = struct{}{}
	a.mu.Unlock()
	a.env.Metrics.Connections.WithLabelValues("sink").Inc()
	defer a.env.Metrics.Connections.WithLabelValues("sink").Dec()
	defer a.release(s)
	if err := a.claim(s); err != nil {
		s.log.Info("sink: connection not claimed", "err", err)
		_ = conn.Close()
		return
	}
	s.run()
}

func (a *Adapter) authenticate(der []byte, cn string) (string, error) {
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	fp := Fingerprint(der)
	id, err := a.reg.byFingerprint(ctx, fp)
	if err == nil || !errors.Is(err, errUnknownClient) || !a.cfg.ClientIDFromCN {
		return id, err
	}
	if !ValidClientID(cn) {
		return "", fmt.Errorf("certificate %s: CN %q is not a valid client id: %w", fp, cn, errUnknownClient)
	}
	if err := a.reg.ensureCNClient(ctx, cn, cn); err != nil {
		return "", err
	}
	return cn, nil
}

func (s *session) run() {
	var writerWG sync.WaitGroup
	writerWG.Add(1)
	go func() { defer writerWG.Done(); s.writer() }()

	s.readLoop()

	// Graceful end: let inbound writes finish (their ACKs are queued), give held outbound events
	// back, flush what is queued for the peer, then close.
	s.inWG.Wait()
	if s.ob != nil {
		s.ob.stop()
	}
	close(s.out)
	writerWG.Wait()
	_ = s.conn.Close()
	s.cancel()
	r, _ := s.reason.Load().(string)
	s.log.Info("sink: connection closed", "reason", r)
}

// closeGraceful ends the connection after the frames in progress (reading stops now).
func (s *session) closeGraceful(reason string) {
	s.closeOnce.Do(func() { s.reason.Store(reason) })
	s.closing.Store(true)
	_ = s.conn.SetReadDeadline(time.Unix(1, 0))
}

// kill ends the connection at once.
func (s *session) kill() {
	s.closeOnce.Do(func() { s.reason.Store("killed") })
	s.cancel()
	_ = s.conn.Close()
}

func (s *session) setReason(r string) { s.closeOnce.Do(func() { s.reason.Store(r) }) }

// send queues a frame for the writer; false when the connection is going away.
func (s *session) send(f []byte) bool {
	select {
	case s.out <- f:
		return true
	case <-s.ctx.Done():
		return false
	}
}

func (s *session) writer() {
	w := bufio.NewWriterSize(s.conn, 16<<10)
	broken := false
	for f := range s.out {
		if broken {
			continue
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		err := WriteFrame(w, f)
		if err == nil && len(s.out) == 0 {
			err = w.Flush()
		}
		if err != nil {
			broken = true
			s.setReason("write: " + err.Error())
			s.cancel()
			_ = s.conn.Close()
		}
	}
	if !broken {
		_ = w.Flush()
	}
}

func (s *session) readLoop() {
	br := bufio.NewReaderSize(s.conn, 16<<10)
	idle := s.a.cfg.Keepalive * 3 / 2
	for {
		if err := s.conn.SetReadDeadline(time.Now().Add(idle)); err != nil || s.closing.Load() {
			return
		}
		f, err := ReadFrame(br, nil)
		if err != nil {
			var ne net.Error
			r, _ := s.reason.Load().(string)
			switch {
			case r != "":
			case errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded):
				s.setReason(fmt.Sprintf("silent for %v (1.5 x keepalive)", idle))
				s.a.env.Metrics.Errors.WithLabelValues("sink", "idle_timeout").Inc()
			default:
				s.setReason("read: " + err.Error())
			}
			return
		}
		if !s.handle(f) {
			return
		}
	}
}

// handle processes one frame; false closes the connection.
func (s *session) handle(f []byte) bool {
	a := s.a
	m, err := Decode(f)
	if len(f) > 0 {
		a.env.Metrics.MessagesIn.WithLabelValues("sink", m.Type.String()).Inc()
	}
	switch {
	case errors.Is(err, ErrEmptyFrame):
		a.env.Metrics.Errors.WithLabelValues("sink", "empty_frame").Inc()
		return true
	case errors.Is(err, ErrUnknownType):
		a.env.Metrics.Errors.WithLabelValues("sink", "unknown_type").Inc()
		s.setReason(err.Error())
		return false
	}
	switch m.Type {
	case TypeConnectionRequest:
		if err != nil {
			a.m.handshakes.WithLabelValues("malformed").Inc()
			s.setReason("malformed connection request: " + err.Error())
			return false
		}
		if s.handshaken {
			a.env.Metrics.Errors.WithLabelValues("sink", "second_connection_request").Inc()
			s.setReason("second connection request")
			return false
		}
		s.handshaken = true
		return s.handshake(m.Request)
	case TypeConnectionResponse:
		a.env.Metrics.Errors.WithLabelValues("sink", "unexpected_type").Inc()
		s.setReason("client sent a connection response")
		return false
	case TypePing:
		if err != nil {
			a.env.Metrics.Errors.WithLabelValues("sink", "malformed").Inc()
		}
		s.sendOut(AppendPong(nil), "pong")
		return true
	case TypePong:
		return true
	case TypeAck:
		if err != nil {
			a.env.Metrics.Errors.WithLabelValues("sink", "malformed").Inc()
		}
		a.m.acks.WithLabelValues("in", "ack").Inc()
		if s.ob == nil || !s.ob.deliverResult(ackResult{id: m.ID, ack: true}) {
			a.m.unknownIDs.Inc()
		}
		return true
	case TypeNack:
		if err != nil {
			// forgiving: a NACK whose machine chunk is broken still NACKs, with the raw bytes as text
			a.env.Metrics.Errors.WithLabelValues("sink", "malformed").Inc()
			m.Machine, m.Human = nil, f[2:]
		}
		a.m.acks.WithLabelValues("in", "nack").Inc()
		if s.ob == nil || !s.ob.deliverResult(ackResult{id: m.ID, machine: bytes.Clone(m.Machine), human: bytes.Clone(m.Human)}) {
			a.m.unknownIDs.Inc()
		}
		return true
	case TypePublish:
		if !s.ob.ready() {
			s.nack(m.ID, "401", "connection request required before publishing")
			return true
		}
		if err != nil {
			a.env.Metrics.Errors.WithLabelValues("sink", "malformed").Inc()
			s.nack(m.ID, "400", "malformed publish: "+err.Error())
			return true
		}
		select {
		case s.sem <- struct{}{}:
		case <-s.ctx.Done():
			return false
		}
		s.inWG.Add(1)
		a.m.inflight.WithLabelValues("in").Inc()
		go s.ingest(m.ID, m.Event)
		return true
	}
	return true
}

func (s *session) sendOut(f []byte, typ string) {
	if s.send(f) {
		s.a.env.Metrics.MessagesOut.WithLabelValues("sink", typ).Inc()
	}
}

func (s *session) nack(id uint16, machine, human string) {
	f, err := AppendNack(nil, id, []byte(machine), []byte(human))
	if err != nil {
		f, _ = AppendNack(nil, id, []byte(machine), nil)
	}
	s.a.m.acks.WithLabelValues("out", "nack").Inc()
	s.sendOut(f, "nack")
}

func (s *session) respond(r ConnectionResponse, result string) {
	f, err := AppendConnectionResponse(nil, r)
	if err != nil { // a quarantine message too long for a frame: send it without the human text
		r.Human = nil
		f, _ = AppendConnectionResponse(nil, r)
	}
	s.a.m.handshakes.WithLabelValues(result).Inc()
	s.sendOut(f, "connection_response")
}

// handshake checks, in the order of the Decisions: protocol version, application version,
// quarantine, instance ids. It returns false when the connection must close.
func (s *session) handshake(req ConnectionRequest) bool {
	a := s.a
	if req.Version != 0 {
		s.respond(ConnectionResponse{Code: RespUnsupportedProtocolVersion}, "unsupported_protocol_version")
		s.setReason(fmt.Sprintf("unsupported protocol version %d", req.Version))
		return false
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	pol, err := a.reg.policy(ctx)
	if err != nil {
		s.setReason("policy unavailable: " + err.Error())
		a.m.handshakes.WithLabelValues("error").Inc()
		return false
	}
	if pol.MinApplicationVersion != "" {
		if less, ok := versionLess(req.AppVersion, pol.MinApplicationVersion); less || !ok {
			s.respond(ConnectionResponse{Code: RespUnsupportedApplicationVersion}, "unsupported_application_version")
			s.setReason(fmt.Sprintf("application version %q below minimum %q", req.AppVersion, pol.MinApplicationVersion))
			return false
		}
	}
	rec, _, err := a.reg.client(ctx, s.clientID)
	if err != nil {
		s.setReason("client record: " + err.Error())
		a.m.handshakes.WithLabelValues("error").Inc()
		return false
	}
	if q := rec.Quarantine; q != nil {
		s.respond(ConnectionResponse{Code: RespQuarantined, Machine: []byte(q.Machine), Human: []byte(q.Human)}, "quarantined")
		s.setReason("quarantined: " + q.Machine)
		return false
	}
	S := a.serverID
	switch {
	case rec.InstanceID != nil && *rec.InstanceID == req.ClientInstanceID && req.HasServerID && req.ServerInstanceID == S:
		s.respond(ConnectionResponse{Code: RespConnected}, "connected")
	case rec.InstanceID == nil && !req.HasServerID:
		// first handshake: persist the client's instance id (CAS: a concurrent first handshake
		// with another id makes this one a mismatch)
		cid := req.ClientInstanceID
		_, err := a.reg.mutateClient(ctx, s.clientID, func(r *ClientRecord) error {
			if r.InstanceID != nil {
				if *r.InstanceID == cid {
					return jetstream.ErrSkip
				}
				return errMismatch
			}
			r.InstanceID = &cid
			return nil
		})
		if errors.Is(err, errMismatch) {
			return s.mismatch(req, rec)
		}
		if err != nil {
			s.setReason("persist client instance id: " + err.Error())
			a.m.handshakes.WithLabelValues("error").Inc()
			return false
		}
		s.respond(ConnectionResponse{Code: RespHelloNewClient, ServerInstanceID: S}, "hello_new_client")
	case rec.InstanceID != nil && *rec.InstanceID == req.ClientInstanceID && !req.HasServerID:
		s.respond(ConnectionResponse{Code: RespHelloNewClient, ServerInstanceID: S}, "hello_new_client")
	default:
		return s.mismatch(req, rec)
	}
	ob, err := startOutbound(s)
	if err != nil {
		s.log.Warn("sink: outbound delivery not started", "err", err)
		s.setReason("outbound: " + err.Error())
		return false
	}
	s.ob = ob
	return true
}

var errMismatch = errors.New("instance id mismatch")

func (s *session) mismatch(req ConnectionRequest, rec ClientRecord) bool {
	s.respond(ConnectionResponse{Code: RespInstanceIDMismatch}, "instance_id_mismatch")
	known := "none"
	if rec.InstanceID != nil {
		known = strconv.FormatUint(uint64(*rec.InstanceID), 10)
	}
	s.setReason(fmt.Sprintf("instance id mismatch: client sent {client %d, server %d (present %v)}, server knows {client %s, server %d}",
		req.ClientInstanceID, req.ServerInstanceID, req.HasServerID, known, s.a.serverID))
	return false
}

// ingest writes one inbound event to JetStream and answers ACK only after JetStream's ack.
func (s *session) ingest(id uint16, ev Event) {
	a := s.a
	defer func() {
		<-s.sem
		a.m.inflight.WithLabelValues("in").Dec()
		s.inWG.Done()
	}()
	start := time.Now()
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	subj := a.env.JS.Subject("sink", "in", s.clientID, strconv.FormatUint(ev.TypeID, 10))
	h := jetstream.Header{}
	h.Set(HdrClient, s.clientID)
	h.Set(HdrEventType, strconv.FormatUint(ev.TypeID, 10))
	h.Set(HdrSchemaVersion, strconv.FormatUint(ev.SchemaVersion, 10))
	h.Set(HdrKey, base64.StdEncoding.EncodeToString(ev.Key))
	h.Set(HdrOffset, strconv.FormatUint(ev.Offset, 10))
	h.Set(HdrTimestamp, strconv.FormatUint(ev.Timestamp, 10))
	msgID := "sink:" + s.clientID + ":" + strconv.FormatUint(ev.TypeID, 10) + ":" + keyID(ev.Key) + ":" + strconv.FormatUint(ev.Offset, 10)
	ack, err := a.env.JS.Publish(ctx, subj, ev.Data, jetstream.PubOpts{MsgID: msgID, Header: h})
	if err != nil {
		a.env.Metrics.Errors.WithLabelValues("sink", "write").Inc()
		s.log.Warn("sink: event not stored", "type", ev.TypeID, "offset", ev.Offset, "err", err)
		s.nack(id, "503", "event not stored, retry later")
		return
	}
	if ack.Duplicate && ack.Sequence > 0 {
		stored, err := a.env.JS.GetMsg(ctx, StreamIn, ack.Sequence)
		switch {
		case err != nil && (errors.Is(err, jetstream.ErrNotFound) || strings.Contains(err.Error(), "not found")):
			// the original aged out: nothing to compare with, the id says it was stored
		case err != nil:
			a.env.Metrics.Errors.WithLabelValues("sink", "write").Inc()
			s.nack(id, "503", "duplicate check failed, retry later")
			return
		case !bytes.Equal(stored.Data, ev.Data):
			a.env.Metrics.Errors.WithLabelValues("sink", "data_mismatch").Inc()
			s.nack(id, "409", "data mismatch")
			return
		}
	}
	a.noteFreshness(s.clientID, ev.TypeID, ev.Timestamp)
	f, _ := AppendAck(nil, id)
	a.m.acks.WithLabelValues("out", "ack").Inc()
	s.sendOut(f, "ack")
	a.env.Metrics.Latency.WithLabelValues("sink", "publish").Observe(time.Since(start).Seconds())
}

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

	"github.com/prometheus/client_golang/prometheus"

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

	ctx      context.Context
	cancel   context.CancelFunc // kills the connection (senders stop at once)
	inWG     sync.WaitGroup     // inbound publishes being written
	sem      chan struct{}
	work     chan pubJob  // inbound publishes for the workers
	idle     atomic.Int32 // workers waiting for work
	ownerRev atomic.Uint64

	wmu    sync.Mutex // guards w, broken and wdl
	w      *bufio.Writer
	broken bool
	wdl    time.Time // write deadline set on conn

	handshaken bool // reader goroutine only
	workers    int  // reader goroutine only
	br         *bufio.Reader
	ob         *outbound   // reader goroutine only; set after a successful handshake
	inline     *pubScratch // reader goroutine only: publishes written without a hand-off
	handedOff  bool        // reader goroutine only: the frame being handled went to a worker

	closeOnce sync.Once
	reason    atomic.Value // string
	closing   atomic.Bool

	subjMu   sync.Mutex
	subjects map[string]string
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
		sem:    make(chan struct{}, a.cfg.MaxInflight), work: make(chan pubJob, a.cfg.MaxInflight)}
	s.w = bufio.NewWriterSize(conn, 16<<10)
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
	s.readLoop()
	if s.inline != nil {
		s.inline.release()
	}

	// Graceful end: let inbound writes finish (their ACKs are written), give held outbound events
	// back, flush, then close.
	close(s.work)
	s.inWG.Wait()
	if s.ob != nil {
		s.ob.stop()
	}
	s.wmu.Lock()
	s.broken = true
	_ = s.w.Flush()
	s.wmu.Unlock()
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

// send writes a frame to the peer; false when the connection is going away. Concurrent senders
// combine their flushes: whoever takes the lock after writing flushes everything buffered.
func (s *session) send(f []byte) bool {
	s.wmu.Lock()
	if s.broken {
		s.wmu.Unlock()
		return false
	}
	err := WriteFrame(s.w, f)
	s.wmu.Unlock()
	if err == nil {
		s.wmu.Lock()
		if s.w.Buffered() > 0 && !s.broken {
			// the deadline is moved only when less than half of writeTimeout is left: a flush
			// is still bounded (by 15–30 s) without re-arming the timer for every frame
			if now := time.Now(); s.wdl.Sub(now) < writeTimeout/2 {
				s.wdl = now.Add(writeTimeout)
				_ = s.conn.SetWriteDeadline(s.wdl)
			}
			err = s.w.Flush()
		}
		s.wmu.Unlock()
	}
	if err != nil {
		s.wmu.Lock()
		s.broken = true
		s.wmu.Unlock()
		s.setReason("write: " + err.Error())
		s.cancel()
		_ = s.conn.Close()
		return false
	}
	return true
}

func (s *session) readLoop() {
	br := bufio.NewReaderSize(s.conn, 16<<10)
	s.br = br
	idle := s.a.cfg.Keepalive * 3 / 2
	var buf []byte
	var armed time.Time // the read deadline on conn is armed+idle
	for {
		// A connection silent for idle since this wait began is dropped. The deadline is moved
		// at most every idle/16 (not once per frame); one that fires early is moved to exactly
		// idle after the wait's start (see waitFrame).
		wait := time.Now()
		if wait.Sub(armed) > idle/16 {
			if err := s.conn.SetReadDeadline(wait.Add(idle)); err != nil {
				return
			}
			armed = wait
		}
		if s.closing.Load() {
			return
		}
		err := s.waitFrame(br, wait, idle, &armed)
		var f []byte
		if err == nil {
			f, err = ReadFrame(br, buf)
		}
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
		s.handedOff = false
		if !s.handle(f) {
			return
		}
		// the frame's buffer is read into again unless a worker still holds the event in it
		buf = f[:0]
		if s.handedOff {
			buf = nil
		}
	}
}

// waitFrame waits until the next frame's length and, when it fits in br, the whole frame are
// buffered (Peek consumes nothing, so a read deadline that fires before the connection has been
// silent for idle since wait can be moved and the wait resumed). A frame larger than br's buffer
// is read by ReadFrame under the deadline as it is.
func (s *session) waitFrame(br *bufio.Reader, wait time.Time, idle time.Duration, armed *time.Time) error {
	need := 2
	for {
		p, err := br.Peek(need)
		if err == nil {
			if need > 2 {
				return nil
			}
			n := 2 + (int(p[0])<<8 | int(p[1]))
			if n == 2 || n > br.Size() {
				return nil
			}
			need = n
			continue
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return nil // ReadFrame meets and reports it
		}
		if s.closing.Load() || time.Since(wait) >= idle {
			return err
		}
		if err := s.conn.SetReadDeadline(wait.Add(idle)); err != nil {
			return err
		}
		*armed = wait
		if s.closing.Load() {
			return os.ErrDeadlineExceeded
		}
	}
}

// handle processes one frame; false closes the connection.
func (s *session) handle(f []byte) bool {
	a := s.a
	m, err := Decode(f)
	if len(f) > 0 {
		a.m.msgIn[m.Type&15].Inc()
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
		s.sendOut(AppendPong(nil), a.m.outPong)
		return true
	case TypePong:
		return true
	case TypeAck:
		if err != nil {
			a.env.Metrics.Errors.WithLabelValues("sink", "malformed").Inc()
		}
		a.m.ackIn.Inc()
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
		a.m.nackIn.Inc()
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
		a.m.inflightIn.Inc()
		if s.br.Buffered() == 0 && len(s.sem) == 1 {
			// nothing else to read and nothing else in flight (the original client's one event
			// at a time): write it here, saving a hand-off; the next frame waits in the socket
			if s.inline == nil {
				s.inline = newPubScratch(s.clientID)
				// the reader's own reply subscription: the acknowledgement wakes it directly
				if l, err := a.env.JS.NewLane(); err == nil {
					s.inline.lane = l
				}
			}
			s.ingest(s.inline, m.ID, m.Event)
			<-s.sem
			a.m.inflightIn.Dec()
			s.inWG.Done()
			return true
		}
		s.handedOff = true
		s.work <- pubJob{id: m.ID, ev: m.Event}
		if s.idle.Load() == 0 && s.workers < cap(s.sem) {
			s.workers++
			go s.worker()
		}
		return true
	}
	return true
}

func (s *session) sendOut(f []byte, c prometheus.Counter) {
	if s.send(f) {
		c.Inc()
	}
}

func (s *session) nack(id uint16, machine, human string) {
	f, err := AppendNack(nil, id, []byte(machine), []byte(human))
	if err != nil {
		f, _ = AppendNack(nil, id, []byte(machine), nil)
	}
	s.a.m.nackOut.Inc()
	s.sendOut(f, s.a.m.outNack)
}

func (s *session) respond(r ConnectionResponse, result string) {
	f, err := AppendConnectionResponse(nil, r)
	if err != nil { // a quarantine message too long for a frame: send it without the human text
		r.Human = nil
		f, _ = AppendConnectionResponse(nil, r)
	}
	s.a.m.handshakes.WithLabelValues(result).Inc()
	s.sendOut(f, s.a.m.outResponse)
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

type pubJob struct {
	id uint16
	ev Event
}

// worker writes inbound events. Workers are started when every existing one is busy and live as
// long as the connection, so a connection never starts a goroutine per event (at most
// --sink-max-inflight workers).
// subjIn is the inbound subject of an event type (cached: a device uses few types).
func (s *session) subjIn(typ string) string {
	s.subjMu.Lock()
	defer s.subjMu.Unlock()
	if subj, ok := s.subjects[typ]; ok {
		return subj
	}
	subj := s.a.env.JS.Subject("sink", "in", s.clientID, typ)
	if s.subjects == nil {
		s.subjects = map[string]string{}
	}
	if len(s.subjects) < 64 {
		s.subjects[typ] = subj
	}
	return subj
}

func (s *session) worker() {
	sc := newPubScratch(s.clientID)
	defer sc.release()
	for {
		s.idle.Add(1)
		j, ok := <-s.work
		s.idle.Add(-1)
		if !ok {
			return
		}
		s.ingest(sc, j.id, j.ev)
		<-s.sem
		s.a.m.inflightIn.Dec()
		s.inWG.Done()
	}
}

// pubScratch is what one goroutine (the reader's inline path or a worker) reuses from event to
// event: the header map and its value slices (PublishLean serialises the header before it
// returns), one buffer in which all header values and the de-duplication id are built (they
// become substrings of one string: one allocation per event), and a bounded context that is
// renewed when less than half of its 10 s is left (publishes stay bounded by 5–10 s without a
// context and timer per event).
type pubScratch struct {
	h                         jetstream.Header
	typ, schema, key, off, ts []string
	buf                       []byte
	ack                       [2]byte
	subj                      string // inbound subject of subjType
	subjType                  uint64
	ctx                       context.Context
	cancel                    context.CancelFunc
	until                     time.Time
	lane                      *jetstream.Lane // the inline path's (nil: the client's shared request path)
}

const publishTimeout = 10 * time.Second

func newPubScratch(clientID string) *pubScratch {
	sc := &pubScratch{typ: []string{""}, schema: []string{""}, key: []string{""}, off: []string{""}, ts: []string{""}}
	// canonical header names, set without Set's canonicalisation
	sc.h = jetstream.Header{HdrClient: {clientID}, HdrEventType: sc.typ, HdrSchemaVersion: sc.schema,
		HdrKey: sc.key, HdrOffset: sc.off, HdrTimestamp: sc.ts}
	return sc
}

// context returns a context with at least publishTimeout/2 left. Not tied to a.ctx (a killed
// pod still finishes writes NATS accepted).
func (sc *pubScratch) context(now time.Time) context.Context {
	if sc.ctx == nil || sc.until.Sub(now) < publishTimeout/2 {
		if sc.cancel != nil {
			sc.cancel()
		}
		sc.until = now.Add(publishTimeout)
		sc.ctx, sc.cancel = context.WithDeadline(context.Background(), sc.until)
	}
	return sc.ctx
}

func (sc *pubScratch) release() {
	if sc.cancel != nil {
		sc.cancel()
	}
	if sc.lane != nil {
		sc.lane.Close()
	}
}

// ingest writes one inbound event to JetStream and answers ACK only after JetStream's ack.
func (s *session) ingest(sc *pubScratch, id uint16, ev Event) {
	a := s.a
	start := time.Now()
	ctx := sc.context(start)
	// values: type | schema | base64(key) | offset | timestamp | msg id "sink:<client>:<type>:<keyID>:<offset>"
	b := sc.buf[:0]
	b = strconv.AppendUint(b, ev.TypeID, 10)
	nTyp := len(b)
	b = strconv.AppendUint(b, ev.SchemaVersion, 10)
	nSchema := len(b)
	b = base64.StdEncoding.AppendEncode(b, ev.Key)
	nKey := len(b)
	b = strconv.AppendUint(b, ev.Offset, 10)
	nOff := len(b)
	b = strconv.AppendUint(b, ev.Timestamp, 10)
	nTs := len(b)
	b = append(b, "sink:"...)
	b = append(b, s.clientID...)
	b = append(b, ':')
	b = append(b, b[:nTyp]...)
	b = append(b, ':')
	b = appendKeyID(b, ev.Key)
	b = append(b, ':')
	b = append(b, b[nKey:nOff]...)
	sc.buf = b
	all := string(b)
	typ := all[:nTyp]
	sc.typ[0], sc.schema[0], sc.key[0], sc.off[0], sc.ts[0] = typ, all[nTyp:nSchema], all[nSchema:nKey], all[nKey:nOff], all[nOff:nTs]
	msgID := all[nTs:]
	h := sc.h
	if sc.subj == "" || sc.subjType != ev.TypeID {
		sc.subj, sc.subjType = s.subjIn(typ), ev.TypeID
	}
	var ack jetstream.PubAck
	var err error
	if sc.lane != nil {
		ack, err = sc.lane.Publish(ctx, sc.subj, ev.Data, h, msgID)
	} else {
		ack, err = a.env.JS.PublishLean(ctx, sc.subj, ev.Data, h, msgID)
	}
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
	f, _ := AppendAck(sc.ack[:0], id)
	a.m.ackOut.Inc()
	s.sendOut(f, a.m.outAck)
	a.m.latPublish.Observe(time.Since(start).Seconds())
}

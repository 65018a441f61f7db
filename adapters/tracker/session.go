package tracker

// session.go is one WebSocket connection's state machine: hello, then one request at a time,
// each answered before the next frame is read. The connection's only goroutine is the HTTP
// server's handler goroutine running serve(); advisories are written from the NATS subscription
// under the same write lock.

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

type session struct {
	a        *Adapter
	conn     *websocket.Conn
	pipeline string
	limits   Pipeline // budget and rate at connect time

	version string
	frames  int

	cmdMu sync.Mutex // held while a command runs (Drain waits for it)
	wmu   sync.Mutex // serialises writes (responses and advisories)
	done  bool       // under wmu: the connection is closing
}

// serve reads frames until the connection ends.
func (s *session) serve() {
	for {
		if d := s.a.idleTimeout; d > 0 {
			_ = s.conn.SetReadDeadline(time.Now().Add(d))
		}
		_, r, err := s.conn.NextReader()
		if err != nil {
			return
		}
		// the frame is read into a pooled buffer: nothing handle makes keeps a reference to it
		buf := frameBufs.Get().(*bytes.Buffer)
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			frameBufs.Put(buf)
			return
		}
		s.cmdMu.Lock()
		closing := s.handle(buf.Bytes())
		s.cmdMu.Unlock()
		if buf.Cap() <= 64<<10 {
			frameBufs.Put(buf)
		}
		if closing {
			return
		}
	}
}

// frameBufs holds the buffers frames are read into (idle connections hold none).
var frameBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (s *session) write(frame []byte) error { return s.writeWithin(frame, 10*time.Second) }

// writeWithin writes one text frame; a client that does not take it within d loses the connection.
func (s *session) writeWithin(frame []byte, d time.Duration) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.done {
		return errors.New("connection closing")
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(d))
	err := s.conn.WriteMessage(websocket.TextMessage, frame)
	if err != nil {
		_ = s.conn.Close() // a half-written frame would corrupt the stream
	}
	return err
}

// closeWith sends a close frame with a reason and closes the connection.
func (s *session) closeWith(code int, reason string) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.done {
		return
	}
	s.done = true
	_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	_ = s.conn.Close()
}

func (s *session) sendError(e *FrameError) {
	s.a.metrics().Errors.WithLabelValues(protocolName, errKind(e.Status)).Inc()
	s.a.metrics().MessagesOut.WithLabelValues(protocolName, "error").Inc()
	_ = s.write(EncodeError(e))
}

func errKind(status int) string { return strconv.Itoa(status) }

// handle processes one frame; it returns true when the connection must end.
func (s *session) handle(data []byte) bool {
	first := s.frames == 0
	s.frames++
	req, ferr := DecodeFrame(data, first)
	if ferr != nil {
		s.a.metrics().MessagesIn.WithLabelValues(protocolName, "invalid").Inc()
		s.sendError(ferr)
		return false
	}
	if req.Kind == kindHello {
		s.a.metrics().MessagesIn.WithLabelValues(protocolName, "hello").Inc()
		if req.Protocol != 1 {
			s.closeWith(websocket.ClosePolicyViolation, "Protocol mismatch! Please update your client")
			return true
		}
		s.version = req.Version
		return false
	}
	typ := req.Type
	if !knownType(typ) {
		typ = "unknown"
	}
	tm := s.a.typeMetrics(typ)
	tm.in.Inc()
	start := time.Now()
	status, payload, err := s.dispatch(req)
	tm.latency.Observe(time.Since(start).Seconds())
	if err != nil {
		fe := &FrameError{Status: 503, Message: "Service unavailable, try again", Seq: req.Seq, HasSeq: true}
		var se *statusError
		if errors.As(err, &se) {
			fe.Status, fe.Message = se.status, se.msg
		} else {
			s.a.env.Log.Warn("tracker command failed", "type", req.Type, "pipeline", s.pipeline, "err", err)
		}
		s.sendError(fe)
		return false
	}
	tm.out.Inc()
	if c, ok := payload.(claimAnswer); ok {
		_ = s.write(encodeClaimResponse(c.rec, c.rec.Claim.Attempt, c.infoURL, req.Seq))
		return false
	}
	_ = s.write(EncodeResponse(status, payload, req.Seq))
	return false
}

// claimAnswer is the payload of an Item:claim answer with an item (encoded by encodeClaimResponse).
type claimAnswer struct {
	rec     *Record
	infoURL string
}

// cmdMetrics are one command type's metric series (looked up once: this runs per request).
type cmdMetrics struct {
	in, out prometheus.Counter
	latency prometheus.Observer
}

var commandTypes = []string{"System:ping", "Item:claim", "Item:store", "Item:fail", "Item:finish", "unknown"}

func (a *Adapter) initTypeMetrics() {
	a.cmdMetrics = map[string]*cmdMetrics{}
	m := a.metrics()
	for _, t := range commandTypes {
		a.cmdMetrics[t] = &cmdMetrics{in: m.MessagesIn.WithLabelValues(protocolName, t),
			out: m.MessagesOut.WithLabelValues(protocolName, t), latency: m.Latency.WithLabelValues(protocolName, t)}
	}
}

// typeMetrics returns the series of a command type (typ is a known type or "unknown").
func (a *Adapter) typeMetrics(typ string) *cmdMetrics {
	if tm := a.cmdMetrics[typ]; tm != nil {
		return tm
	}
	return a.cmdMetrics["unknown"]
}

func knownType(t string) bool {
	switch t {
	case "System:ping", "Item:claim", "Item:store", "Item:fail", "Item:finish":
		return true
	}
	return false
}

func (s *session) dispatch(req *Request) (int, any, error) {
	if !knownType(req.Type) {
		return 0, nil, errStatus(404, "Request type %s does not exist", req.Type)
	}
	if s.a.minVersion != "" && versionLess(s.version, s.a.minVersion) {
		return 0, nil, errStatus(426, "Client version %q is older than the minimum %q; please update your client", s.version, s.a.minVersion)
	}
	ctx, cancel := context.WithTimeout(s.a.ctx, s.a.cmdTimeout)
	defer cancel()
	p := newParams(req.Params)
	q := s.a.q
	switch req.Type {
	case "System:ping":
		if e := p.Err(); e != "" {
			return 0, nil, errStatus(400, "%s", e)
		}
		if err := q.Renew(ctx, s.pipeline); err != nil {
			return 0, nil, err
		}
		return 204, nil, nil

	case "Item:claim":
		ptype := p.String("pipeline_type", false)
		if _, ok := req.Params["pipeline_type"]; !ok {
			ptype = p.String("pipeline", true)
		}
		if e := p.Err(); e != "" {
			return 0, nil, errStatus(400, "%s", e)
		}
		if ptype == "" {
			return 0, nil, errStatus(400, "Parameter pipeline_type must not be empty")
		}
		lim := s.a.limits(ctx, s.pipeline, s.limits)
		if lim.Budget > 0 && q.index.countPipeline(s.pipeline) >= lim.Budget {
			return 0, nil, errStatus(429, "Claim budget of %d open claims reached", lim.Budget)
		}
		if !s.a.rate.allow(s.pipeline, lim.ClaimsPerMinute, time.Now()) {
			return 0, nil, errStatus(429, "Claim rate limit of %d per minute exceeded, slow down", lim.ClaimsPerMinute)
		}
		rec, err := q.Claim(ctx, ptype, s.pipeline, s.version)
		if err != nil {
			return 0, nil, err
		}
		if rec == nil {
			return 200, map[string]any{"item": nil, "message": "No items found."}, nil
		}
		s.a.m.claims.Inc()
		return 200, claimAnswer{rec: rec, infoURL: s.a.infoURL}, nil

	case "Item:store":
		id := p.String("id", true)
		rtype := p.String("result_type", true)
		attempt, hasAttempt := p.Int("attempt", false)
		if _, ok := req.Params["attempt"]; !ok {
			attempt, hasAttempt = p.Int("tries", false) // the name before 2025-02-28
		}
		result := p.Raw("result", true)
		decode := p.Strings("decode_fields")
		if e := p.Err(); e != "" {
			return 0, nil, errStatus(400, "%s", e)
		}
		if !hasAttempt {
			return 0, nil, errStatus(400, "Missing parameter: attempt")
		}
		if rtype == "" {
			return 0, nil, errStatus(400, "Parameter result_type must not be empty")
		}
		if !reID.MatchString(id) {
			return 0, nil, errStatus(404, "Item %s not found", id)
		}
		newID, err := q.Store(ctx, id, s.pipeline, attempt, rtype, result, decode)
		if err != nil {
			return 0, nil, err
		}
		s.a.m.stores.Inc()
		return 201, map[string]any{"new_id": newID}, nil

	case "Item:fail":
		id := p.String("id", true)
		msg := p.String("message", true)
		attempt, hasAttempt := p.Int("attempt", false)
		fatal := p.Bool("fatal", false)
		if e := p.Err(); e != "" {
			return 0, nil, errStatus(400, "%s", e)
		}
		if !reID.MatchString(id) {
			return 0, nil, errStatus(404, "Item %s not found", id)
		}
		if err := q.Fail(ctx, id, s.pipeline, msg, attempt, hasAttempt, fatal); err != nil {
			return 0, nil, err
		}
		s.a.m.fails.Inc()
		return 204, nil, nil

	case "Item:finish":
		id := p.String("id", true)
		if e := p.Err(); e != "" {
			return 0, nil, errStatus(400, "%s", e)
		}
		if !reID.MatchString(id) {
			return 0, nil, errStatus(404, "Item %s not found", id)
		}
		if err := q.Finish(ctx, id, s.pipeline); err != nil {
			return 0, nil, err
		}
		s.a.m.finishes.Inc()
		return 204, nil, nil
	}
	return 0, nil, errStatus(404, "Request type %s does not exist", req.Type)
}

// versionLess compares client versions like "20260412.01" segment by segment (numerically when
// both segments are numbers); a missing version is older than any.
func versionLess(v, minimum string) bool {
	if v == "" {
		return true
	}
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' || r == '+' })
	}
	a, b := split(v), split(minimum)
	for i := 0; i < len(a) && i < len(b); i++ {
		x, errx := strconv.ParseInt(a[i], 10, 64)
		y, erry := strconv.ParseInt(b[i], 10, 64)
		if errx == nil && erry == nil {
			if x != y {
				return x < y
			}
			continue
		}
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b) && func() bool {
		// "1.2" < "1.2.1"; but a non-numeric suffix like "-debug" is not "newer"
		for _, seg := range b[len(a):] {
			if _, err := strconv.ParseInt(seg, 10, 64); err == nil {
				return true
			}
		}
		return false
	}()
}

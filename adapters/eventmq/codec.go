package eventmq

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// This file converts eMQP frames to structs and back. It does no I/O.

// ProtocolVersion is the second frame of every eMQP message.
const ProtocolVersion = "eMQP/1.0"

// Commands of eMQP/1.0 (§2.2 of the spec, as the original code sends them).
const (
	CmdRequest              = "REQUEST"
	CmdReply                = "REPLY"
	CmdInform               = "INFORM"
	CmdAck                  = "ACK"
	CmdReady                = "READY"
	CmdHeartbeat            = "HEARTBEAT"
	CmdKBYE                 = "KBYE"
	CmdDisconnect           = "DISCONNECT"
	CmdSchedule             = "SCHEDULE"
	CmdUnschedule           = "UNSCHEDULE"
	CmdPublish              = "PUBLISH"
	CmdStatus               = "STATUS"
	CmdRouterShowWorkers    = "ROUTER_SHOW_WORKERS"
	CmdRouterShowSchedulers = "ROUTER_SHOW_SCHEDULERS"
	CmdHello                = "HELLO"
)

// Client types announced in INFORM.
const (
	TypeWorker    = "worker"
	TypeScheduler = "scheduler"
)

// DefaultQueue and DefaultWeight are conf.DEFAULT_QUEUE_NAME / WEIGHT.
const (
	DefaultQueue  = "default"
	DefaultWeight = 10
)

// Limits on the string frames we accept (they end up in subjects, headers and KV values).
const (
	MaxMsgIDLen     = 255
	MaxQueueNameLen = 255
	MaxHeadersLen   = 4096
	MaxTopicLen     = 1024
	MaxQueues       = 64
)

// Codec errors (wrapped with context; test with errors.Is).
var (
	ErrShort    = errors.New("eventmq: too few frames")
	ErrEnvelope = errors.New("eventmq: frame 0 is not empty")
	ErrVersion  = errors.New("eventmq: not eMQP/1.0")
	ErrCommand  = errors.New("eventmq: bad command")
	ErrFrames   = errors.New("eventmq: wrong number of frames")
	ErrField    = errors.New("eventmq: bad field")
)

// Message is one eMQP message without the routing id: [”, 'eMQP/1.0', Command, MsgID, Body...].
type Message struct {
	Command string
	MsgID   string
	Body    [][]byte
}

// Parse decodes the common framing. It checks the empty first frame, the protocol version, the
// command name (upper case letters and '_') and the msgid (printable, at most MaxMsgIDLen bytes).
func Parse(frames [][]byte) (Message, error) {
	if len(frames) < 4 {
		return Message{}, fmt.Errorf("%d frames: %w", len(frames), ErrShort)
	}
	if len(frames[0]) != 0 {
		return Message{}, ErrEnvelope
	}
	if string(frames[1]) != ProtocolVersion {
		return Message{}, fmt.Errorf("version %q: %w", clip(frames[1]), ErrVersion)
	}
	cmd := frames[2]
	if len(cmd) == 0 || len(cmd) > 32 {
		return Message{}, fmt.Errorf("command %q: %w", clip(cmd), ErrCommand)
	}
	for _, c := range cmd {
		if (c < 'A' || c > 'Z') && c != '_' {
			return Message{}, fmt.Errorf("command %q: %w", clip(cmd), ErrCommand)
		}
	}
	if err := checkText("msgid", frames[3], MaxMsgIDLen, false); err != nil {
		return Message{}, err
	}
	return Message{Command: string(cmd), MsgID: string(frames[3]), Body: frames[4:]}, nil
}

// Frames encodes m as the frames a DEALER sends (or a ROUTER sends after the routing id).
func (m Message) Frames() [][]byte {
	out := make([][]byte, 0, 4+len(m.Body))
	out = append(out, []byte{}, []byte(ProtocolVersion), []byte(m.Command), []byte(m.MsgID))
	return append(out, m.Body...)
}

// Encode builds the frames of a message with a fresh msgid (as send_emqp_message does).
func Encode(cmd string, body ...string) [][]byte {
	m := Message{Command: cmd, MsgID: NewID()}
	for _, b := range body {
		m.Body = append(m.Body, []byte(b))
	}
	return m.Frames()
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "…"
	}
	return string(b)
}

// checkText requires valid UTF-8 without control characters (the values go into NATS headers,
// subjects and KV values) and a length limit.
func checkText(what string, b []byte, max int, allowEmpty bool) error {
	if len(b) == 0 && !allowEmpty {
		return fmt.Errorf("empty %s: %w", what, ErrField)
	}
	if len(b) > max {
		return fmt.Errorf("%s of %d bytes (max %d): %w", what, len(b), max, ErrField)
	}
	if !utf8.Valid(b) {
		return fmt.Errorf("%s is not UTF-8: %w", what, ErrField)
	}
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%s %q has control characters: %w", what, clip(b), ErrField)
		}
	}
	return nil
}

// NewID returns a random UUID4 string, as str(uuid.uuid4()).
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return formatUUID(b, 4)
}

func formatUUID(b [16]byte, version byte) string {
	b[6] = b[6]&0x0f | version<<4
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// Timestamp formats t as Python's str(time.time()) does (e.g. "1795315928.0492513").
func Timestamp(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixNano())/1e9, 'f', -1, 64)
}

// Headers is the parsed comma-separated header frame.
type Headers struct {
	Raw            string
	ReplyRequested bool
	Guarantee      bool
	NoHaste        bool
	// RetryCount is retry-count:N (-1 when absent).
	RetryCount int
	// Timeout is timeout:N in seconds (0 when absent).
	Timeout int
	// RunCount is run_count:N (-1 when absent: run forever).
	RunCount int
}

// ParseHeaders parses a header frame. Unknown headers are kept in Raw and ignored; a bad number
// is an error.
func ParseHeaders(s string) (Headers, error) {
	h := Headers{Raw: s, RetryCount: -1, RunCount: -1}
	if s == "" {
		return h, nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		name, val, hasVal := strings.Cut(part, ":")
		num := func() (int, error) {
			n, err := strconv.Atoi(strings.TrimSpace(val))
			if err != nil || n < -1 {
				return 0, fmt.Errorf("header %q: %w", part, ErrField)
			}
			return n, nil
		}
		var err error
		switch name {
		case "reply-requested":
			h.ReplyRequested = true
		case "guarantee":
			h.Guarantee = true
		case "nohaste":
			h.NoHaste = true
		case "retry-count":
			if hasVal {
				h.RetryCount, err = num()
			}
		case "timeout":
			if hasVal {
				h.Timeout, err = num()
			}
		case "run_count":
			if hasVal {
				h.RunCount, err = num()
			}
		}
		if err != nil {
			return h, err
		}
	}
	return h, nil
}

// Request is a REQUEST: [”, eMQP/1.0, REQUEST, msgid, queue, headers, payload].
type Request struct {
	MsgID   string
	Queue   string
	Headers Headers
	Payload []byte
}

// ParseRequest decodes a REQUEST body. The payload must be JSON (json.dumps(["run", {...}])).
func ParseRequest(m Message) (Request, error) {
	if len(m.Body) != 3 {
		return Request{}, fmt.Errorf("REQUEST with %d frames: %w", len(m.Body)+4, ErrFrames)
	}
	if err := checkText("queue", m.Body[0], MaxQueueNameLen, true); err != nil {
		return Request{}, err
	}
	if err := checkText("headers", m.Body[1], MaxHeadersLen, true); err != nil {
		return Request{}, err
	}
	h, err := ParseHeaders(string(m.Body[1]))
	if err != nil {
		return Request{}, err
	}
	if !json.Valid(m.Body[2]) {
		return Request{}, fmt.Errorf("REQUEST payload is not JSON: %w", ErrField)
	}
	q := string(m.Body[0])
	return Request{MsgID: m.MsgID, Queue: q, Headers: h, Payload: m.Body[2]}, nil
}

// Frames are the 7 frames of the REQUEST as the client sent them (and as a worker receives them).
func (r Request) Frames() [][]byte {
	return Message{Command: CmdRequest, MsgID: r.MsgID, Body: [][]byte{[]byte(r.Queue), []byte(r.Headers.Raw), r.Payload}}.Frames()
}

// QueueWeight is one [weight, name] entry of an INFORM.
type QueueWeight struct {
	Weight int
	Name   string
}

// MarshalJSON writes [weight, name] as the original does.
func (q QueueWeight) MarshalJSON() ([]byte, error) {
	return json.Marshal([]any{q.Weight, q.Name})
}

// UnmarshalJSON reads [weight, name].
func (q *QueueWeight) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != 2 {
		return fmt.Errorf("queue entry %s: %w", clip(b), ErrField)
	}
	var w float64
	if err := json.Unmarshal(raw[0], &w); err != nil {
		return fmt.Errorf("queue weight %s: %w", raw[0], ErrField)
	}
	if err := json.Unmarshal(raw[1], &q.Name); err != nil {
		return fmt.Errorf("queue name %s: %w", raw[1], ErrField)
	}
	q.Weight = int(w)
	return nil
}

// Inform is an INFORM: [”, eMQP/1.0, INFORM, msgid, queues, type].
type Inform struct {
	MsgID  string
	Queues []QueueWeight
	Type   string
}

// ParseInform decodes an INFORM. An empty queue list means [[10, "default"]] (conf.QUEUES).
func ParseInform(m Message) (Inform, error) {
	if len(m.Body) != 2 {
		return Inform{}, fmt.Errorf("INFORM with %d frames: %w", len(m.Body)+4, ErrFrames)
	}
	in := Inform{MsgID: m.MsgID, Type: string(m.Body[1])}
	if in.Type != TypeWorker && in.Type != TypeScheduler {
		return Inform{}, fmt.Errorf("INFORM type %q: %w", clip(m.Body[1]), ErrField)
	}
	if len(m.Body[0]) == 0 {
		if in.Type == TypeWorker {
			in.Queues = []QueueWeight{{DefaultWeight, DefaultQueue}}
		}
		return in, nil
	}
	qs, err := ParseQueues(m.Body[0])
	if err != nil {
		return Inform{}, err
	}
	in.Queues = qs
	return in, nil
}

// ParseQueues decodes a JSON list of [weight, name] pairs.
func ParseQueues(b []byte) ([]QueueWeight, error) {
	var raw [][]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("INFORM queues %q: %w", clip(b), ErrField)
	}
	if len(raw) == 0 || len(raw) > MaxQueues {
		return nil, fmt.Errorf("INFORM with %d queues: %w", len(raw), ErrField)
	}
	var out []QueueWeight
	seen := map[string]bool{}
	for _, e := range raw {
		if len(e) != 2 {
			return nil, fmt.Errorf("INFORM queue entry of %d items: %w", len(e), ErrField)
		}
		var w float64
		var name string
		if err := json.Unmarshal(e[0], &w); err != nil {
			return nil, fmt.Errorf("INFORM queue weight %s: %w", e[0], ErrField)
		}
		if err := json.Unmarshal(e[1], &name); err != nil {
			return nil, fmt.Errorf("INFORM queue name %s: %w", e[1], ErrField)
		}
		if err := checkText("queue", []byte(name), MaxQueueNameLen, false); err != nil {
			return nil, err
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		out = append(out, QueueWeight{Weight: int(w), Name: name})
	}
	return out, nil
}

// WorkerReply is a worker's job result: [”, eMQP/1.0, REPLY, msgid, json({"value": ret}), request msgid].
type WorkerReply struct {
	MsgID        string
	Result       []byte
	RequestMsgID string
}

// ParseWorkerReply decodes a result REPLY.
func ParseWorkerReply(m Message) (WorkerReply, error) {
	if len(m.Body) != 2 {
		return WorkerReply{}, fmt.Errorf("REPLY with %d frames: %w", len(m.Body)+4, ErrFrames)
	}
	if err := checkText("request msgid", m.Body[1], MaxMsgIDLen, false); err != nil {
		return WorkerReply{}, err
	}
	return WorkerReply{MsgID: m.MsgID, Result: m.Body[0], RequestMsgID: string(m.Body[1])}, nil
}

// Schedule is a SCHEDULE or UNSCHEDULE:
// [”, eMQP/1.0, SCHEDULE, msgid, queue, headers, interval_secs, payload, cron].
type Schedule struct {
	MsgID    string
	Queue    string
	Headers  Headers
	Interval int // seconds; -1 means cron
	Payload  []byte
	Cron     string
}

// ParseSchedule decodes a SCHEDULE/UNSCHEDULE. For SCHEDULE, an interval < 0 needs a valid cron
// expression (checked by the scheduler).
func ParseSchedule(m Message) (Schedule, error) {
	if len(m.Body) != 5 {
		return Schedule{}, fmt.Errorf("%s with %d frames: %w", m.Command, len(m.Body)+4, ErrFrames)
	}
	if err := checkText("queue", m.Body[0], MaxQueueNameLen, true); err != nil {
		return Schedule{}, err
	}
	if err := checkText("headers", m.Body[1], MaxHeadersLen, true); err != nil {
		return Schedule{}, err
	}
	h, err := ParseHeaders(string(m.Body[1]))
	if err != nil {
		return Schedule{}, err
	}
	iv, err := strconv.Atoi(strings.TrimSpace(string(m.Body[2])))
	if err != nil {
		return Schedule{}, fmt.Errorf("interval %q: %w", clip(m.Body[2]), ErrField)
	}
	if iv < -1 {
		iv = -1
	}
	if !json.Valid(m.Body[3]) {
		return Schedule{}, fmt.Errorf("%s payload is not JSON: %w", m.Command, ErrField)
	}
	if err := checkText("cron", m.Body[4], 256, true); err != nil {
		return Schedule{}, err
	}
	q := string(m.Body[0])
	if q == "" {
		q = DefaultQueue
	}
	return Schedule{MsgID: m.MsgID, Queue: q, Headers: h, Interval: iv, Payload: m.Body[3], Cron: string(m.Body[4])}, nil
}

// Publish is a PUBLISH to the publisher device: [”, eMQP/1.0, PUBLISH, msgid, topic, json(msg)].
type Publish struct {
	MsgID string
	Topic string
	Data  []byte
}

// ParsePublish decodes a PUBLISH.
func ParsePublish(m Message) (Publish, error) {
	if len(m.Body) != 2 {
		return Publish{}, fmt.Errorf("PUBLISH with %d frames: %w", len(m.Body)+4, ErrFrames)
	}
	if len(m.Body[0]) > MaxTopicLen || !utf8.Valid(m.Body[0]) {
		return Publish{}, fmt.Errorf("PUBLISH topic: %w", ErrField)
	}
	return Publish{MsgID: m.MsgID, Topic: string(m.Body[0]), Data: m.Body[1]}, nil
}

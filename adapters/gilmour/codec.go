package gilmour

// codec.go: the proxy's HTTP bodies and the Gilmour envelope <-> Go structs. No I/O here.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Node states (spec §1.4).
const (
	StatusOK          = "ok"
	StatusUnavailable = "unavailable"
	StatusDirty       = "dirty"
)

// DefaultHealthPath is the node-side health check path when the body names none.
const DefaultHealthPath = "/health"

// maxTopicLen bounds a topic (NATS subjects have no hard limit, but topics become subjects and
// metric labels).
const maxTopicLen = 512

// Sub is one slot or service subscription of a node (spec §1.3 Slot / Service).
type Sub struct {
	Topic   string `json:"topic"`
	Group   string `json:"group,omitempty"`
	Path    string `json:"path"`
	Timeout int    `json:"timeout,omitempty"` // seconds; 0 = the proxy's default
}

// NodeCreate is the body of POST /nodes.
type NodeCreate struct {
	Port        int
	Host        string
	HealthCheck string
	Slots       []Sub
	Services    []Sub
}

// CreateResponse is the answer of POST /nodes.
type CreateResponse struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// StatusResponse is the answer of every control route.
type StatusResponse struct {
	Status string `json:"status"`
}

// NodeDetail is the answer of GET /nodes/:id.
type NodeDetail struct {
	ID          string `json:"id"`
	Host        string `json:"host"`
	Port        int    `json:"port"`
	HealthCheck string `json:"health_check"`
	Slots       []Sub  `json:"slots"`
	Services    []Sub  `json:"services"`
	Status      string `json:"status"`
}

// PublishRequest is the body of POST /request/:id.
type PublishRequest struct {
	Topic       string
	Composition *Step
	Message     json.RawMessage
	Timeout     int // seconds; 0 = the proxy's default
}

// Message is one message of a response (data + code).
type Message struct {
	Data json.RawMessage `json:"data"`
	Code int             `json:"code"`
}

// PublishResponse is the answer of POST /request/:id; its code is also the HTTP status.
type PublishResponse struct {
	Messages []Message `json:"messages"`
	Code     int       `json:"code"`
	Length   int       `json:"length"`
}

// SignalRequest is the body of POST /signal/:id.
type SignalRequest struct {
	Topic   string
	Message json.RawMessage
}

// HandlerCall is what the proxy POSTs to a node's service or slot path.
type HandlerCall struct {
	Topic   string          `json:"topic"`
	Sender  string          `json:"sender"`
	Data    json.RawMessage `json:"data"`
	Timeout int             `json:"timeout"`
}

// LambdaCall is what the proxy POSTs to the calling node for a lambda step.
type LambdaCall struct {
	Data json.RawMessage `json:"data"`
}

// Envelope is the Gilmour message on NATS (gilmour.request.*, gilmour.slot.*, replies).
type Envelope struct {
	Data   json.RawMessage `json:"data"`
	Code   int             `json:"code"`
	Sender string          `json:"sender"`
}

// ErrorPacket is published on gilmour.errors (Go library field names, §3.2).
type ErrorPacket struct {
	Code         int             `json:"code"`
	Sender       string          `json:"sender"`
	Topic        string          `json:"topic"`
	RequestData  json.RawMessage `json:"request_data"`
	UserData     json.RawMessage `json:"user_data"`
	Backtrace    string          `json:"backtrace"`
	Timestamp    string          `json:"timestamp"`
	MultiProcess bool            `json:"multi_process"`
}

// BadRequest is a decoding or validation error; the HTTP layer answers 400 with its text.
type BadRequest struct{ Reason string }

func (e *BadRequest) Error() string { return e.Reason }

func bad(format string, args ...any) error { return &BadRequest{Reason: fmt.Sprintf(format, args...)} }

// IsBadRequest reports whether err is a client error.
func IsBadRequest(err error) bool {
	var b *BadRequest
	return errors.As(err, &b)
}

var jsonNull = json.RawMessage("null")

// objectFields decodes body as one JSON object into its raw fields. Duplicate keys keep the last.
func objectFields(body []byte, what string) (map[string]json.RawMessage, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, bad("%s: empty body", what)
	}
	if body[0] != '{' {
		return nil, bad("%s: body must be a JSON object", what)
	}
	if m, ok := objectFieldsFast(body); ok {
		return m, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, bad("%s: malformed JSON: %v", what, err)
	}
	return m, nil
}

func present(raw json.RawMessage) bool { return len(raw) > 0 && string(raw) != "null" }

func getString(m map[string]json.RawMessage, key, what string) (string, error) {
	raw, ok := m[key]
	if !ok || !present(raw) {
		return "", nil
	}
	if s, ok := plainString(raw); ok {
		return s, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", bad("%s: %s must be a string", what, key)
	}
	return s, nil
}

// getInt reads a non-negative integer that may also be given as a decimal string.
func getInt(m map[string]json.RawMessage, key, what string) (int, error) {
	raw, ok := m[key]
	if !ok || !present(raw) {
		return 0, nil
	}
	var n json.Number
	var s string
	if raw[0] >= '0' && raw[0] <= '9' && json.Valid(raw) { // a plain number
		n = json.Number(raw)
	} else if err := json.Unmarshal(raw, &s); err == nil {
		n = json.Number(strings.TrimSpace(s))
	} else if err := json.Unmarshal(raw, &n); err != nil {
		return 0, bad("%s: %s must be an integer", what, key)
	}
	v, err := strconv.ParseInt(string(n), 10, 32)
	if err != nil || v < 0 {
		return 0, bad("%s: %s must be a non-negative integer", what, key)
	}
	return int(v), nil
}

// DecodeNodeCreate parses POST /nodes (spec body plus the variants of Decisions 1).
func DecodeNodeCreate(body []byte) (NodeCreate, error) {
	const what = "node"
	m, err := objectFields(body, what)
	if err != nil {
		return NodeCreate{}, err
	}
	var nc NodeCreate
	if _, ok := m["port"]; !ok {
		return nc, bad("node: missing port")
	}
	if nc.Port, err = getInt(m, "port", what); err != nil {
		return nc, err
	}
	if nc.Port < 1 || nc.Port > 65535 {
		return nc, bad("node: port must be between 1 and 65535")
	}
	if nc.Host, err = getString(m, "host", what); err != nil {
		return nc, err
	}
	if nc.Host != "" && !validHost(nc.Host) {
		return nc, bad("node: invalid host %q", nc.Host)
	}
	if nc.HealthCheck, err = getString(m, "health_check", what); err != nil {
		return nc, err
	}
	if nc.HealthCheck, err = normPath(nc.HealthCheck, DefaultHealthPath); err != nil {
		return nc, bad("node: health_check: %v", err)
	}
	if raw, ok := m["slots"]; ok && present(raw) {
		if nc.Slots, err = decodeSubList(raw, "slots", false); err != nil {
			return nc, err
		}
	}
	if raw, ok := m["services"]; ok && present(raw) {
		if nc.Services, err = decodeSubList(raw, "services", true); err != nil {
			return nc, err
		}
	}
	return nc, nil
}

// DecodeSubs parses the body of POST /nodes/:id/slots or /services: one {topic, group, path,
// timeout} object, or a topic-keyed map of them (Decisions 1), or an array.
func DecodeSubs(body []byte, service bool) ([]Sub, error) {
	what := "slot"
	if service {
		what = "service"
	}
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return nil, bad("%s: empty body", what)
	}
	if b[0] == '[' {
		return decodeSubList(b, what, service)
	}
	m, err := objectFields(b, what)
	if err != nil {
		return nil, err
	}
	if raw, ok := m["topic"]; ok {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			sub, err := decodeSub(m, "", what, service)
			if err != nil {
				return nil, err
			}
			return []Sub{sub}, nil
		}
	}
	return decodeSubList(b, what, service)
}

func decodeSubList(raw json.RawMessage, what string, service bool) ([]Sub, error) {
	raw = bytes.TrimSpace(raw)
	var out []Sub
	switch {
	case len(raw) > 0 && raw[0] == '[':
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, bad("%s: malformed list: %v", what, err)
		}
		for i, it := range items {
			m, err := objectFields(it, fmt.Sprintf("%s[%d]", what, i))
			if err != nil {
				return nil, err
			}
			s, err := decodeSub(m, "", fmt.Sprintf("%s[%d]", what, i), service)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
	case len(raw) > 0 && raw[0] == '{':
		var byTopic map[string]json.RawMessage
		if err := json.Unmarshal(raw, &byTopic); err != nil {
			return nil, bad("%s: malformed map: %v", what, err)
		}
		for _, topic := range sortedKeys(byTopic) {
			m, err := objectFields(byTopic[topic], fmt.Sprintf("%s %q", what, topic))
			if err != nil {
				return nil, err
			}
			s, err := decodeSub(m, topic, fmt.Sprintf("%s %q", what, topic), service)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
	default:
		return nil, bad("%s: must be a list or a topic-keyed map", what)
	}
	if len(out) > 1000 {
		return nil, bad("%s: too many subscriptions (max 1000)", what)
	}
	return out, nil
}

func decodeSub(m map[string]json.RawMessage, topic, what string, service bool) (Sub, error) {
	var s Sub
	var err error
	if s.Topic, err = getString(m, "topic", what); err != nil {
		return s, err
	}
	if s.Topic == "" {
		s.Topic = topic
	}
	if s.Group, err = getString(m, "group", what); err != nil {
		return s, err
	}
	p, err := getString(m, "path", what)
	if err != nil {
		return s, err
	}
	if p == "" {
		return s, bad("%s: missing path", what)
	}
	if s.Path, err = normPath(p, ""); err != nil {
		return s, bad("%s: path: %v", what, err)
	}
	if s.Timeout, err = getInt(m, "timeout", what); err != nil {
		return s, err
	}
	return s, ValidateSub(s, service)
}

// ValidateSub checks a slot (service=false) or a service subscription.
func ValidateSub(s Sub, service bool) error {
	kind := "slot"
	if service {
		kind = "service"
	}
	if err := ValidateTopic(s.Topic, !service); err != nil {
		return bad("%s: %v", kind, err)
	}
	if service && s.Group == "" {
		return bad("service %q: missing group (services need an exclusion group)", s.Topic)
	}
	if s.Group != "" && !validGroup(s.Group) {
		return bad("%s %q: invalid group %q", kind, s.Topic, s.Group)
	}
	return nil
}

// ValidateTopic checks that topic can become a NATS subject: dot-separated non-empty tokens
// without spaces, control characters or '>'; '*' (a Gilmour glob) only when wildcard is allowed.
func ValidateTopic(topic string, wildcard bool) error {
	if topic == "" {
		return errors.New("missing topic")
	}
	if len(topic) > maxTopicLen {
		return fmt.Errorf("topic longer than %d bytes", maxTopicLen)
	}
	if !utf8.ValidString(topic) {
		return errors.New("topic is not valid UTF-8")
	}
	for _, r := range topic {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '>' {
			return fmt.Errorf("invalid topic %q: no spaces, control characters or '>'", topic)
		}
		if r == '*' && !wildcard {
			return fmt.Errorf("invalid topic %q: wildcards are not allowed here", topic)
		}
	}
	for _, tok := range strings.Split(topic, ".") {
		if tok == "" {
			return fmt.Errorf("invalid topic %q: empty token", topic)
		}
	}
	return nil
}

func validGroup(g string) bool {
	if len(g) > 256 || !utf8.ValidString(g) {
		return false
	}
	for _, r := range g {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func validHost(h string) bool {
	if len(h) > 255 {
		return false
	}
	for _, r := range h {
		if !(r == '.' || r == '-' || r == ':' || r == '[' || r == ']' || r == '_' || r == '%' ||
			(r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')) {
			return false
		}
	}
	return true
}

// normPath returns p with a leading slash (the implementations stored paths that way), def when
// p is empty.
func normPath(p, def string) (string, error) {
	if p == "" {
		return def, nil
	}
	if len(p) > 2048 {
		return "", errors.New("too long")
	}
	for _, r := range p {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '#' {
			return "", fmt.Errorf("invalid path %q", p)
		}
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p, nil
}

// DecodePublishRequest parses POST /request/:id.
func DecodePublishRequest(body []byte) (PublishRequest, error) {
	const what = "request"
	m, err := objectFields(body, what)
	if err != nil {
		return PublishRequest{}, err
	}
	var pr PublishRequest
	if pr.Topic, err = getString(m, "topic", what); err != nil {
		return pr, err
	}
	if pr.Timeout, err = getInt(m, "timeout", what); err != nil {
		return pr, err
	}
	if pr.Timeout == 0 {
		// impl #2 sent {opts:{timeout}}
		if raw, ok := m["opts"]; ok && present(raw) {
			om, err := objectFields(raw, "request opts")
			if err != nil {
				return pr, err
			}
			if pr.Timeout, err = getInt(om, "timeout", "request opts"); err != nil {
				return pr, err
			}
		}
	}
	pr.Message = jsonNull
	if raw, ok := m["message"]; ok {
		pr.Message = raw
	} else if raw, ok := m["data"]; ok {
		pr.Message = raw
	}
	comp, hasComp := m["composition"]
	hasComp = hasComp && present(comp)
	switch {
	case pr.Topic != "" && hasComp:
		return pr, bad("request: give either topic or composition, not both")
	case pr.Topic == "" && !hasComp:
		return pr, bad("request: missing topic or composition")
	case hasComp:
		if pr.Composition, err = ParseComposition(comp); err != nil {
			return pr, err
		}
	default:
		if err := ValidateTopic(pr.Topic, false); err != nil {
			return pr, bad("request: %v", err)
		}
	}
	return pr, nil
}

// DecodeSignalRequest parses POST /signal/:id.
func DecodeSignalRequest(body []byte) (SignalRequest, error) {
	const what = "signal"
	m, err := objectFields(body, what)
	if err != nil {
		return SignalRequest{}, err
	}
	var sr SignalRequest
	if sr.Topic, err = getString(m, "topic", what); err != nil {
		return sr, err
	}
	if err := ValidateTopic(sr.Topic, false); err != nil {
		return sr, bad("signal: %v", err)
	}
	sr.Message = jsonNull
	if raw, ok := m["message"]; ok {
		sr.Message = raw
	} else if raw, ok := m["data"]; ok {
		sr.Message = raw
	}
	return sr, nil
}

// DecodeEnvelope reads a Gilmour envelope from NATS. A payload that is not an envelope object
// becomes the data (Ruby tolerated raw payloads); a payload that is not JSON becomes a string.
// Code 0 means 200.
func DecodeEnvelope(b []byte) Envelope {
	if env, ok := decodeEnvelopeFast(b); ok {
		return env
	}
	return decodeEnvelopeSlow(b)
}

// decodeEnvelopeSlow is DecodeEnvelope with encoding/json, for every payload.
func decodeEnvelopeSlow(b []byte) Envelope {
	tb := bytes.TrimSpace(b)
	if len(tb) > 0 && tb[0] == '{' {
		// fast path: a well-typed envelope
		var w struct {
			Data   json.RawMessage `json:"data"`
			Code   *float64        `json:"code"`
			Sender *string         `json:"sender"`
		}
		if json.Unmarshal(tb, &w) == nil && (w.Data != nil || w.Code != nil || w.Sender != nil) {
			env := Envelope{Data: w.Data, Code: 200}
			if len(env.Data) == 0 {
				env.Data = jsonNull
			}
			if w.Code != nil && *w.Code >= 1 && *w.Code < 1000 {
				env.Code = int(*w.Code)
			}
			if w.Sender != nil {
				env.Sender = *w.Sender
			}
			return env
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(tb, &m) == nil {
			_, hasData := m["data"]
			_, hasCode := m["code"]
			_, hasSender := m["sender"]
			if hasData || hasCode || hasSender {
				var env Envelope
				env.Data = m["data"]
				if len(env.Data) == 0 {
					env.Data = jsonNull
				}
				var code float64
				if json.Unmarshal(m["code"], &code) == nil && code >= 0 && code < 1000 {
					env.Code = int(code)
				}
				_ = json.Unmarshal(m["sender"], &env.Sender)
				if env.Code == 0 {
					env.Code = 200
				}
				return env
			}
		}
	}
	return Envelope{Data: RawData(b), Code: 200}
}

// EncodeEnvelope writes the envelope as JSON.
func EncodeEnvelope(e Envelope) []byte {
	if len(e.Data) == 0 {
		e.Data = jsonNull
	}
	if b, ok := encodeEnvelopeFast(e); ok {
		return b
	}
	return encodeEnvelopeSlow(e)
}

// encodeEnvelopeSlow is EncodeEnvelope with encoding/json (e.Data not empty).
func encodeEnvelopeSlow(e Envelope) []byte {
	b, err := json.Marshal(e)
	if err != nil { // data was not valid JSON: send it as a string
		e.Data = RawData(e.Data)
		b, _ = json.Marshal(e)
	}
	return b
}

// RawData returns b as a JSON value: b itself when it is valid JSON, else b as a JSON string;
// an empty body is null. This is how a node's answer is returned "unmodified" as data.
func RawData(b []byte) json.RawMessage {
	tb := bytes.TrimSpace(b)
	if len(tb) == 0 {
		return jsonNull
	}
	if json.Valid(tb) {
		return json.RawMessage(append([]byte(nil), tb...))
	}
	s, _ := json.Marshal(strings.ToValidUTF8(string(b), "\uFFFD"))
	return s
}

// StringData is s as a JSON string.
func StringData(s string) json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}

// NewResponse builds the P1 answer: code is the max of the messages' codes.
func NewResponse(msgs []Message) PublishResponse {
	r := PublishResponse{Messages: msgs, Length: len(msgs)}
	if r.Messages == nil {
		r.Messages = []Message{}
	}
	for _, m := range msgs {
		r.Code = max(r.Code, m.Code)
	}
	if r.Code == 0 {
		r.Code = 200
	}
	return r
}

// NewID returns a random uuid (version 4, dashed) for node ids and senders.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// validID reports whether id can be a node id (our uuids; other ids are simply not found).
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c == '-' || c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
			return false
		}
	}
	return true
}

package tracker

// codec.go turns Tracker protocol frames into structs and back. It does no I/O.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Frame kinds a decoded text frame can be.
const (
	kindRequest = iota + 1
	kindHello
)

// Request is one decoded client frame: a request ({"type","seq","request"}) or the hello ({"v", "p"}).
type Request struct {
	Kind int
	Type string
	Seq  int64
	// Params is the "request" object; nil when missing or null.
	Params map[string]json.RawMessage
	// Hello fields.
	Version  string
	Protocol int
}

// FrameError is a frame that cannot be handled; it becomes an error response. HasSeq says whether
// the request's seq could be read (an error never goes out with seq null).
type FrameError struct {
	Status  int
	Message string
	Seq     int64
	HasSeq  bool
}

func (e *FrameError) Error() string { return fmt.Sprintf("%d %s", e.Status, e.Message) }

// DecodeFrame parses one text frame. first says whether it is the connection's first frame (only
// the first frame may be the hello).
func DecodeFrame(data []byte, first bool) (*Request, *FrameError) {
	top, ok := quickObject(data, false)
	if !ok {
		// json.Unmarshal refuses anything after the object (no Decoder: this runs on every frame)
		if err := json.Unmarshal(data, &top); err != nil || top == nil {
			return nil, &FrameError{Status: 400, Message: "Invalid JSON"}
		}
	}
	return decodeTop(top, first)
}

// decodeFrameSlow is DecodeFrame with encoding/json only (the reference of the quick paths).
func decodeFrameSlow(data []byte, first bool) (*Request, *FrameError) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return nil, &FrameError{Status: 400, Message: "Invalid JSON"}
	}
	return decodeTopWith(top, first, false)
}

func decodeTop(top map[string]json.RawMessage, first bool) (*Request, *FrameError) {
	return decodeTopWith(top, first, true)
}

func decodeTopWith(top map[string]json.RawMessage, first, quick bool) (*Request, *FrameError) {
	_, hasType := top["type"]
	if first && !hasType {
		if v, ok := top["v"]; ok {
			return decodeHello(v, top["p"])
		}
	}
	r := &Request{Kind: kindRequest}
	seqRaw, hasSeq := top["seq"]
	if hasSeq {
		seq, ok := parseInt(seqRaw)
		if !ok {
			return nil, &FrameError{Status: 400, Message: "Missing message data"}
		}
		r.Seq = seq
	}
	typRaw, ok := top["type"]
	if !ok || !hasSeq {
		return nil, &FrameError{Status: 400, Message: "Missing message data", Seq: r.Seq, HasSeq: hasSeq}
	}
	if s, ok := quickString(typRaw); quick && ok {
		r.Type = s
	} else if err := json.Unmarshal(typRaw, &r.Type); err != nil {
		return nil, &FrameError{Status: 400, Message: "Missing message data", Seq: r.Seq, HasSeq: true}
	}
	if r.Type == "" {
		return nil, &FrameError{Status: 400, Message: "Missing message data", Seq: r.Seq, HasSeq: true}
	}
	if raw, ok := top["request"]; ok && !isNull(raw) {
		if len(bytes.TrimSpace(raw)) == 0 || bytes.TrimSpace(raw)[0] != '{' {
			return nil, &FrameError{Status: 400, Message: "Parameter request must be an object or null", Seq: r.Seq, HasSeq: true}
		}
		var params map[string]json.RawMessage
		if quick {
			params, quick = quickObject(raw, true)
		}
		if !quick {
			if err := json.Unmarshal(raw, &params); err != nil {
				return nil, &FrameError{Status: 400, Message: "Parameter request must be an object or null", Seq: r.Seq, HasSeq: true}
			}
		}
		r.Params = params
	}
	return r, nil
}

// quickObject is json.Unmarshal(b, &m) for a map[string]json.RawMessage, without reflection, for
// valid objects whose keys are plain printable ASCII (no escapes); false for anything else (the
// caller then uses json.Unmarshal). copyVals copies the values out of b (otherwise they point
// into b).
func quickObject(b []byte, copyVals bool) (map[string]json.RawMessage, bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' || !json.Valid(b) {
		return nil, false
	}
	if copyVals {
		b = bytes.Clone(b)
	}
	m := make(map[string]json.RawMessage, 4)
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return m, true
	}
	for i < len(b) {
		// key: b is valid JSON, so b[i] is '"'
		k := i + 1
		for k < len(b) && b[k] != '"' {
			if c := b[k]; c == '\\' || c < 0x20 || c >= 0x7f {
				return nil, false
			}
			k++
		}
		key := string(b[i+1 : k])
		i = skipSpace(b, k+1) + 1 // past ':'
		i = skipSpace(b, i)
		end := skipValue(b, i)
		m[key] = json.RawMessage(b[i:end:end])
		i = skipSpace(b, end)
		if i >= len(b) || b[i] == '}' {
			break
		}
		i = skipSpace(b, i+1) // past ','
	}
	return m, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value starting at b[i] (b is valid JSON).
func skipValue(b []byte, i int) int {
	depth := 0
	for i < len(b) {
		switch c := b[i]; c {
		case '"':
			i++
			for i < len(b) && b[i] != '"' {
				if b[i] == '\\' {
					i++
				}
				i++
			}
			i++
		case '{', '[':
			depth++
			i++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
			i++
		case ',':
			if depth == 0 {
				return i
			}
			i++
		case ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
			i++
		default:
			i++
		}
		if depth == 0 && i > 0 && (b[i-1] == '"' || b[i-1] == '}' || b[i-1] == ']') {
			return i
		}
	}
	return i
}

// quickString reads a JSON string of plain printable ASCII without escapes.
func quickString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	for _, c := range raw[1 : len(raw)-1] {
		if c == '\\' || c == '"' || c < 0x20 || c >= 0x7f {
			return "", false
		}
	}
	return string(raw[1 : len(raw)-1]), true
}

func decodeHello(v, p json.RawMessage) (*Request, *FrameError) {
	r := &Request{Kind: kindHello, Protocol: 1}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		if isNull(v) {
			s = ""
		} else {
			s = strings.Trim(string(bytes.TrimSpace(v)), `"`)
		}
	}
	if len(s) > 128 {
		s = s[:128]
	}
	r.Version = s
	if p != nil && !isNull(p) {
		n, ok := parseInt(p)
		if !ok {
			var ps string
			if json.Unmarshal(p, &ps) == nil {
				if v, err := strconv.ParseInt(ps, 10, 64); err == nil {
					n, ok = v, true
				}
			}
		}
		if !ok || n < math.MinInt32 || n > math.MaxInt32 {
			r.Protocol = 0
		} else {
			r.Protocol = int(n)
		}
	}
	return r, nil
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// parseInt reads a JSON integer (no fraction, no exponent, fits int64).
func parseInt(raw json.RawMessage) (int64, bool) {
	s := string(bytes.TrimSpace(raw))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}

// Params validates a request's parameters: every key must be known, required ones present, each
// of the right type. The first problem becomes a 400 naming the parameter.
type Params struct {
	m    map[string]json.RawMessage
	used map[string]bool
	err  string
}

func newParams(m map[string]json.RawMessage) *Params { return &Params{m: m, used: map[string]bool{}} }

func (p *Params) fail(msg string) {
	if p.err == "" {
		p.err = msg
	}
}

func (p *Params) get(name string, required bool) (json.RawMessage, bool) {
	p.used[name] = true
	raw, ok := p.m[name]
	if !ok || (isNull(raw) && required) {
		if required {
			p.fail("Missing parameter: " + name)
		}
		return nil, false
	}
	if isNull(raw) {
		return nil, false
	}
	return raw, true
}

// String reads a string parameter.
func (p *Params) String(name string, required bool) string {
	raw, ok := p.get(name, required)
	if !ok {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		p.fail("Parameter " + name + " must be a string")
	}
	return s
}

// Int reads an integer parameter; ok is false when it is absent.
func (p *Params) Int(name string, required bool) (int64, bool) {
	raw, ok := p.get(name, required)
	if !ok {
		return 0, false
	}
	n, good := parseInt(raw)
	if !good {
		p.fail("Parameter " + name + " must be an integer")
		return 0, false
	}
	return n, true
}

// Bool reads a boolean parameter.
func (p *Params) Bool(name string, required bool) bool {
	raw, ok := p.get(name, required)
	if !ok {
		return false
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		p.fail("Parameter " + name + " must be a boolean")
	}
	return b
}

// Raw reads a parameter of any JSON type.
func (p *Params) Raw(name string, required bool) json.RawMessage {
	p.used[name] = true
	raw, ok := p.m[name]
	if !ok {
		if required {
			p.fail("Missing parameter: " + name)
		}
		return nil
	}
	return raw
}

// Strings reads a list of strings.
func (p *Params) Strings(name string) []string {
	raw, ok := p.get(name, false)
	if !ok {
		return nil
	}
	var l []string
	if err := json.Unmarshal(raw, &l); err != nil {
		p.fail("Parameter " + name + " must be a list of strings")
	}
	return l
}

// Err reports the first problem, including parameters nobody asked for.
func (p *Params) Err() string {
	if p.err != "" {
		return p.err
	}
	var extra []string
	for k := range p.m {
		if !p.used[k] {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return "Unexpected parameter: " + extra[0]
	}
	return ""
}

// response is a frame the server sends.
type response struct {
	Status  int    `json:"status"`
	Message string `json:"message,omitempty"`
	Payload any    `json:"payload"`
	Seq     *int64 `json:"seq,omitempty"`
}

// EncodeResponse encodes a success response; payload nil encodes as null.
func EncodeResponse(status int, payload any, seq int64) []byte {
	b, err := json.Marshal(response{Status: status, Payload: payload, Seq: &seq})
	if err != nil {
		// payloads are built by this package; this cannot happen with valid data
		return EncodeError(&FrameError{Status: 500, Message: "An exception occured.", Seq: seq, HasSeq: true})
	}
	return b
}

// EncodeError encodes an error response: status, message, "payload": null and seq when known
// (never seq null: the client would take the frame for an advisory).
func EncodeError(e *FrameError) []byte {
	r := response{Status: e.Status, Message: e.Message}
	if e.HasSeq {
		s := e.Seq
		r.Seq = &s
	}
	b, _ := json.Marshal(r)
	return b
}

// advisory is an unsolicited frame (seq is always null).
type advisory struct {
	Type    string `json:"type"`
	Payload any    `json:"payload"`
	Seq     *int64 `json:"seq"`
}

// EncodeAdvisory encodes an advisory frame with "seq": null.
func EncodeAdvisory(typ string, payload any) []byte {
	b, _ := json.Marshal(advisory{Type: typ, Payload: payload})
	return b
}

// b85 is Python's base64.b85encode alphabet.
const b85Alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~"

var b85Index = func() (t [256]int16) {
	for i := range t {
		t[i] = -1
	}
	for i := 0; i < len(b85Alphabet); i++ {
		t[b85Alphabet[i]] = int16(i)
	}
	return t
}()

var errBase85 = errors.New("invalid base85")

// DecodeBase85 decodes Python's b85encode output (padding stripped, as b85encode(pad=False) does).
func DecodeBase85(s string) ([]byte, error) {
	pad := (5 - len(s)%5) % 5
	if pad == 4 {
		return nil, fmt.Errorf("%w: bad length %d", errBase85, len(s))
	}
	out := make([]byte, 0, (len(s)+pad)/5*4)
	for i := 0; i < len(s)+pad; i += 5 {
		var acc uint64
		for j := 0; j < 5; j++ {
			c := byte('~')
			if i+j < len(s) {
				c = s[i+j]
			}
			d := b85Index[c]
			if d < 0 {
				return nil, fmt.Errorf("%w: byte %q at %d", errBase85, c, i+j)
			}
			acc = acc*85 + uint64(d)
		}
		if acc > math.MaxUint32 {
			return nil, fmt.Errorf("%w: overflow in hunk at %d", errBase85, i)
		}
		out = append(out, byte(acc>>24), byte(acc>>16), byte(acc>>8), byte(acc))
	}
	return out[:len(out)-pad], nil
}

// AppendEvent appends e encoded exactly as json.Marshal encodes it, without reflection (an event
// goes out on every item change). Strings that need escaping and unusual numbers take
// json.Marshal's own path.
func AppendEvent(b []byte, e *Event) []byte {
	b = append(b, `{"event":`...)
	b = appendJSONString(b, e.Event)
	b = append(b, `,"id":`...)
	b = appendJSONString(b, e.ID)
	b = append(b, `,"item":`...)
	b = appendJSONString(b, e.Item)
	b = append(b, `,"pipeline_type":`...)
	b = appendJSONString(b, e.PipelineType)
	b = append(b, `,"status":`...)
	b = appendJSONString(b, e.Status)
	if e.Attempt != nil {
		b = append(b, `,"attempt":`...)
		b = strconv.AppendInt(b, int64(*e.Attempt), 10)
	}
	if e.Pipeline != "" {
		b = append(b, `,"pipeline":`...)
		b = appendJSONString(b, e.Pipeline)
	}
	if e.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendJSONString(b, e.Reason)
	}
	b = append(b, `,"time":`...)
	if f := math.Abs(e.Time); f == 0 || (f >= 1e-6 && f < 1e21) {
		b = strconv.AppendFloat(b, e.Time, 'f', -1, 64)
	} else {
		v, err := json.Marshal(e.Time)
		if err != nil { // NaN or Inf cannot be JSON
			v = []byte("0")
		}
		b = append(b, v...)
	}
	return append(b, '}')
}

// appendJSONString appends s as a JSON string: plain printable ASCII directly, anything else as
// json.Marshal writes it (HTML-safe escapes, invalid UTF-8 replaced).
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			v, _ := json.Marshal(s)
			return append(b, v...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

package zerotask

// fastjson.go: allocation-light JSON for the hot path. Decoding has a fast path for the common,
// well-formed request and falls back to encoding/json for anything unusual (which then also
// produces the error); FuzzFastDecode checks that both agree. Encoding writes the task record,
// queue message and notifications by hand in the shapes encoding/json gives them.

import (
	"bytes"
	"encoding/json"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// maxFastDepth bounds nesting on the fast path (deeper values take encoding/json's path).
const maxFastDepth = 64

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// scanValue validates the JSON value starting at b[i] (no leading space) and returns the index
// just after it, or -1 when it is not valid JSON (or nested deeper than maxFastDepth).
func scanValue(b []byte, i, depth int) int {
	if i >= len(b) {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		return scanString(b, i)
	case c == '{':
		if depth >= maxFastDepth {
			return -1
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1
		}
		for {
			if i >= len(b) || b[i] != '"' {
				return -1
			}
			if i = scanString(b, i); i < 0 {
				return -1
			}
			i = skipSpace(b, i)
			if i >= len(b) || b[i] != ':' {
				return -1
			}
			if i = scanValue(b, skipSpace(b, i+1), depth+1); i < 0 {
				return -1
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return -1
			}
			if b[i] == '}' {
				return i + 1
			}
			if b[i] != ',' {
				return -1
			}
			i = skipSpace(b, i+1)
		}
	case c == '[':
		if depth >= maxFastDepth {
			return -1
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1
		}
		for {
			if i = scanValue(b, i, depth+1); i < 0 {
				return -1
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return -1
			}
			if b[i] == ']' {
				return i + 1
			}
			if b[i] != ',' {
				return -1
			}
			i = skipSpace(b, i+1)
		}
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	case c == '-' || c >= '0' && c <= '9':
		return scanNumber(b, i)
	}
	return -1
}

func scanLiteral(b []byte, i int, lit string) int {
	if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
		return i + len(lit)
	}
	return -1
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func scanNumber(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return -1
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return -1
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	return i
}

// scanString validates the string starting at b[i] == '"' (the bytes must be valid UTF-8; the
// caller checks the whole frame) and returns the index after its closing quote.
func scanString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		case c == '\\':
			i++
			if i >= len(b) {
				return -1
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-i < 5 {
					return -1
				}
				for _, h := range b[i+1 : i+5] {
					if !(isDigit(h) || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		}
	}
	return -1
}

// plainKey returns a member name without escapes (ok false when it has any).
func plainKey(quoted []byte) (string, bool) {
	inner := quoted[1 : len(quoted)-1]
	if bytes.IndexByte(inner, '\\') >= 0 {
		return "", false
	}
	return string(inner), true
}

// plainKeyBytes is plainKey without the string (no allocation).
func plainKeyBytes(quoted []byte) ([]byte, bool) {
	inner := quoted[1 : len(quoted)-1]
	if bytes.IndexByte(inner, '\\') >= 0 {
		return nil, false
	}
	return inner, true
}

func asciiKey[S string | []byte](k S) bool {
	for i := 0; i < len(k); i++ {
		if k[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// fastRequest decodes a well-formed single request object exactly as json.Unmarshal into
// wireRequest would; ok is false for anything it does not handle (the caller falls back). The
// members point into frame when owned is set, otherwise into a copy of it (they may outlive the
// caller's buffer: task records).
func fastRequest(frame []byte, owned bool) (obj wireRequest, ok bool) {
	b := frame
	if !owned {
		b = append([]byte(nil), frame...)
	}
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return obj, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return obj, skipSpace(b, i+1) == len(b)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return obj, false
		}
		ke := scanString(b, i)
		if ke < 0 {
			return obj, false
		}
		k, plain := plainKeyBytes(b[i:ke])
		if !plain || !asciiKey(k) {
			return obj, false
		}
		i = skipSpace(b, ke)
		if i >= len(b) || b[i] != ':' {
			return obj, false
		}
		vs := skipSpace(b, i+1)
		ve := scanValue(b, vs, 1)
		if ve < 0 {
			return obj, false
		}
		var dst *json.RawMessage
		switch string(k) { // (compared without a conversion)
		case "jsonrpc":
			dst = &obj.JSONRPC
		case "method":
			dst = &obj.Method
		case "params":
			dst = &obj.Params
		case "id":
			dst = &obj.ID
		default:
			for _, n := range [...]string{"jsonrpc", "method", "params", "id"} {
				if bytes.EqualFold(k, []byte(n)) {
					return obj, false // encoding/json matches names case-insensitively
				}
			}
		}
		if dst != nil {
			if *dst != nil {
				return obj, false // a repeated member
			}
			*dst = b[vs:ve:ve]
		}
		i = skipSpace(b, ve)
		if i >= len(b) {
			return obj, false
		}
		if b[i] == '}' {
			return obj, skipSpace(b, i+1) == len(b)
		}
		if b[i] != ',' {
			return obj, false
		}
		i = skipSpace(b, i+1)
	}
}

// splitArray returns the elements of a JSON array (raw, without surrounding space); ok is false
// when params is not a well-formed array.
func splitArray(params []byte) (elems []json.RawMessage, ok bool) {
	i := skipSpace(params, 0)
	if i >= len(params) || params[i] != '[' {
		return nil, false
	}
	i = skipSpace(params, i+1)
	if i < len(params) && params[i] == ']' {
		return []json.RawMessage{}, skipSpace(params, i+1) == len(params)
	}
	elems = make([]json.RawMessage, 0, 4)
	for {
		e := scanValue(params, i, 1)
		if e < 0 {
			return nil, false
		}
		elems = append(elems, params[i:e:e])
		i = skipSpace(params, e)
		if i >= len(params) {
			return nil, false
		}
		if params[i] == ']' {
			return elems, skipSpace(params, i+1) == len(params)
		}
		if params[i] != ',' {
			return nil, false
		}
		i = skipSpace(params, i+1)
	}
}

// splitObject returns the members of a JSON object whose names have no escapes and are not
// repeated; ok is false otherwise (the caller falls back to encoding/json).
func splitObject(params []byte) (m map[string]json.RawMessage, ok bool) {
	i := skipSpace(params, 0)
	if i >= len(params) || params[i] != '{' {
		return nil, false
	}
	m = make(map[string]json.RawMessage, 4)
	i = skipSpace(params, i+1)
	if i < len(params) && params[i] == '}' {
		return m, skipSpace(params, i+1) == len(params)
	}
	for {
		if i >= len(params) || params[i] != '"' {
			return nil, false
		}
		ke := scanString(params, i)
		if ke < 0 {
			return nil, false
		}
		k, plain := plainKey(params[i:ke])
		if !plain || !asciiKey(k) {
			return nil, false
		}
		i = skipSpace(params, ke)
		if i >= len(params) || params[i] != ':' {
			return nil, false
		}
		vs := skipSpace(params, i+1)
		ve := scanValue(params, vs, 1)
		if ve < 0 {
			return nil, false
		}
		if _, dup := m[k]; dup {
			return nil, false
		}
		m[k] = params[vs:ve:ve]
		i = skipSpace(params, ve)
		if i >= len(params) {
			return nil, false
		}
		if params[i] == '}' {
			return m, skipSpace(params, i+1) == len(params)
		}
		if params[i] != ',' {
			return nil, false
		}
		i = skipSpace(params, i+1)
	}
}

// ---- encoding ----

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as json.Marshal does (HTML characters
// included; invalid UTF-8 becomes U+FFFD).
func appendString(dst []byte, s string) []byte { return appendJSONString(dst, s, true) }

// appendJSONString appends s as a JSON string as encoding/json does, with or without escaping
// HTML characters.
func appendJSONString(dst []byte, s string, html bool) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && (!html || c != '<' && c != '>' && c != '&') {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendRaw(dst []byte, raw json.RawMessage) []byte {
	if len(raw) == 0 {
		return append(dst, "null"...)
	}
	return append(dst, raw...)
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

// appendTask appends a task record as json.Marshal would.
func appendTask(dst []byte, t *Task) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, t.ID)
	dst = append(dst, `,"client_id":`...)
	dst = appendString(dst, t.ClientID)
	dst = append(dst, `,"task_id":`...)
	dst = appendString(dst, t.TaskID)
	dst = append(dst, `,"method":`...)
	dst = appendString(dst, t.Method)
	dst = append(dst, `,"params":`...)
	dst = appendRaw(dst, t.Params)
	dst = append(dst, `,"status":`...)
	dst = strconv.AppendInt(dst, int64(t.Status), 10)
	if t.NodeID != "" {
		dst = append(dst, `,"node_id":`...)
		dst = appendString(dst, t.NodeID)
	}
	dst = append(dst, `,"attempts":`...)
	dst = strconv.AppendInt(dst, int64(t.Attempts), 10)
	if len(t.Result) > 0 {
		dst = append(dst, `,"result":`...)
		dst = append(dst, t.Result...)
	}
	if len(t.Error) > 0 {
		dst = append(dst, `,"error":`...)
		dst = append(dst, t.Error...)
	}
	dst = append(dst, `,"created":`...)
	dst = appendTime(dst, t.Created)
	dst = append(dst, `,"updated":`...)
	dst = appendTime(dst, t.Updated)
	if t.Assigned != nil {
		dst = append(dst, `,"assigned":`...)
		dst = appendTime(dst, *t.Assigned)
	}
	if t.Fetched != nil {
		dst = append(dst, `,"fetched":`...)
		dst = appendTime(dst, *t.Fetched)
	}
	if t.Pod != "" {
		dst = append(dst, `,"pod":`...)
		dst = appendString(dst, t.Pod)
	}
	return append(dst, '}')
}

// encodeTask is the stored form of a task. Times outside what RFC 3339 can hold (never set by
// the broker) take encoding/json's path, which reports them.
func encodeTask(t *Task) ([]byte, error) {
	return appendTaskRecord(make([]byte, 0, 400+len(t.Params)+len(t.Result)+len(t.Error)), t)
}

// appendTaskRecord appends the stored form of a task to dst (see encodeTask).
func appendTaskRecord(dst []byte, t *Task) ([]byte, error) {
	for _, tm := range [...]*time.Time{&t.Created, &t.Updated, t.Assigned, t.Fetched} {
		if tm != nil && (tm.Year() < 0 || tm.Year() > 9999) {
			b, err := json.Marshal(t)
			return append(dst, b...), err
		}
	}
	return appendTask(dst, t), nil
}

// bufPool holds buffers for records that are copied by the publish that sends them (nats.go
// copies a message into its own buffer before the publish returns).
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

// putBuf returns a buffer whose content is no longer used (b holds its last contents).
func putBuf(p *[]byte, b []byte) {
	if cap(b) > 64<<10 {
		return
	}
	*p = b[:0]
	bufPool.Put(p)
}

// encodeQueueMsg is the work-queue message of a task, as json.Marshal(queueMsg) gives it.
func encodeQueueMsg(t *Task) []byte {
	return appendQueueMsg(make([]byte, 0, 128+len(t.Params)), t)
}

// appendQueueMsg appends the work-queue message of a task to dst.
func appendQueueMsg(dst []byte, t *Task) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, t.ID)
	dst = append(dst, `,"client_id":`...)
	dst = appendString(dst, t.ClientID)
	dst = append(dst, `,"task_id":`...)
	dst = appendString(dst, t.TaskID)
	dst = append(dst, `,"method":`...)
	dst = appendString(dst, t.Method)
	dst = append(dst, `,"params":`...)
	dst = appendRaw(dst, t.Params)
	return append(dst, '}')
}

// encodeEvent is a notification with string params, in Python's separators, as the PUB socket
// sends it: {"jsonrpc": "2.0", "method": M, "params": {"k1": "v1", ...}}.
func encodeEvent(method string, kv ...string) []byte {
	n := 64 + len(method)
	for _, s := range kv {
		n += len(s) + 4
	}
	dst := make([]byte, 0, n)
	dst = append(dst, `{"jsonrpc": "2.0", "method": `...)
	dst = appendString(dst, method)
	dst = append(dst, `, "params": {`...)
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		dst = appendString(dst, kv[i])
		dst = append(dst, ": "...)
		dst = appendString(dst, kv[i+1])
	}
	return append(dst, "}}"...)
}

// appendPython appends valid JSON with Python's separators (see Pythonize).
func appendPython(dst, in []byte) []byte {
	inStr, esc := false, false
	for _, c := range in {
		if inStr {
			dst = append(dst, c)
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\r', '\n':
		case '"':
			inStr = true
			dst = append(dst, c)
		case ',':
			dst = append(dst, ',', ' ')
		case ':':
			dst = append(dst, ':', ' ')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// taskObj is what node_task_request returns, as the original: the short id, status and node.
type taskObj struct {
	node   string
	status int
	id     string
	method string
	params json.RawMessage
}

func (t *Task) taskObject() *taskObj {
	return &taskObj{node: t.NodeID, status: t.Status, id: t.TaskID, method: t.Method, params: t.Params}
}

// appendPython appends the object with its keys sorted (as encoding/json sorts a map's) and
// Python's separators.
func (o *taskObj) appendPython(dst []byte) []byte {
	dst = append(dst, `{"_node": `...)
	dst = appendJSONString(dst, o.node, false)
	dst = append(dst, `, "_status": `...)
	dst = strconv.AppendInt(dst, int64(o.status), 10)
	dst = append(dst, `, "id": `...)
	dst = appendJSONString(dst, o.id, false)
	dst = append(dst, `, "method": `...)
	dst = appendJSONString(dst, o.method, false)
	dst = append(dst, `, "params": `...)
	if len(o.params) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = appendPython(dst, o.params)
	}
	return append(dst, '}')
}

// MarshalJSON encodes the object (for callers other than EncodeResult).
func (o *taskObj) MarshalJSON() ([]byte, error) { return o.appendPython(nil), nil }

package zerotask

// codec.go: JSON-RPC 2.0 decoding and encoding as ZeroTask speaks it, without any I/O.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Error codes of §1.4 (and -32602, Decision 5).
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternal       = -32603
	CodeInvalidClient  = -32010
	CodeInvalidTask    = -32020
	CodeInvalidNode    = -32030
	CodeNotComplete    = -32050
)

var codeMessages = map[int]string{
	CodeParseError:     "Parse error.",
	CodeInvalidRequest: "Invalid JSON-RPC request.",
	CodeMethodNotFound: "Method not found.",
	CodeInvalidParams:  "Invalid parameters.",
	CodeInternal:       "Internal error.",
	CodeInvalidClient:  "Invalid client id.",
	CodeInvalidTask:    "Invalid task id.",
	CodeInvalidNode:    "Invalid node id.",
	CodeNotComplete:    "Task not complete.",
}

// RPCError is a JSON-RPC error object. Raw, when set, is sent as the error object verbatim (a
// failed task's stored error).
type RPCError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Raw     json.RawMessage
}

func (e *RPCError) Error() string { return fmt.Sprintf("jsonrpc %d: %s", e.Code, e.Message) }

// rpcErr builds the error of code with its standard message (or detail when given).
func rpcErr(code int, detail ...string) *RPCError {
	msg := codeMessages[code]
	if len(detail) > 0 && detail[0] != "" {
		msg = detail[0]
	}
	return &RPCError{Code: code, Message: msg}
}

// Request is one decoded JSON-RPC request or notification.
type Request struct {
	Method string
	// Params is the raw params: a JSON array or object ("[]" when absent).
	Params json.RawMessage
	// ID is the raw id; HasID is false for a notification (no "id" key).
	ID    json.RawMessage
	HasID bool
}

// Notification reports a request without an id: it is answered with the JSON literal null.
func (r *Request) Notification() bool { return !r.HasID }

// Decoded is one frame: a single request or a batch. Each element of Requests is either a valid
// request or, at the same index in Errors, the error to answer for it.
type Decoded struct {
	Batch    bool
	Requests []Request
	Errors   []*RPCError
}

// MaxBatch bounds the number of requests in one batch.
const MaxBatch = 1000

// Decode parses one frame. A frame that is not JSON gives a -32700 error; a JSON value that is not
// a request (nor a non-empty batch of them) gives -32600. Per-request errors inside a batch are
// returned in d.Errors, the frame-level error as err.
func Decode(frame []byte) (d Decoded, err *RPCError) { return decode(frame, false) }

// decode is Decode; with owned set the frame belongs to the caller's request (nobody reuses its
// buffer), so the decoded members may point into it instead of into a copy.
func decode(frame []byte, owned bool) (d Decoded, err *RPCError) {
	trimmed := frame[skipSpace(frame, 0):]
	if len(trimmed) == 0 {
		return d, rpcErr(CodeParseError)
	}
	if !utf8.Valid(frame) {
		return d, rpcErr(CodeParseError, "Parse error: frame is not UTF-8.")
	}
	switch trimmed[0] {
	case '[':
		var elems []json.RawMessage
		if e := json.Unmarshal(frame, &elems); e != nil {
			return d, rpcErr(CodeParseError)
		}
		if len(elems) == 0 {
			return d, rpcErr(CodeInvalidRequest, "Invalid JSON-RPC request: empty batch.")
		}
		if len(elems) > MaxBatch {
			return d, rpcErr(CodeInvalidRequest, fmt.Sprintf("Invalid JSON-RPC request: batch of more than %d.", MaxBatch))
		}
		d.Batch = true
		d.Requests = make([]Request, len(elems))
		d.Errors = make([]*RPCError, len(elems))
		for i, el := range elems {
			d.Requests[i], d.Errors[i] = decodeOne(el)
		}
		return d, nil
	case '{':
		if obj, ok := fastRequest(frame, owned); ok {
			r, e := decodeObject(&obj)
			d.Requests, d.Errors = []Request{r}, []*RPCError{e}
			return d, nil
		}
		// Unmarshal validates the whole frame: a syntax error is a parse error.
		var obj wireRequest
		if e := json.Unmarshal(frame, &obj); e != nil {
			var se *json.SyntaxError
			if errors.As(e, &se) {
				return d, rpcErr(CodeParseError)
			}
			d.Requests, d.Errors = []Request{{}}, []*RPCError{rpcErr(CodeInvalidRequest, "Invalid JSON-RPC request: "+e.Error()+".")}
			return d, nil
		}
		r, e := decodeObject(&obj)
		d.Requests, d.Errors = []Request{r}, []*RPCError{e}
		return d, nil
	}
	if !json.Valid(frame) {
		return d, rpcErr(CodeParseError)
	}
	d.Requests, d.Errors = []Request{{}}, []*RPCError{rpcErr(CodeInvalidRequest, "Invalid JSON-RPC request: not an object.")}
	return d, nil
}

// decodeOne validates one request object. On error the returned Request still carries the id (so
// the error can be answered with it) when the object had one.
func decodeOne(raw json.RawMessage) (Request, *RPCError) {
	var obj wireRequest
	if firstByte(raw) != '{' || json.Unmarshal(raw, &obj) != nil {
		return Request{}, rpcErr(CodeInvalidRequest, "Invalid JSON-RPC request: not an object.")
	}
	return decodeObject(&obj)
}

// wireRequest is a request object as sent; a member that is absent stays nil.
type wireRequest struct {
	JSONRPC json.RawMessage `json:"jsonrpc"`
	Method  json.RawMessage `json:"method"`
	Params  json.RawMessage `json:"params"`
	ID      json.RawMessage `json:"id"`
}

func decodeObject(obj *wireRequest) (Request, *RPCError) {
	var r Request
	if obj.ID != nil {
		r.ID, r.HasID = obj.ID, true
		switch firstByte(obj.ID) {
		case '"', 'n', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		default:
			r.ID = nil
			return r, rpcErr(CodeInvalidRequest, "Invalid JSON-RPC request: id must be a string, number or null.")
		}
	}
	if obj.JSONRPC != nil && string(obj.JSONRPC) != `"2.0"` {
		if s, ok := unquote(obj.JSONRPC); !ok || s != "2.0" {
			return r, rpcErr(CodeInvalidRequest, `Invalid JSON-RPC request: "jsonrpc" must be "2.0".`)
		}
	}
	m, ok := knownMethods[string(obj.Method)] // the usual names without an allocation
	if !ok {
		m, ok = unquote(obj.Method)
	}
	if !ok || m == "" {
		return r, rpcErr(CodeInvalidRequest, "Invalid JSON-RPC request: no method.")
	}
	r.Method = m
	switch p := obj.Params; {
	case p == nil || string(p) == "null":
		r.Params = json.RawMessage("[]")
	case firstByte(p) == '[' || firstByte(p) == '{':
		r.Params = p
	default:
		return r, rpcErr(CodeInvalidRequest, "Invalid JSON-RPC request: params must be a list or an object.")
	}
	return r, nil
}

// unquote decodes a JSON string (fast when it has no escapes); ok is false for anything else.
// knownMethods maps the quoted JSON of every broker method name, bare and with MethodPrefix, to
// the name (filled by init in broker.go).
var knownMethods = map[string]string{}

func unquote(raw json.RawMessage) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 && bytes.IndexByte(inner, '"') < 0 {
		plain := true
		for _, c := range inner {
			if c < 0x20 {
				plain = false
				break
			}
		}
		if plain {
			return string(inner), true
		}
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

func firstByte(b []byte) byte {
	if i := skipSpace(b, 0); i < len(b) {
		return b[i]
	}
	return 0
}

// falsy reports a JSON value Python considers false (the original leaves such ids out).
func falsy(v json.RawMessage) bool {
	b := bytes.TrimSpace(v)
	switch string(b) {
	case "", "null", "false", `""`, "[]", "{}":
		return true
	}
	if firstByte(b) == '-' || (firstByte(b) >= '0' && firstByte(b) <= '9') {
		f, err := strconv.ParseFloat(string(b), 64)
		return err == nil && f == 0
	}
	return false
}

// EncodeResult encodes a success response (Python's separators, as the original).
func EncodeResult(id json.RawMessage, result any) ([]byte, error) {
	out := make([]byte, 0, 64+len(id)+resultSize(result))
	out = append(out, `{"jsonrpc": "2.0", "result": `...)
	switch x := result.(type) {
	case nil:
		out = append(out, "null"...)
	case string:
		out = appendJSONString(out, x, false)
	case bool:
		out = strconv.AppendBool(out, x)
	case int:
		out = strconv.AppendInt(out, int64(x), 10)
	case json.RawMessage:
		if len(x) == 0 {
			out = append(out, "null"...)
		} else {
			out = appendPython(out, x)
		}
	case *taskObj:
		out = x.appendPython(out)
	default:
		res, err := marshal(result)
		if err != nil {
			return nil, fmt.Errorf("encode result: %w", err)
		}
		out = appendPython(out, res)
	}
	out = append(out, `, "id": `...)
	if len(id) == 0 {
		out = append(out, "null"...)
	} else {
		out = appendPython(out, id)
	}
	return append(out, '}'), nil
}

func resultSize(result any) int {
	switch x := result.(type) {
	case json.RawMessage:
		return len(x) + len(x)/8
	case *taskObj:
		return 96 + len(x.params) + len(x.params)/8
	}
	return 32
}

// EncodeError encodes an error response; the id is left out when it is falsy (as the original).
func EncodeError(id json.RawMessage, e *RPCError) []byte {
	var b bytes.Buffer
	b.WriteString(`{"jsonrpc":"2.0","error":`)
	if len(e.Raw) > 0 {
		b.Write(e.Raw)
	} else {
		msg, _ := json.Marshal(e.Message)
		b.WriteString(`{"code":` + strconv.Itoa(e.Code) + `,"message":`)
		b.Write(msg)
		b.WriteByte('}')
	}
	if !falsy(id) {
		b.WriteString(`,"id":`)
		b.Write(id)
	}
	b.WriteByte('}')
	return Pythonize(b.Bytes())
}

// EncodeNotification encodes a notification (a request without id) as the PUB socket sends it.
func EncodeNotification(method string, params any) ([]byte, error) {
	p, err := marshal(params)
	if err != nil {
		return nil, fmt.Errorf("encode notification %s: %w", method, err)
	}
	m, _ := json.Marshal(method)
	var b bytes.Buffer
	b.WriteString(`{"jsonrpc":"2.0","method":`)
	b.Write(m)
	b.WriteString(`,"params":`)
	b.Write(p)
	b.WriteByte('}')
	return Pythonize(b.Bytes()), nil
}

// nullReply is what a notification gets (a REQ peer needs a reply to stay in lockstep).
var nullReply = []byte("null")

func marshal(v any) ([]byte, error) {
	if raw, ok := v.(json.RawMessage); ok {
		if len(raw) == 0 {
			return []byte("null"), nil
		}
		return raw, nil
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// Pythonize rewrites valid JSON with the separators of Python's json.dumps (", " and ": ") and no
// other whitespace, so replies look like the original broker's. Input that is not valid JSON is
// returned unchanged.
func Pythonize(in []byte) []byte {
	return appendPython(make([]byte, 0, len(in)+len(in)/8), in)
}

// args binds positional or named params to parameter names. Named params must use those names
// (extra names are refused unless extra is set); positional params fill them in order.
type args []arg

// arg is one bound parameter.
type arg struct {
	name string
	val  json.RawMessage
}

// get returns a parameter by name.
func (a args) get(name string) (json.RawMessage, bool) {
	for i := range a {
		if a[i].name == name {
			return a[i].val, true
		}
	}
	return nil, false
}

// set binds name to v, replacing an earlier binding.
func (a *args) set(name string, v json.RawMessage) {
	for i := range *a {
		if (*a)[i].name == name {
			(*a)[i].val = v
			return
		}
	}
	*a = append(*a, arg{name, v})
}

// bindParams binds params to names; min is the number of required leading names.
func bindParams(params json.RawMessage, names []string, minArgs int, extra bool) (args, int, *RPCError) {
	a := make(args, 0, len(names))
	switch firstByte(params) {
	case '[':
		list, ok := splitArray(params)
		if !ok {
			if err := json.Unmarshal(params, &list); err != nil {
				return nil, 0, rpcErr(CodeInvalidParams)
			}
		}
		if len(list) > len(names) && !extra {
			return nil, 0, rpcErr(CodeInvalidParams, fmt.Sprintf("Invalid parameters: at most %d expected, got %d.", len(names), len(list)))
		}
		for i, v := range list {
			if i < len(names) {
				a = append(a, arg{names[i], v})
			}
		}
		if len(list) < minArgs {
			return nil, 0, rpcErr(CodeInvalidParams, fmt.Sprintf("Invalid parameters: %s required.", strings.Join(names[:minArgs], ", ")))
		}
		return a, len(list), nil
	case '{':
		obj, ok := splitObject(params)
		if !ok {
			if err := json.Unmarshal(params, &obj); err != nil {
				return nil, 0, rpcErr(CodeInvalidParams)
			}
		}
		for k, v := range obj {
			if !slices.Contains(names, k) {
				if extra {
					continue
				}
				return nil, 0, rpcErr(CodeInvalidParams, fmt.Sprintf("Invalid parameters: unexpected %q.", k))
			}
			a = append(a, arg{k, v}) // (keys of an object are unique here)
		}
		for _, n := range names[:minArgs] {
			if _, ok := a.get(n); !ok {
				return nil, 0, rpcErr(CodeInvalidParams, fmt.Sprintf("Invalid parameters: %q required.", n))
			}
		}
		return a, -1, nil
	}
	return nil, 0, rpcErr(CodeInvalidParams)
}

// has reports whether name was given (a JSON null counts as not given).
func (a args) has(name string) bool {
	v, ok := a.get(name)
	return ok && string(bytes.TrimSpace(v)) != "null"
}

// MaxID bounds client, node and task ids (bytes).
const MaxID = 256

// str reads a string param; absent or null gives "" and ok=true when optional.
func (a args) str(name string, required bool) (string, *RPCError) {
	v, ok := a.get(name)
	if !ok || string(bytes.TrimSpace(v)) == "null" {
		if required {
			return "", rpcErr(CodeInvalidParams, fmt.Sprintf("Invalid parameters: %q required.", name))
		}
		return "", nil
	}
	s, ok := unquote(bytes.TrimSpace(v))
	if !ok {
		return "", rpcErr(CodeInvalidParams, fmt.Sprintf("Invalid parameters: %q must be a string.", name))
	}
	if len(s) > MaxID {
		return "", rpcErr(CodeInvalidParams, fmt.Sprintf("Invalid parameters: %q longer than %d bytes.", name, MaxID))
	}
	if required && s == "" {
		return "", rpcErr(CodeInvalidParams, fmt.Sprintf("Invalid parameters: %q is empty.", name))
	}
	return s, nil
}

// raw reads any JSON param ("null" when absent).
func (a args) raw(name string) json.RawMessage {
	v, ok := a.get(name)
	if !ok {
		return json.RawMessage("null")
	}
	return v
}

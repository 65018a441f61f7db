package gilmour

// fastjson.go: allocation-light encoders and decoders for the request hot path (the envelope on
// NATS, the handler call to a node, the P1 answer). Each one writes exactly the bytes (or returns
// exactly the value) of its encoding/json counterpart and falls back to it for any input outside
// the plain shapes it knows; fastjson_test.go checks that both always agree.

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// appendString appends s as json.Marshal writes a string.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// appendRaw appends raw as json.Marshal writes a json.RawMessage field: nil is null, anything
// else is validated and compacted (with HTML escaping); invalid JSON is an error.
func appendRaw(dst []byte, raw json.RawMessage) ([]byte, error) {
	if raw == nil {
		return append(dst, "null"...), nil
	}
	for _, c := range raw {
		if c == '<' || c == '>' || c == '&' || c == 0xe2 { // HTML escapes (and U+2028/U+2029): let encoding/json do it
			b, err := json.Marshal(raw)
			if err != nil {
				return dst, err
			}
			return append(dst, b...), nil
		}
	}
	buf := bytes.NewBuffer(dst)
	if err := json.Compact(buf, raw); err != nil {
		return dst, err
	}
	return buf.Bytes(), nil
}

// encodeEnvelopeFast is EncodeEnvelope for data that is valid JSON; ok=false otherwise.
func encodeEnvelopeFast(e Envelope) ([]byte, bool) {
	b := make([]byte, 0, len(e.Data)+len(e.Sender)+40)
	b = append(b, `{"data":`...)
	b, err := appendRaw(b, e.Data)
	if err != nil {
		return nil, false
	}
	b = append(b, `,"code":`...)
	b = strconv.AppendInt(b, int64(e.Code), 10)
	b = append(b, `,"sender":`...)
	b = appendString(b, e.Sender)
	return append(b, '}'), true
}

// decodeEnvelopeFast reads an envelope written by EncodeEnvelope, {"data":D,"code":N,"sender":"S"}
// with no spaces, N a plain non-negative integer and S plain ASCII; ok=false for anything else
// (DecodeEnvelope then takes the general path). Data shares b's memory.
func decodeEnvelopeFast(b []byte) (Envelope, bool) {
	const pre, codeKey, senderKey = `{"data":`, `,"code":`, `,"sender":`
	if !bytes.HasPrefix(b, []byte(pre)) || !bytes.HasSuffix(b, []byte(`"}`)) {
		return Envelope{}, false
	}
	end := len(b) - 2
	q := bytes.LastIndexByte(b[:end], '"')
	if q < 0 {
		return Envelope{}, false
	}
	sender := b[q+1 : end]
	for _, c := range sender {
		if c < 0x20 || c >= 0x80 || c == '\\' {
			return Envelope{}, false
		}
	}
	rest := b[:q]
	if !bytes.HasSuffix(rest, []byte(senderKey)) {
		return Envelope{}, false
	}
	rest = rest[:len(rest)-len(senderKey)]
	i := len(rest)
	for i > 0 && rest[i-1] >= '0' && rest[i-1] <= '9' {
		i--
	}
	digits := rest[i:]
	if len(digits) == 0 || len(digits) > 9 || (len(digits) > 1 && digits[0] == '0') {
		return Envelope{}, false
	}
	rest = rest[:i]
	if !bytes.HasSuffix(rest, []byte(codeKey)) || len(rest) < len(pre)+len(codeKey)+1 {
		return Envelope{}, false
	}
	data := rest[len(pre) : len(rest)-len(codeKey)]
	if isSpace(data[0]) || isSpace(data[len(data)-1]) || !json.Valid(data) {
		return Envelope{}, false
	}
	code := 0
	for _, c := range digits {
		code = code*10 + int(c-'0')
	}
	env := Envelope{Data: data, Code: 200, Sender: string(sender)}
	if code >= 1 && code < 1000 {
		env.Code = code
	}
	return env, true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// encodeHandlerCall is json.Marshal(h).
func encodeHandlerCall(h HandlerCall) ([]byte, error) {
	b := make([]byte, 0, len(h.Data)+len(h.Topic)+len(h.Sender)+64)
	b = append(b, `{"topic":`...)
	b = appendString(b, h.Topic)
	b = append(b, `,"sender":`...)
	b = appendString(b, h.Sender)
	b = append(b, `,"data":`...)
	b, err := appendRaw(b, h.Data)
	if err != nil {
		return json.Marshal(h) // the same error, from encoding/json
	}
	b = append(b, `,"timeout":`...)
	b = strconv.AppendInt(b, int64(h.Timeout), 10)
	return append(b, '}'), nil
}

// encodePublishResponse is what json.NewEncoder(w).Encode(r) writes (with its final newline);
// ok=false when a message's data is not valid JSON.
func encodePublishResponse(r PublishResponse) ([]byte, bool) {
	n := 48
	for _, m := range r.Messages {
		n += len(m.Data) + 24
	}
	b := make([]byte, 0, n)
	b = append(b, `{"messages":`...)
	if r.Messages == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, m := range r.Messages {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"data":`...)
			var err error
			if b, err = appendRaw(b, m.Data); err != nil {
				return nil, false
			}
			b = append(b, `,"code":`...)
			b = strconv.AppendInt(b, int64(m.Code), 10)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `,"code":`...)
	b = strconv.AppendInt(b, int64(r.Code), 10)
	b = append(b, `,"length":`...)
	b = strconv.AppendInt(b, int64(r.Length), 10)
	return append(b, "}\n"...), true
}

// objectFieldsFast splits a JSON object (body starts with '{', no surrounding space) into its
// raw members like json.Unmarshal into map[string]json.RawMessage does (the last duplicate
// wins); ok=false for invalid JSON and for keys with escapes or invalid UTF-8. Values share
// body's memory.
func objectFieldsFast(body []byte) (map[string]json.RawMessage, bool) {
	if len(body) == 0 || body[0] != '{' || !json.Valid(body) {
		return nil, false
	}
	m := make(map[string]json.RawMessage, 8)
	i := skipSpace(body, 1)
	if body[i] == '}' {
		return m, true
	}
	for {
		if body[i] != '"' {
			return nil, false
		}
		j := i + 1
		for j < len(body) && body[j] != '"' {
			if body[j] == '\\' {
				return nil, false
			}
			j++
		}
		key := body[i+1 : j]
		if !utf8.Valid(key) {
			return nil, false
		}
		i = skipSpace(body, j+1)
		if body[i] != ':' {
			return nil, false
		}
		i = skipSpace(body, i+1)
		end := skipValue(body, i)
		m[string(key)] = body[i:end:end]
		i = skipSpace(body, end)
		if body[i] == ',' {
			i = skipSpace(body, i+1)
			continue
		}
		return m, body[i] == '}'
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value at b[i]; b is valid JSON.
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default: // number, true, false, null
		for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && !isSpace(b[i]) {
			i++
		}
		return i
	}
}

// skipString returns the index after the string that starts at b[i].
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// plainString is json.Unmarshal of raw into a string for a string without escapes; ok=false
// otherwise.
func plainString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	s := raw[1 : len(raw)-1]
	for _, c := range s {
		if c == '\\' || c == '"' || c < 0x20 {
			return "", false
		}
	}
	if !utf8.Valid(s) {
		return "", false
	}
	return string(s), true
}

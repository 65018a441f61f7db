package eventmq

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
)

// The original scheduler identifies a schedule by
//
//	sha1(json.dumps({args, kwargs, class_args, class_kwargs, path, callable}, sort_keys=True))
//
// so UNSCHEDULE finds it again. This file re-encodes a decoded JSON value exactly as Python's
// json.dumps does with its defaults (", " and ": " separators, ensure_ascii, float repr).

// pyValue is a decoded JSON value that keeps numbers as their source text.
type pyValue any

// decodePy decodes one JSON value; objects become map[string]pyValue (last duplicate key wins,
// as in Python), numbers json.Number.
func decodePy(b []byte) (pyValue, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	v, err := decodePyValue(d, 0)
	if err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after JSON value: %w", ErrField)
	}
	return v, nil
}

func decodePyValue(d *json.Decoder, depth int) (pyValue, error) {
	if depth > 200 {
		return nil, fmt.Errorf("JSON nested too deep: %w", ErrField)
	}
	t, err := d.Token()
	if err != nil {
		return nil, fmt.Errorf("JSON: %v: %w", err, ErrField)
	}
	switch t := t.(type) {
	case json.Delim:
		switch t {
		case '[':
			arr := []pyValue{}
			for d.More() {
				v, err := decodePyValue(d, depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			if _, err := d.Token(); err != nil {
				return nil, fmt.Errorf("JSON: %v: %w", err, ErrField)
			}
			return arr, nil
		case '{':
			obj := map[string]pyValue{}
			for d.More() {
				k, err := d.Token()
				if err != nil {
					return nil, fmt.Errorf("JSON: %v: %w", err, ErrField)
				}
				ks, _ := k.(string)
				v, err := decodePyValue(d, depth+1)
				if err != nil {
					return nil, err
				}
				obj[ks] = v
			}
			if _, err := d.Token(); err != nil {
				return nil, fmt.Errorf("JSON: %v: %w", err, ErrField)
			}
			return obj, nil
		}
		return nil, fmt.Errorf("JSON delimiter %v: %w", t, ErrField)
	default:
		return t, nil
	}
}

// pyDumps encodes v as json.dumps(v, sort_keys=True).
func pyDumps(v pyValue) string {
	var b strings.Builder
	pyEncode(&b, v)
	return b.String()
}

func pyEncode(b *strings.Builder, v pyValue) {
	switch v := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if v {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case string:
		pyString(b, v)
	case json.Number:
		b.WriteString(pyNumber(string(v)))
	case []pyValue:
		b.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				b.WriteString(", ")
			}
			pyEncode(b, e)
		}
		b.WriteByte(']')
	case map[string]pyValue:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys) // UTF-8 byte order is code point order, as Python sorts str
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			pyString(b, k)
			b.WriteString(": ")
			pyEncode(b, v[k])
		}
		b.WriteByte('}')
	}
}

// pyString writes s as Python's ensure_ascii encoder: printable ASCII as is, the usual short
// escapes, everything else as \uXXXX (UTF-16 surrogate pairs above the BMP).
func pyString(b *strings.Builder, s string) {
	const hexd = "0123456789abcdef"
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			if r >= 0x20 && r <= 0x7e {
				b.WriteRune(r)
				continue
			}
			units := []uint16{uint16(r)}
			if r > 0xffff {
				r1, r2 := utf16.EncodeRune(r)
				units = []uint16{uint16(r1), uint16(r2)}
			}
			for _, u := range units {
				b.WriteString(`\u`)
				b.WriteByte(hexd[u>>12&15])
				b.WriteByte(hexd[u>>8&15])
				b.WriteByte(hexd[u>>4&15])
				b.WriteByte(hexd[u&15])
			}
		}
	}
	b.WriteByte('"')
}

// pyNumber renders a JSON number as Python does after json.loads: integers unchanged (Python ints
// are unbounded), floats with repr().
func pyNumber(s string) string {
	if !strings.ContainsAny(s, ".eE") {
		if s == "-0" {
			return "0"
		}
		return s
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) {
		if math.IsInf(f, 1) {
			return "Infinity"
		}
		if math.IsInf(f, -1) {
			return "-Infinity"
		}
		return s
	}
	return pyFloatRepr(f)
}

// pyFloatRepr is Python's float.__repr__: the shortest round-tripping digits, fixed notation for
// exponents in [-4, 16), otherwise d.ddde±XX.
func pyFloatRepr(f float64) string {
	if f == 0 {
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // e.g. "-1.2345e+06"
	neg := strings.HasPrefix(e, "-")
	if neg {
		e = e[1:]
	}
	mant, expS, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expS)
	digits := strings.Replace(mant, ".", "", 1)
	var out string
	if exp >= -4 && exp < 16 {
		if exp >= 0 {
			if len(digits) <= exp+1 {
				out = digits + strings.Repeat("0", exp+1-len(digits)) + ".0"
			} else {
				out = digits[:exp+1] + "." + digits[exp+1:]
			}
		} else {
			out = "0." + strings.Repeat("0", -exp-1) + digits
		}
	} else {
		m := digits[:1]
		if len(digits) > 1 {
			m += "." + digits[1:]
		}
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		out = fmt.Sprintf("%se%s%02d", m, sign, exp)
	}
	if neg {
		out = "-" + out
	}
	return out
}

// ScheduleHash computes the original scheduler's job id from a SCHEDULE payload
// (json.dumps(["run", {...}])). Missing fields hash as null.
func ScheduleHash(payload []byte) (string, error) {
	v, err := decodePy(payload)
	if err != nil {
		return "", err
	}
	arr, ok := v.([]pyValue)
	if !ok || len(arr) < 2 {
		return "", fmt.Errorf("schedule payload is not [cmd, {...}]: %w", ErrField)
	}
	job, ok := arr[1].(map[string]pyValue)
	if !ok {
		return "", fmt.Errorf("schedule payload's job is not an object: %w", ErrField)
	}
	id := map[string]pyValue{}
	for _, k := range []string{"args", "kwargs", "class_args", "class_kwargs", "path", "callable"} {
		id[k] = job[k]
	}
	sum := sha1.Sum([]byte(pyDumps(id)))
	return hex.EncodeToString(sum[:]), nil
}

// jobCallable extracts "path.callable" from a job payload for logs and STATUS ("" if absent).
func jobCallable(payload []byte) string {
	var arr []json.RawMessage
	if json.Unmarshal(payload, &arr) != nil || len(arr) < 2 {
		return ""
	}
	var job struct {
		Callable string `json:"callable"`
		Path     string `json:"path"`
	}
	if json.Unmarshal(arr[1], &job) != nil {
		return ""
	}
	return job.Callable
}

package tracker

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jetbridge/jetbridge/schemas"
)

// golden are the request frames of the spec §8 plus the hello, as the reference client sends them.
var golden = []string{
	`{"v": "20260412.01"}`,
	`{"type":"System:ping","request":null,"seq":1}`,
	`{"type":"Item:claim","request":{"pipeline_type":"brozzler"},"seq":2}`,
	`{"type":"Item:store","request":{"result_type":"status_code","attempt":0,"result":200,"id":"6f1c6a52-1b1e-4c55-9a43-0f5a9e0f4a11"},"seq":3}`,
	`{"type":"Item:fail","request":{"id":"6f1c6a52-1b1e-4c55-9a43-0f5a9e0f4a11","message":"...","attempt":0,"fatal":false},"seq":4}`,
	`{"type":"Item:finish","request":{"id":"6f1c6a52-1b1e-4c55-9a43-0f5a9e0f4a11"},"seq":5}`,
	`{"type": "System:ping", "request": null, "seq": 1}`,
	`{"v": "x", "p": 2, "num_slots": 4}`,
}

func TestDecodeGolden(t *testing.T) {
	h, err := DecodeFrame([]byte(golden[0]), true)
	if err != nil || h.Kind != kindHello || h.Version != "20260412.01" || h.Protocol != 1 {
		t.Fatalf("hello: %+v %v", h, err)
	}
	// the hello shape later in the connection is not a hello
	if _, err := DecodeFrame([]byte(golden[0]), false); err == nil || err.Status != 400 {
		t.Fatalf("late hello: %v", err)
	}
	for i, f := range golden[1:6] {
		r, err := DecodeFrame([]byte(f), i == 0)
		if err != nil || r.Kind != kindRequest || r.Seq != int64(i+1) {
			t.Fatalf("%s: %+v %v", f, r, err)
		}
	}
	r, _ := DecodeFrame([]byte(golden[1]), false)
	if r.Params != nil {
		t.Fatalf("request null: %v", r.Params)
	}
	v2, _ := DecodeFrame([]byte(golden[7]), true)
	if v2.Kind != kindHello || v2.Protocol != 2 {
		t.Fatalf("v2 hello: %+v", v2)
	}
}

// TestBadFrames: every bad frame is an error response, never a panic.
func TestBadFrames(t *testing.T) {
	rows := []struct {
		in     string
		status int
		msg    string
		hasSeq bool
	}{
		{``, 400, "Invalid JSON", false},
		{` `, 400, "Invalid JSON", false},
		{`{`, 400, "Invalid JSON", false},
		{`{}{}`, 400, "Invalid JSON", false},
		{`{} x`, 400, "Invalid JSON", false},
		{`nul`, 400, "Invalid JSON", false},
		{`123`, 400, "Invalid JSON", false},
		{"{\"type\":\"System:ping\",\"seq\":1,\"request\":null}\x00", 400, "Invalid JSON", false},
		{`{}`, 400, "Missing message data", false},
		{`{"type":"System:ping"}`, 400, "Missing message data", false},
		{`{"seq":3}`, 400, "Missing message data", true},
		{`{"type":null,"seq":3}`, 400, "Missing message data", true},
		{`{"type":"","seq":3}`, 400, "Missing message data", true},
		{`{"type":"x","seq":1.5}`, 400, "Missing message data", false},
		{`{"type":"x","seq":1e3}`, 400, "Missing message data", false},
		{`{"type":"x","seq":99999999999999999999}`, 400, "Missing message data", false},
		{`{"type":"x","seq":null}`, 400, "Missing message data", false},
		{`{"type":"x","seq":true}`, 400, "Missing message data", false},
		{`{"type":"x","seq":4,"request":"a"}`, 400, "request must be an object", true},
		{`{"type":"x","seq":4,"request":[]}`, 400, "request must be an object", true},
		{`{"type":"x","seq":4,"request":7}`, 400, "request must be an object", true},
	}
	for _, row := range rows {
		_, err := DecodeFrame([]byte(row.in), false)
		if err == nil || err.Status != row.status || !strings.Contains(err.Message, row.msg) || err.HasSeq != row.hasSeq {
			t.Errorf("%q: got %+v", row.in, err)
			continue
		}
		out := EncodeError(err)
		var m map[string]json.RawMessage
		if json.Unmarshal(out, &m) != nil || string(m["payload"]) != "null" {
			t.Errorf("%q: error frame %s", row.in, out)
		}
		if s, ok := m["seq"]; ok && string(s) == "null" {
			t.Errorf("%q: error with seq null", row.in)
		}
	}
	// a non-hello first frame with "v" and "type" is a request
	r, err := DecodeFrame([]byte(`{"v":"1","type":"System:ping","seq":1}`), true)
	if err != nil || r.Kind != kindRequest {
		t.Fatalf("v+type: %+v %v", r, err)
	}
}

func TestParams(t *testing.T) {
	dec := func(s string) *Params {
		var m map[string]json.RawMessage
		_ = json.Unmarshal([]byte(s), &m)
		return newParams(m)
	}
	p := dec(`{"id":"a","attempt":2,"fatal":true,"message":"m"}`)
	if p.String("id", true) != "a" || !p.Bool("fatal", false) || p.String("message", true) != "m" {
		t.Fatal("values")
	}
	if n, ok := p.Int("attempt", false); !ok || n != 2 || p.Err() != "" {
		t.Fatalf("attempt %d %v %q", n, ok, p.Err())
	}
	p = dec(`{"id":null}`)
	p.String("id", true)
	if p.Err() != "Missing parameter: id" {
		t.Fatal(p.Err())
	}
	p = dec(`{"attempt":-1.0}`)
	p.Int("attempt", true)
	if p.Err() != "Parameter attempt must be an integer" {
		t.Fatal(p.Err())
	}
	p = dec(`{"decode_fields":["a",1]}`)
	p.Strings("decode_fields")
	if p.Err() != "Parameter decode_fields must be a list of strings" {
		t.Fatal(p.Err())
	}
}

func TestEncode(t *testing.T) {
	if got := string(EncodeResponse(204, nil, 1)); got != `{"status":204,"payload":null,"seq":1}` {
		t.Fatal(got)
	}
	if got := string(EncodeError(&FrameError{Status: 404, Message: "Request type x does not exist", Seq: 9, HasSeq: true})); got != `{"status":404,"message":"Request type x does not exist","payload":null,"seq":9}` {
		t.Fatal(got)
	}
	if got := string(EncodeError(&FrameError{Status: 400, Message: "Invalid JSON"})); got != `{"status":400,"message":"Invalid JSON","payload":null}` {
		t.Fatal(got)
	}
	if got := string(EncodeAdvisory("Item:revoked", map[string]any{"id": "a", "attempt": 0, "reason": "lease expired"})); got != `{"type":"Item:revoked","payload":{"attempt":0,"id":"a","reason":"lease expired"},"seq":null}` {
		t.Fatal(got)
	}
}

// Python's base64.b85encode outputs (checked with CPython 3).
func TestBase85(t *testing.T) {
	vectors := map[string]string{
		"":                 "",
		"h":                "Xa",
		"he":               "Xk`",
		"hel":              "Xk}~",
		"hell":             "Xk~0{",
		"hello":            "Xk~0{Zv",
		"\x00\x00\x00\x00": "00000",
		"\xff\xff\xff\xff": "|NsC0",
		"\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c": "009C61O)~M2nh-c3;",
	}
	for plain, enc := range vectors {
		got, err := DecodeBase85(enc)
		if err != nil || string(got) != plain {
			t.Errorf("%q: %q %v", enc, got, err)
		}
	}
	for _, bad := range []string{"X", "Xk~0{Z", "\"\"\"\"\"", "~~~~~", "Xk~0{Z'", "Xk é"} {
		if _, err := DecodeBase85(bad); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		v, min string
		less   bool
	}{
		{"20250228.00", "20250301.00", true},
		{"20260412.01", "20250301.00", false},
		{"20260412.01-debug", "20260412.01", false},
		{"20260412.01", "20260412.01", false},
		{"", "1", true},
		{"1.2", "1.2.1", true},
		{"1.10", "1.9", false},
	} {
		if got := versionLess(c.v, c.min); got != c.less {
			t.Errorf("versionLess(%q,%q) = %v", c.v, c.min, got)
		}
	}
}

// FuzzDecodeFrame: the decoder never panics, and whatever it answers can be encoded and is JSON.
func FuzzDecodeFrame(f *testing.F) {
	for _, g := range golden {
		f.Add([]byte(g), true)
		f.Add([]byte(g), false)
	}
	f.Add([]byte(`{"type":"x","seq":1,"request":{"a":[1,{"b":null}]}}`), false)
	f.Add([]byte(`{"v":null,"p":"2"}`), true)
	f.Fuzz(func(t *testing.T, data []byte, first bool) {
		r, ferr := DecodeFrame(data, first)
		if ferr != nil {
			if r != nil {
				t.Fatal("both request and error")
			}
			out := EncodeError(ferr)
			if !json.Valid(out) {
				t.Fatalf("invalid error frame %q", out)
			}
			return
		}
		if r.Kind == kindRequest {
			p := newParams(r.Params)
			p.String("id", false)
			p.Int("attempt", false)
			p.Bool("fatal", false)
			p.Strings("decode_fields")
			_ = p.Err()
			if !utf8.ValidString(r.Type) && bytes.Contains(data, []byte(r.Type)) {
				t.Logf("non-UTF-8 type %q", r.Type)
			}
			if !json.Valid(EncodeResponse(200, map[string]any{"t": r.Type}, r.Seq)) {
				t.Fatal("invalid response")
			}
		}
	})
}

func FuzzDecodeBase85(f *testing.F) {
	f.Add("Xk~0{Zv")
	f.Add("009C61O)~M2nh-c3;")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = DecodeBase85(s)
	})
}

func TestNameRules(t *testing.T) {
	for _, c := range []struct {
		rule nameRule
		s    string
		ok   bool
	}{
		{reID, "6f1c6a52-1b1e-4c55-9a43-0f5a9e0f4a11", true}, {reID, "a_b", false}, {reID, "-a", false}, {reID, "", false},
		{reID, strings.Repeat("a", 64), true}, {reID, strings.Repeat("a", 65), false}, {reID, "a.b", false}, {reID, "é", false},
		{reTypeTok, "brozzler_v2", true}, {reTypeTok, "_x", false}, {reName, "pipe-1", true}, {reName, "pipe_1", false},
	} {
		if got := c.rule.MatchString(c.s); got != c.ok {
			t.Errorf("%s.MatchString(%q) = %v", c.rule, c.s, got)
		}
	}
}

func TestPeekRecord(t *testing.T) {
	r := &Record{ID: "a", Status: StatusClaimed, PipelineType: "t", Claim: &Claim{Pipeline: "p", Attempt: 0, LeaseUntil: 5},
		Metadata: json.RawMessage(`{"status":"todo"}`)}
	b, _ := json.Marshal(r)
	got := peekRecord(b)
	if got.Status != StatusClaimed || got.Claim == nil || got.Claim.Pipeline != "p" || got.PipelineType != "t" {
		t.Fatalf("claimed: %+v", got)
	}
	r.Status, r.Claim = StatusDone, nil
	r.Metadata = json.RawMessage(`{"status":"claimed"}`) // a nested look-alike: decoded, still not claimed
	b, _ = json.Marshal(r)
	if got := peekRecord(b); got.Status != StatusDone {
		t.Fatalf("done with nested key: %+v", got)
	}
	r.Status, r.Metadata = StatusTodo, nil
	b, _ = json.Marshal(r)
	if got := peekRecord(b); got.Status != StatusTodo {
		t.Fatalf("todo: %+v", got)
	}
}

// eventCases are events whose encoding must equal json.Marshal's, byte for byte.
func eventCases() []Event {
	one, zero := 1, 0
	return []Event{
		{Event: "queued", ID: "0b9d7a3e-5d1f-4c4e-9a55-3f1d2f1c6a01", Item: "https://example.com/x?a=1&b=<2>", PipelineType: "archivebot", Status: "todo", Time: 1763789012.123456},
		{Event: "claimed", ID: "id", Item: "plain", PipelineType: "t", Status: "claimed", Attempt: &zero, Pipeline: "p1", Time: 1763789012},
		{Event: "failed", ID: "id", Item: "ünïcode \u2028 \"q\" \\ \t\n", PipelineType: "t", Status: "todo", Attempt: &one, Pipeline: "p", Reason: "bad \x00 \xff", Time: 1e-7},
		{Event: "done", Time: 1e21},
		{Event: "done", Time: -3.5},
		{},
	}
}

func TestAppendEventMatchesJSON(t *testing.T) {
	for i, e := range eventCases() {
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendEvent(nil, &e); string(got) != string(want) {
			t.Errorf("case %d:\n got %s\nwant %s", i, got, want)
		}
		if err := schemas.Validate("tracker/item-event.json", AppendEvent(nil, &e)); err != nil && i < 2 {
			t.Errorf("case %d: schema: %v", i, err)
		}
	}
}

func FuzzAppendEvent(f *testing.F) {
	for _, e := range eventCases() {
		f.Add(e.Event, e.ID, e.Item, e.Reason, e.Time, e.Attempt != nil)
	}
	f.Fuzz(func(t *testing.T, ev, id, item, reason string, tm float64, hasAttempt bool) {
		if math.IsNaN(tm) || math.IsInf(tm, 0) {
			return
		}
		e := Event{Event: ev, ID: id, Item: item, PipelineType: item, Status: ev, Reason: reason, Pipeline: id, Time: tm}
		if hasAttempt {
			n := len(item)
			e.Attempt = &n
		}
		want, _ := json.Marshal(e)
		if got := AppendEvent(nil, &e); string(got) != string(want) {
			t.Fatalf("got %s want %s", got, want)
		}
	})
}

package zerotask

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"
)

var fastSeeds = []string{
	`{"jsonrpc": "2.0", "method": "zerotask.broker.client_new_task", "params": {"client_id": "c", "method": "add", "params": [5, 6]}, "id": "r1"}`,
	`{"jsonrpc":"2.0","method":"m","params":[1,-2.5e3,true,false,null,"a\"b\\u00e9",{"x":[]}],"id":7}`,
	`  {"method":"m"}  `, `{}`, `{"id":1,"id":2}`, `{"ID":1}`, `{"Method":"m"}`, `{"\u006dethod":"m"}`,
	`{"method":"m",}`, `{"method":"m"`, `{"method":01}`, `{"method":-}`, `{"method":1.}`, `{"method":1e}`,
	`{"method":"\x01"}`, `{"method":"\q"}`, `{"method":"\u12"}`, `{"method":[1,]}`, `{"method":tru}`,
	`{"method":"m"} x`, `[1, 2, {"a": [3]}]`, `[]`, ` [ ] `, `[1 2]`, `{"a":1,"a":2}`, `{"ſ":1}`, `{"K":2}`,
	`{"params":{"client_id":"c","client_id":"d"}}`, "{\"method\":\"\xe2\x80\xa8\"}",
}

// The fast decoding paths agree with encoding/json on everything they accept, and accept nothing
// that is not JSON.
func FuzzFastDecode(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	for _, g := range goldenFrames {
		f.Add([]byte(g))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if obj, ok := fastRequest(in, false); ok {
			// Owned or copied, the same members (pointing into the frame or into a copy).
			if own, ok := fastRequest(in, true); !ok || !bytes.Equal(own.Method, obj.Method) || !bytes.Equal(own.Params, obj.Params) ||
				!bytes.Equal(own.ID, obj.ID) || !bytes.Equal(own.JSONRPC, obj.JSONRPC) {
				t.Fatalf("%q: owned decode %+v, copied %+v", in, own, obj)
			}
			var ref wireRequest
			if !json.Valid(in) || json.Unmarshal(in, &ref) != nil {
				t.Fatalf("fast path accepted %q", in)
			}
			for _, p := range [][2]json.RawMessage{{obj.JSONRPC, ref.JSONRPC}, {obj.Method, ref.Method}, {obj.Params, ref.Params}, {obj.ID, ref.ID}} {
				if (p[0] == nil) != (p[1] == nil) || !bytes.Equal(p[0], p[1]) {
					t.Fatalf("%q: fast %+v, encoding/json %+v", in, obj, ref)
				}
			}
		}
		if list, ok := splitArray(in); ok {
			var ref []json.RawMessage
			if json.Unmarshal(in, &ref) != nil || len(ref) != len(list) {
				t.Fatalf("splitArray accepted %q: %q", in, list)
			}
			for i := range ref {
				if !bytes.Equal(ref[i], list[i]) {
					t.Fatalf("%q: element %d %q, want %q", in, i, list[i], ref[i])
				}
			}
		}
		if m, ok := splitObject(in); ok {
			var ref map[string]json.RawMessage
			if json.Unmarshal(in, &ref) != nil || len(ref) != len(m) {
				t.Fatalf("splitObject accepted %q: %q", in, m)
			}
			for k, v := range ref {
				if !bytes.Equal(m[k], v) {
					t.Fatalf("%q: member %q %q, want %q", in, k, m[k], v)
				}
			}
		}
		if utf8.Valid(in) {
			// A well-formed value is always scanned to its end.
			if json.Valid(in) {
				i := skipSpace(in, 0)
				if e := scanValue(in, i, 0); e >= 0 && skipSpace(in, e) != len(in) {
					t.Fatalf("%q: scanned to %d", in, e)
				}
			} else if i := skipSpace(in, 0); i < len(in) {
				if e := scanValue(in, i, 0); e >= 0 && skipSpace(in, e) == len(in) {
					t.Fatalf("scanValue accepted invalid %q", in)
				}
			}
		}
		s := string(in)
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
		}
	})
}

func TestFastDecodeSeeds(t *testing.T) {
	for _, s := range fastSeeds {
		d, err := Decode([]byte(s))
		ref := decodeReference([]byte(s))
		if (err == nil) != (ref.err == nil) {
			t.Fatalf("%q: error %v, reference %v", s, err, ref.err)
		}
		if err != nil {
			if err.Code != ref.err.Code {
				t.Fatalf("%q: code %d, reference %d", s, err.Code, ref.err.Code)
			}
			continue
		}
		if len(d.Requests) != 1 || d.Batch {
			continue
		}
		r, e := d.Requests[0], d.Errors[0]
		if r.Method != ref.r.Method || !bytes.Equal(r.Params, ref.r.Params) || !bytes.Equal(r.ID, ref.r.ID) || r.HasID != ref.r.HasID ||
			(e == nil) != (ref.e == nil) || (e != nil && e.Code != ref.e.Code) {
			t.Fatalf("%q: %+v %v, reference %+v %v", s, r, e, ref.r, ref.e)
		}
	}
}

type refDecoded struct {
	r   Request
	e   *RPCError
	err *RPCError
}

// decodeReference is the single-object path of Decode through encoding/json only.
func decodeReference(frame []byte) refDecoded {
	var out refDecoded
	if first := firstByte(frame); first != '{' {
		_, out.err = Decode(frame)
		return out
	}
	if !utf8.Valid(frame) {
		out.err = rpcErr(CodeParseError)
		return out
	}
	var obj wireRequest
	if e := json.Unmarshal(frame, &obj); e != nil {
		var se *json.SyntaxError
		if ok := asSyntax(e, &se); ok {
			out.err = rpcErr(CodeParseError)
			return out
		}
		out.e = rpcErr(CodeInvalidRequest)
		return out
	}
	out.r, out.e = decodeObject(&obj)
	return out
}

func asSyntax(err error, se **json.SyntaxError) bool {
	s, ok := err.(*json.SyntaxError)
	*se = s
	return ok
}

// The hand-written task record and queue message are what encoding/json writes.
func TestEncodeTaskMatchesJSON(t *testing.T) {
	now := time.Date(2026, 11, 22, 5, 6, 7, 891000, time.UTC)
	later := now.Add(1500 * time.Millisecond)
	for _, tk := range []Task{
		{ID: "c-t", ClientID: "c", TaskID: "t", Method: "add", Params: json.RawMessage(`[5,6]`), Status: StatusQueued, Created: now, Updated: now},
		{ID: "c<&>-\"t\"\n", ClientID: "c<&>", TaskID: "\"t\"\n\u2028\x01", Method: "é\xff", Params: nil, Status: StatusFinished,
			NodeID: "n", Attempts: 2, Result: json.RawMessage(`{"a":[1,"x"]}`), Created: now, Updated: later, Assigned: &now, Fetched: &later, Pod: "p1"},
		{ID: "a-b", Method: "m", Params: json.RawMessage(`{"k":null}`), Status: StatusFailed, Error: json.RawMessage(`{"code":-32603,"message":"x"}`),
			Created: now.In(time.FixedZone("X", 3600)), Updated: now},
	} {
		got, err := encodeTask(&tk)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(&tk)
		if !bytes.Equal(got, want) {
			t.Fatalf("task\n got %s\nwant %s", got, want)
		}
		q, _ := json.Marshal(queueMsg{ID: tk.ID, ClientID: tk.ClientID, TaskID: tk.TaskID, Method: tk.Method, Params: tk.Params})
		if got := encodeQueueMsg(&tk); !bytes.Equal(got, q) {
			t.Fatalf("queue message\n got %s\nwant %s", got, q)
		}
	}
	ev := encodeEvent(eventMethods[evTaskReady], "method", "add", "task_id", "c-t")
	want, _ := EncodeNotification(eventMethods[evTaskReady], map[string]any{"method": "add", "task_id": "c-t"})
	if !bytes.Equal(ev, want) {
		t.Fatalf("event\n got %s\nwant %s", ev, want)
	}
}

// EncodeResult's direct paths write what the generic path (encoding/json, then Pythonize) writes.
func TestEncodeResultMatchesGeneric(t *testing.T) {
	generic := func(id json.RawMessage, v any) []byte {
		if o, ok := v.(*taskObj); ok {
			v = map[string]any{"method": o.method, "params": o.params, "_status": o.status, "id": o.id, "_node": o.node}
		}
		res, err := marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if len(id) == 0 {
			id = json.RawMessage("null")
		}
		return Pythonize([]byte(`{"jsonrpc":"2.0","result":` + string(res) + `,"id":` + string(id) + `}`))
	}
	for _, v := range []any{nil, "abc", "a<b>&\"c\"\n\u2028\xff", true, false, 0, -32020, 7000,
		json.RawMessage(`[5, 6]`), json.RawMessage(` {"a" :[1,{"b":"c, d: e"}]} `), json.RawMessage(nil),
		&taskObj{node: "n<1>", status: StatusAssigned, id: "t", method: "add", params: json.RawMessage(`[5,6]`)},
		&taskObj{}, map[string]any{"x": []int{1, 2}}} {
		for _, id := range []json.RawMessage{nil, json.RawMessage(`"r1"`), json.RawMessage(`17`)} {
			got, err := EncodeResult(id, v)
			if err != nil {
				t.Fatal(err)
			}
			if want := generic(id, v); !bytes.Equal(got, want) {
				t.Fatalf("%#v:\n got %s\nwant %s", v, got, want)
			}
		}
	}
}

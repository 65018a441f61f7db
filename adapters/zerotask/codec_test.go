package zerotask

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// Golden frames: what the original client and node send (Python json.dumps of their dicts).
var goldenFrames = []string{
	`{"jsonrpc": "2.0", "method": "zerotask.broker.node_connect", "params": [], "id": "OLbimQNdhjdwhpKqzHxq"}`,
	`{"jsonrpc": "2.0", "method": "zerotask.broker.client_connect", "params": [], "id": "QpWbtGhaqJvPDoeYrmKz"}`,
	`{"jsonrpc": "2.0", "method": "zerotask.broker.client_new_task", "params": {"client_id": "QpWbtGhaqJvPDoeYrmKz", "method": "add", "params": [5, 6]}, "id": "xGkLsOeWmTnAcbUqPzrd"}`,
	`{"jsonrpc": "2.0", "method": "zerotask.broker.node_task_request", "params": {"node_id": "OLbimQNdhjdwhpKqzHxq", "task_id": "QpWbtGhaqJvPDoeYrmKz-HnTrBuvcWqkeLdoiMsAy"}, "id": "bbbbbbbbbbbbbbbbbbbb"}`,
	`{"jsonrpc": "2.0", "method": "zerotask.broker.node_task_finished", "params": {"node_id": "OLbimQNdhjdwhpKqzHxq", "task_id": "QpWbtGhaqJvPDoeYrmKz-HnTrBuvcWqkeLdoiMsAy", "result": 11}}`,
	`{"jsonrpc": "2.0", "method": "zerotask.broker.client_task_result", "params": {"client_id": "QpWbtGhaqJvPDoeYrmKz", "task_id": "QpWbtGhaqJvPDoeYrmKz-HnTrBuvcWqkeLdoiMsAy"}, "id": "cccccccccccccccccccc"}`,
	`{"jsonrpc": "2.0", "method": "zerotask.broker.node_status", "params": {"node_id": "OLbimQNdhjdwhpKqzHxq", "workers": 1}}`,
	`[{"jsonrpc": "2.0", "method": "zerotask.broker.node_heartbeat", "params": ["n"], "id": 1}, {"jsonrpc": "2.0", "method": "x"}]`,
}

func TestDecodeGolden(t *testing.T) {
	for _, f := range goldenFrames {
		d, err := Decode([]byte(f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for i, e := range d.Errors {
			if e != nil {
				t.Fatalf("%s #%d: %v", f, i, e)
			}
		}
	}
	d, _ := Decode([]byte(goldenFrames[2]))
	r := d.Requests[0]
	if r.Method != "zerotask.broker.client_new_task" || !r.HasID || string(r.ID) != `"xGkLsOeWmTnAcbUqPzrd"` || firstByte(r.Params) != '{' {
		t.Fatalf("%+v", r)
	}
	d, _ = Decode([]byte(goldenFrames[4]))
	if !d.Requests[0].Notification() {
		t.Fatal("no id must be a notification")
	}
	d, _ = Decode([]byte(`{"jsonrpc":"2.0","method":"m","id":null}`))
	if d.Requests[0].Notification() || string(d.Requests[0].Params) != "[]" {
		t.Fatalf("null id is a request; absent params are []: %+v", d.Requests[0])
	}
}

// Bad inputs: what each gives, and that none panics.
func TestDecodeBadInputs(t *testing.T) {
	frameErrs := []struct {
		in   string
		code int
	}{
		{``, CodeParseError},
		{`   `, CodeParseError},
		{`{`, CodeParseError},
		{`{"jsonrpc": "2.0", "method": `, CodeParseError},
		{`{"a":1}}`, CodeParseError},
		{"\xff\xfe{}", CodeParseError},
		{`{"method": "m", "params": [1,]}`, CodeParseError},
		{`NaN`, CodeParseError},
		{`[]`, CodeInvalidRequest},
		{`[` + strings.Repeat(`1,`, MaxBatch) + `1]`, CodeInvalidRequest},
	}
	for _, c := range frameErrs {
		_, err := Decode([]byte(c.in))
		if err == nil || err.Code != c.code {
			t.Errorf("%q: got %v, want %d", c.in, err, c.code)
		}
	}
	reqErrs := []string{
		`"hello"`, `42`, `null`, `true`,
		`{}`,
		`{"jsonrpc": "2.0", "params": [], "id": 1}`,
		`{"method": "", "id": 1}`,
		`{"method": 5, "id": 1}`,
		`{"method": null, "id": 1}`,
		`{"method": "m", "params": "x", "id": 1}`,
		`{"method": "m", "params": 5, "id": 1}`,
		`{"method": "m", "params": true, "id": 1}`,
		`{"jsonrpc": "1.0", "method": "m", "id": 1}`,
		`{"jsonrpc": 2, "method": "m", "id": 1}`,
		`{"method": "m", "id": {"a": 1}}`,
		`{"method": "m", "id": [1]}`,
		`{"method": "m", "id": true}`,
	}
	for _, in := range reqErrs {
		d, err := Decode([]byte(in))
		if err != nil {
			t.Errorf("%q: frame error %v, want a request error", in, err)
			continue
		}
		if d.Errors[0] == nil || d.Errors[0].Code != CodeInvalidRequest {
			t.Errorf("%q: got %v, want -32600", in, d.Errors[0])
		}
		out := EncodeError(d.Requests[0].ID, d.Errors[0])
		if !json.Valid(out) {
			t.Errorf("%q: invalid error reply %s", in, out)
		}
	}
	// A batch keeps good and bad elements apart.
	d, err := Decode([]byte(`[{"method": "a", "id": 1}, 2, {"method": "b"}]`))
	if err != nil || !d.Batch || len(d.Requests) != 3 || d.Errors[0] != nil || d.Errors[1] == nil || d.Errors[2] != nil {
		t.Fatalf("%+v %v", d, err)
	}
}

func TestBindParams(t *testing.T) {
	names := []string{"client_id", "method", "params", "task_id"}
	bad := []string{`[1, 2, 3, 4, 5]`, `["c"]`, `{"client_id": "c"}`, `{"client_id": "c", "method": "m", "x": 1}`, `{`, `5`}
	for _, p := range bad {
		if _, _, e := bindParams(json.RawMessage(p), names, 2, false); e == nil || e.Code != CodeInvalidParams {
			t.Errorf("%s: %v", p, e)
		}
	}
	a, n, e := bindParams(json.RawMessage(`["c", "m", [1]]`), names, 2, false)
	if e != nil || n != 3 || string(a.raw("params")) != "[1]" || a.has("task_id") {
		t.Fatalf("%v %d %v", a, n, e)
	}
	if _, e := a.str("params", true); e == nil {
		t.Fatal("a list is not a string")
	}
	long := `["` + strings.Repeat("x", MaxID+1) + `", "m"]`
	a, _, _ = bindParams(json.RawMessage(long), names, 2, false)
	if _, e := a.str("client_id", true); e == nil {
		t.Fatal("overlong id accepted")
	}
	a, _, e = bindParams(json.RawMessage(`{"node_id": "n", "task_id": "t", "status": 5000, "x": 1}`), []string{"node_id", "task_id", "status"}, 3, true)
	if e != nil || len(a) != 3 {
		t.Fatalf("**kw: %v %v", a, e)
	}
}

func TestEncode(t *testing.T) {
	out, err := EncodeResult(json.RawMessage(`"abc"`), "x-y")
	if err != nil || string(out) != `{"jsonrpc": "2.0", "result": "x-y", "id": "abc"}` {
		t.Fatalf("%s %v", out, err)
	}
	out, _ = EncodeResult(json.RawMessage(`7`), map[string]any{"b": "<&>", "a": []int{1, 2}})
	if string(out) != `{"jsonrpc": "2.0", "result": {"a": [1, 2], "b": "<&>"}, "id": 7}` {
		t.Fatal(string(out))
	}
	for _, id := range []string{``, `null`, `""`, `0`, `0.0`, `false`} {
		out := EncodeError(json.RawMessage(id), rpcErr(CodeInvalidTask))
		if string(out) != `{"jsonrpc": "2.0", "error": {"code": -32020, "message": "Invalid task id."}}` {
			t.Errorf("id %q: %s", id, out)
		}
	}
	out = EncodeError(json.RawMessage(`"r"`), storedError(json.RawMessage(`"just a string"`)))
	if string(out) != `{"jsonrpc": "2.0", "error": {"code": -32603, "data": "just a string", "message": "Task failed."}, "id": "r"}` {
		t.Fatal(string(out))
	}
	n, _ := EncodeNotification("zerotask.node.task_ready", map[string]any{"task_id": "a-b", "method": "add"})
	if string(n) != `{"jsonrpc": "2.0", "method": "zerotask.node.task_ready", "params": {"method": "add", "task_id": "a-b"}}` {
		t.Fatal(string(n))
	}
	if got := Pythonize([]byte(`{"a:b,c":[1,{"x":"y\",z"}]}`)); string(got) != `{"a:b,c": [1, {"x": "y\",z"}]}` {
		t.Fatal(string(got))
	}
}

func TestKeys(t *testing.T) {
	for _, id := range []string{"QpWbtGhaqJvPDoeYrmKz-HnTrBuvcWqkeLdoiMsAy", "a.b", "a b/c=d", "ü", "*", ">", "=", "-_"} {
		k := key(id)
		for i := 0; i < len(k); i++ {
			if !keyByte(k[i]) && k[i] != '=' {
				t.Fatalf("key(%q) = %q", id, k)
			}
		}
		if unkey(k) != id {
			t.Fatalf("unkey(key(%q)) = %q", id, unkey(k))
		}
	}
	if key("a=b") == key("a=3Db") && "a=b" != "a=3Db" {
		t.Fatal("key collision")
	}
}

// FuzzDecode: decoding never panics, every error and result it leads to is valid JSON, and a
// valid request survives a round trip.
func FuzzDecode(f *testing.F) {
	for _, g := range goldenFrames {
		f.Add([]byte(g))
	}
	for _, s := range []string{``, `[]`, `[1]`, `{"method":"m","id":null}`, `{"method":"m","params":"x","id":1}`, "\xff", `{"id":{}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		d, err := Decode(in)
		if err != nil {
			if out := EncodeError(nil, err); !json.Valid(out) {
				t.Fatalf("invalid error reply %q", out)
			}
			return
		}
		if !utf8.Valid(in) || !json.Valid(in) {
			t.Fatalf("accepted invalid input %q", in)
		}
		if len(d.Requests) == 0 || len(d.Requests) != len(d.Errors) {
			t.Fatalf("%q: %d requests, %d errors", in, len(d.Requests), len(d.Errors))
		}
		for i, r := range d.Requests {
			if e := d.Errors[i]; e != nil {
				if out := EncodeError(r.ID, e); !json.Valid(out) {
					t.Fatalf("invalid error reply %q", out)
				}
				continue
			}
			if r.Method == "" || (firstByte(r.Params) != '[' && firstByte(r.Params) != '{') {
				t.Fatalf("%q: accepted %+v", in, r)
			}
			out, e := EncodeResult(r.ID, r.Params)
			if e != nil || !json.Valid(out) {
				t.Fatalf("result reply %q: %v", out, e)
			}
			// Binding never panics whatever the shape.
			_, _, _ = bindParams(r.Params, []string{"a", "b", "c"}, 1, false)
			if p := Pythonize(r.Params); !json.Valid(p) || !jsonEqual(p, r.Params) {
				t.Fatalf("pythonize changed %q into %q", r.Params, p)
			}
		}
	})
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

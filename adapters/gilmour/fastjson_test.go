package gilmour

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fastSeeds are payloads on the edge of the fast paths' shapes.
var fastSeeds = []string{
	`{"data":{"n":1},"code":200,"sender":"x"}`,
	`{"data":null,"code":0,"sender":""}`,
	`{"data":"a b","code":1,"sender":"s"}`,
	`{"data":[1, 2],"code":999,"sender":"s"}`,
	`{"data":1,"code":1000,"sender":"s"}`,
	`{"data":1,"code":0200,"sender":"s"}`,
	`{"data":1,"code":-5,"sender":"s"}`,
	`{"data":1,"code":2e2,"sender":"s"}`,
	`{"data":1,"code":200.5,"sender":"s"}`,
	`{"data":1,"code":1234567890,"sender":"s"}`,
	`{"data": 1,"code":200,"sender":"s"}`,
	`{"data":1 ,"code":200,"sender":"s"}`,
	`{"data":1,"code":200,"sender":"a\"b"}`,
	`{"data":1,"code":200,"sender":"a\u0041"}`,
	`{"data":1,"code":200,"sender":"é"}`,
	`{"data":1,"code":200,"sender":"` + "\x01" + `"}`,
	`{"data":1,"code":"200","sender":"s"}`,
	`{"data":1,"code":200,"sender":"s","x":1}`,
	`{"data":"<&>","code":200,"sender":"<s>"}`,
	`{"data":{"a":"\u2028"},"code":200,"sender":"s"}`,
	`{"data":"` + "\xe2\x80\xa8" + `","code":200,"sender":"s"}`,
	`{"data":1,"code":200,"sender":"s"`,
	`{"data":,"code":200,"sender":"s"}`,
	`{"data":1,"code":,"sender":"s"}`,
	`{"data":"x","code":200,"sender":"s"}x`,
	`{"data":1,"code":200,"sender":"s"} `,
	`{"data":{"code":1,"sender":"y"},"code":200,"sender":"s"}`,
	`{"data":"\",\"code\":1,\"sender\":\"","code":200,"sender":"s"}`,
	`{"data":1,"data":2,"code":200,"sender":"s"}`,
	`{"Data":1,"code":200,"sender":"s"}`,
	`{"data":` + "\xff" + `,"code":200,"sender":"s"}`,
	`{"data":"` + "\xff" + `","code":200,"sender":"s"}`,
	`{"data":{"n": [1, {"m" : "x y"}]},"code":200,"sender":"s"}`,
	`{"data":"code","code":200,"sender":""}`,
	`{"data"`, `{}`, `null`, `"x"`, ``, `{"data":"","code":200,"sender":"s"}`,
}

// TestFastJSONMatchesEncodingJSON: the fast paths agree with encoding/json on edge payloads.
func TestFastJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range fastSeeds {
		checkFastJSON(t, []byte(s))
	}
}

func FuzzFastJSON(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	for _, s := range goldenEnvelope {
		f.Add([]byte(s))
	}
	f.Fuzz(checkFastJSON)
}

func checkFastJSON(t *testing.T, b []byte) {
	t.Helper()
	want := decodeEnvelopeSlow(b)
	got := DecodeEnvelope(b)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("DecodeEnvelope(%q) = %+v (%q), encoding/json gives %+v (%q)", b, got, got.Data, want, want.Data)
	}
	// encoders, with b itself (valid JSON or not) and the decoded data as data
	for _, data := range []json.RawMessage{b, got.Data, nil} {
		e := Envelope{Data: data, Code: got.Code, Sender: string(b)}
		if len(e.Data) > 0 {
			if g, w := EncodeEnvelope(e), encodeEnvelopeSlow(e); !bytes.Equal(g, w) {
				t.Fatalf("EncodeEnvelope(%+v) = %q, encoding/json gives %q", e, g, w)
			}
		}
		h := HandlerCall{Topic: string(b), Sender: got.Sender, Data: data, Timeout: got.Code}
		gb, gerr := encodeHandlerCall(h)
		wb, werr := json.Marshal(h)
		if !bytes.Equal(gb, wb) || (gerr == nil) != (werr == nil) {
			t.Fatalf("encodeHandlerCall(%+v) = %q %v, encoding/json gives %q %v", h, gb, gerr, wb, werr)
		}
		for _, r := range []PublishResponse{NewResponse([]Message{{Data: data, Code: got.Code}}),
			NewResponse([]Message{{Data: jsonNull, Code: 200}, {Data: data, Code: 500}}), NewResponse(nil), {}} {
			var buf bytes.Buffer
			werr := json.NewEncoder(&buf).Encode(r)
			gb, ok := encodePublishResponse(r)
			if ok != (werr == nil) || (ok && !bytes.Equal(gb, buf.Bytes())) {
				t.Fatalf("encodePublishResponse(%+v) = %q %v, encoding/json gives %q %v", r, gb, ok, buf.Bytes(), werr)
			}
		}
	}
}

// FuzzFastEnvelopeShape builds payloads in the fast path's own shape.
func FuzzFastEnvelopeShape(f *testing.F) {
	f.Add(`{"n":1}`, "200", "x")
	f.Add(`"a\"b"`, "0", "")
	f.Add(`[1, 2]`, "00", `a\`)
	f.Add(`null`, "999", "<")
	f.Fuzz(func(t *testing.T, data, code, sender string) {
		checkFastJSON(t, []byte(`{"data":`+data+`,"code":`+code+`,"sender":"`+sender+`"}`))
	})
}

var objectSeeds = []string{
	`{"topic":"bench","message":{"n":1},"timeout":5}`,
	`{ "topic" : "a b" , "message" : [1, {"x": "}"}] , "timeout" : "7" }`,
	`{}`, `{ }`, `{"a":1,"a":2}`, `{"a":"x\"y","b":"\\"}`, `{"t\u006fpic":"x"}`, `{"` + "\xff" + `":1}`,
	`{"a":"` + "\xff" + `"}`, `{"a":"é","é":1}`, `{"a":1}x`, `{"a":}`, `{"a":1,}`, `{"a":true,"b":false,"c":null}`,
	`{"a":-1.5e3,"b":0,"c":[]}`, `{"a":{"b":{"c":[[{}]]}}}`, `{"a":"\u0000"}`, `{"timeout":05}`, `{"timeout":1.0}`,
	`{"a":"` + "\x01" + `"}`, `[1]`, `{"a" 1}`, `{"a":1 "b":2}`,
}

// TestObjectFieldsMatchesEncodingJSON: the member splitter and the plain string/number
// readers agree with encoding/json.
func TestObjectFieldsMatchesEncodingJSON(t *testing.T) {
	for _, s := range objectSeeds {
		checkObjectFields(t, []byte(s))
	}
}

func FuzzObjectFields(f *testing.F) {
	for _, s := range objectSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkObjectFields)
}

func checkObjectFields(t *testing.T, b []byte) {
	t.Helper()
	var want map[string]json.RawMessage
	werr := json.Unmarshal(b, &want)
	got, ok := objectFieldsFast(b)
	if ok && werr != nil {
		t.Fatalf("objectFieldsFast(%q) accepted what encoding/json refuses: %v", b, werr)
	}
	if ok && !reflect.DeepEqual(got, want) {
		t.Fatalf("objectFieldsFast(%q) = %q, encoding/json gives %q", b, got, want)
	}
	if !ok && werr == nil && len(b) > 0 && b[0] == '{' && !bytes.Contains(b, []byte(`\`)) && !bytes.ContainsAny(b, " \t\r\n") {
		// plain objects without escapes in keys must take the fast path
		valid := true
		for k := range want {
			valid = valid && !bytes.ContainsRune([]byte(k), 0xfffd)
		}
		if valid {
			t.Fatalf("objectFieldsFast(%q) declined a plain object", b)
		}
	}
	for k, raw := range want {
		var ws string
		werr := json.Unmarshal(raw, &ws)
		gs, ok := plainString(raw)
		if ok && (werr != nil || gs != ws) {
			t.Fatalf("plainString(%q) = %q, encoding/json gives %q %v", raw, gs, ws, werr)
		}
		m := map[string]json.RawMessage{"k": raw}
		gi, gerr := getInt(m, "k", "x")
		wi, werr2 := getIntSlow(m, "k", "x")
		if gi != wi || (gerr == nil) != (werr2 == nil) || (gerr != nil && gerr.Error() != werr2.Error()) {
			t.Fatalf("getInt(%s: %q) = %d %v, encoding/json gives %d %v", k, raw, gi, gerr, wi, werr2)
		}
	}
}

// getIntSlow is getInt with encoding/json only (as before the fast path).
func getIntSlow(m map[string]json.RawMessage, key, what string) (int, error) {
	raw, ok := m[key]
	if !ok || !present(raw) {
		return 0, nil
	}
	var n json.Number
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
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

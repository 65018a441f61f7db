package tracker

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
)

func recencCases() []*Record {
	f := func(v float64) *float64 { return &v }
	s := func(v string) *string { return &v }
	base := func() *Record {
		return &Record{ID: "0f8fad5b-d9cb-469f-a165-70867728950e", Item: "https://example.com/", QueuedBy: "alice",
			PipelineType: "brozzler", Status: StatusTodo, Attempts: []Attempt{}, QueuedAt: 1732270000.123456,
			AdminLog: []AdminLog{}, Metadata: json.RawMessage(`{"ua":"Mozilla/5.0 (X11)","custom_js":null}`), Gen: 1}
	}
	var out []*Record
	out = append(out, base())
	r := base()
	r.Status = StatusClaimed
	r.Attempts = []Attempt{{Pipeline: "p1", PipelineVersion: "20260412.01", Time: 1732270001.5, Error: s("boom\n<tb>"), End: f(1732270002)},
		{Pipeline: "p2", Time: 1732270003}}
	r.ClaimedAt, r.Expires = f(1732270003), f(0)
	r.Explanation, r.ParentItem, r.Stash = s(""), s("parent é"), s("st")
	r.Priority, r.RunOn = -3, "p2"
	r.AdminLog = []AdminLog{{Time: 1, Action: "requeue", By: "op", Reason: "why & how"}, {Time: 2, Action: "abandon"}}
	r.Claim = &Claim{Pipeline: "p2", Attempt: 1, LeaseUntil: 1732356403.25, Pod: "pod-a"}
	out = append(out, r)
	// nil slices and metadata, odd floats, metadata compacting would change
	out = append(out, &Record{ID: "x", Status: StatusDone, FinishedAt: f(-0.0)})
	for _, v := range []float64{1e-7, 1e21, -1e22, 5e-324, math.MaxFloat64, 123456789012345678901} {
		r := base()
		r.QueuedAt = v
		out = append(out, r)
	}
	for _, md := range []string{`{ "a": 1 }`, `{"a":"<b>"}`, `{"a":"\u2028"}`, `{"a":"é"}`, `{"a":"x\"y"}`, `{"a":[1,2,{"b":null}]}`, `{}`, `{"a":"\\"}`} {
		r := base()
		r.Metadata = json.RawMessage(md)
		out = append(out, r)
	}
	return out
}

func TestEncodeRecordMatchesJSON(t *testing.T) {
	for i, r := range recencCases() {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := encodeRecord(r); !bytes.Equal(got, want) {
			t.Errorf("case %d:\n got %s\nwant %s", i, got, want)
		}
		wantResp := EncodeResponse(200, claimPayload{Item: r.entryJSON(len(r.Attempts) - 1), InfoURL: "https://info/?a=1&b=<2>"}, 42)
		if got := encodeClaimResponse(r, len(r.Attempts)-1, "https://info/?a=1&b=<2>", 42); !bytes.Equal(got, wantResp) {
			t.Errorf("case %d claim:\n got %s\nwant %s", i, got, wantResp)
		}
	}
}

func TestEncodeRecordBadFloats(t *testing.T) {
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		r := recencCases()[0]
		r.QueuedAt = v
		if got := encodeRecord(r); got != nil {
			t.Errorf("%v: got %s, want nil (json.Marshal refuses)", v, got)
		}
	}
}

func FuzzEncodeRecord(f *testing.F) {
	for _, r := range recencCases() {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Record
		if json.Unmarshal(data, &r) != nil {
			return
		}
		want, err := json.Marshal(&r)
		if err != nil {
			if got := encodeRecord(&r); got != nil {
				t.Fatalf("json.Marshal fails (%v) but encodeRecord gave %s", err, got)
			}
			return
		}
		if got := encodeRecord(&r); !bytes.Equal(got, want) {
			t.Fatalf("\n got %s\nwant %s", got, want)
		}
		wantResp := EncodeResponse(200, claimPayload{Item: r.entryJSON(3), InfoURL: r.Item}, 7)
		if got := encodeClaimResponse(&r, 3, r.Item, 7); !bytes.Equal(got, wantResp) {
			t.Fatalf("claim\n got %s\nwant %s", got, wantResp)
		}
	})
}

func TestNewIDShape(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ { // several refills of the random pool
		id := newID()
		if len(id) != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' || id[14] != '4' || !reID.MatchString(id) {
			t.Fatalf("bad id %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
	if got := uuidString([16]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10}); got != "01234567-89ab-cdef-fedc-ba9876543210" {
		t.Fatalf("uuidString = %s", got)
	}
}

func TestTokenCodec(t *testing.T) {
	for _, tk := range []token{{"0f8fad5b-d9cb-469f-a165-70867728950e", 1}, {"x", 0}, {"a<b", 18446744073709551615}, {"é\"", 7}, {"", 3}} {
		want, _ := json.Marshal(tk)
		if got := encodeToken(tk.ID, tk.Gen); !bytes.Equal(got, want) {
			t.Errorf("encode %+v: %s, want %s", tk, got, want)
		}
		if got, err := decodeToken(want); err != nil || got != tk {
			t.Errorf("decode %s: %+v %v", want, got, err)
		}
	}
	for _, b := range []string{`{"id":"a","gen":01}`, `{"id":"a","gen":-1}`, `{"id":"a","gen":1.5}`, `{"id":"a\u0062","gen":2}`,
		`{"id":"a","gen":99999999999999999999}`, `{"gen":2,"id":"a"}`, `{"id":"a","gen":2,"x":1}`, `{"id":"a","gen":}`, `x`, `{"id":"a","gen":2} `} {
		var want token
		werr := json.Unmarshal([]byte(b), &want)
		got, err := decodeToken([]byte(b))
		if (err == nil) != (werr == nil) || (err == nil && got != want) {
			t.Errorf("decode %s: %+v %v, want %+v %v", b, got, err, want, werr)
		}
	}
}

func FuzzDecodeToken(f *testing.F) {
	f.Add([]byte(`{"id":"0f8fad5b-d9cb-469f-a165-70867728950e","gen":12}`))
	f.Add([]byte(`{"id":"a","gen":0}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var want token
		werr := json.Unmarshal(b, &want)
		got, err := decodeToken(b)
		if (err == nil) != (werr == nil) || (err == nil && got != want) {
			t.Fatalf("decode %q: %+v %v, want %+v %v", b, got, err, want, werr)
		}
	})
}

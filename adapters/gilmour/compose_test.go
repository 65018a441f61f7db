package gilmour

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestCompositions ports the expected outputs of spec §2.2 (gilmour-e-go composition_test.go)
// over HTTP: fixtures compose-one|two|three answer their input plus ack-<n>, compose-bad-two
// fails with 500; input {"input":1}.
func TestCompositions(t *testing.T) {
	e := newEnv(t)
	n := newNode(t)
	for _, k := range []string{"one", "two", "three"} {
		n.handle("/"+k, echoHandler("ack-"+k))
	}
	n.handle("/bad-two", func(HandlerCall) (int, any) { return 500, "bad-two failed" })
	n.lambda("/fake-two", func(d json.RawMessage) (int, any) {
		m := map[string]any{}
		_ = json.Unmarshal(d, &m)
		m["fake-two"] = true
		return 200, m
	})
	id := n.register(e.url, map[string]any{"services": []map[string]any{
		{"topic": "compose-one", "group": "c", "path": "/one"},
		{"topic": "compose-two", "group": "c", "path": "/two"},
		{"topic": "compose-three", "group": "c", "path": "/three"},
		{"topic": "compose-bad-two", "group": "c", "path": "/bad-two"},
	}})
	waitServed(t, e.url, id, "compose-one")
	waitServed(t, e.url, id, "compose-three")

	par := `{"parallel":[{"topic":"compose-one"},{"topic":"compose-two"},{"topic":"compose-three"}]}`
	cases := []struct {
		name      string
		comp      string
		code      int
		length    int
		has, hasn []string // keys that each message must / must not contain
	}{
		{name: "pipe", comp: `{"pipe":[{"topic":"compose-one","message":{"merge-one":1}},{"topic":"compose-two","message":{"merge-two":1}}]}`,
			code: 200, length: 1, has: []string{"input", "merge-one", "ack-one", "merge-two", "ack-two"}},
		{name: "nested pipe", comp: `{"pipe":[{"topic":"compose-one","message":{"merge-one":1}},{"pipe":[{"lambda":"/fake-two"},{"topic":"compose-two","message":{"merge-two":1}}]}]}`,
			code: 200, length: 1, has: []string{"input", "merge-one", "ack-one", "fake-two", "merge-two", "ack-two"}},
		{name: "andand", comp: `{"andand":[{"topic":"compose-one","message":{"merge-one":1}},{"pipe":[{"lambda":"/fake-two"},{"topic":"compose-two","message":{"merge-two":1}}]}]}`,
			code: 200, length: 1, has: []string{"input", "fake-two", "ack-two"}, hasn: []string{"ack-one"}},
		{name: "andand fail", comp: `{"andand":[{"topic":"compose-one"},{"topic":"compose-bad-two"},{"topic":"compose-two"}]}`,
			code: 500, length: 1},
		{name: "batch", comp: `{"batch":[{"topic":"compose-one","message":{"merge":1}},{"topic":"compose-bad-two"},{"topic":"compose-two","message":{"merge-two":1}}]}`,
			code: 200, length: 1, has: []string{"input", "merge-two", "ack-two"}, hasn: []string{"merge", "ack-one"}},
		{name: "batch recorded", comp: `{"batch":[{"topic":"compose-one"},{"topic":"compose-bad-two"},{"topic":"compose-three"}],"record":true}`,
			code: 500, length: 3},
		{name: "oror", comp: `{"oror":[{"topic":"compose-bad-two"},{"topic":"compose-one"},{"topic":"compose-three"}]}`,
			code: 200, length: 1, has: []string{"input", "ack-one"}, hasn: []string{"ack-three"}},
		{name: "oror parallel", comp: `{"oror":[{"topic":"compose-bad-two"},` + par + `,{"topic":"compose-one"}]}`,
			code: 200, length: 3, has: []string{"input"}},
		{name: "parallel", comp: par, code: 200, length: 3, has: []string{"input"}},
		{name: "parallel parallel", comp: `{"parallel":[` + par + `,` + par + `]}`, code: 200, length: 2},
		{name: "andand parallel", comp: `{"andand":[{"topic":"compose-one"},` + par + `]}`, code: 200, length: 3, has: []string{"input"}},
		{name: "pipe parallel", comp: `{"pipe":[{"topic":"compose-one"},` + par + `]}`, code: 200, length: 3, has: []string{"input", "ack-one"}},
		{name: "lambda", comp: `{"lambda":"/fake-two"}`, code: 200, length: 1, has: []string{"input", "fake-two"}},
		// the 2016 keys (poorva29 dialect)
		{name: "2016 pipe", comp: `{"pipe7":[{"requests1":{"compose-one":{"merge-one":1}}},{"parallel42":[{"requests2":{"compose-two":""}}]}]}`,
			code: 200, length: 1, has: []string{"input", "merge-one", "ack-one", "ack-two"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := `{"composition":` + c.comp + `,"message":{"input":1},"timeout":10}`
			code, r := request(t, e.url, id, body)
			if code != c.code || r.Code != c.code || r.Length != c.length || len(r.Messages) != c.length {
				t.Fatalf("got %d %+v, want code %d length %d", code, r, c.code, c.length)
			}
			for _, m := range r.Messages {
				var obj map[string]any
				_ = json.Unmarshal(m.Data, &obj)
				for _, k := range c.has {
					if _, ok := obj[k]; !ok {
						t.Errorf("message %s lacks %q", m.Data, k)
					}
				}
				for _, k := range c.hasn {
					if _, ok := obj[k]; ok {
						t.Errorf("message %s has %q", m.Data, k)
					}
				}
			}
			switch c.name {
			case "batch recorded":
				if r.Messages[1].Code != 500 || r.Messages[0].Code != 200 || r.Messages[2].Code != 200 {
					t.Fatalf("recorded codes: %+v", r.Messages)
				}
			case "andand fail":
				if !strings.Contains(string(r.Messages[0].Data), "bad-two failed") {
					t.Fatalf("andand fail: %+v", r.Messages)
				}
			case "parallel parallel":
				for _, m := range r.Messages {
					var arr []map[string]any
					if err := json.Unmarshal(m.Data, &arr); err != nil || len(arr) != 3 {
						t.Fatalf("parallel²: %s", m.Data)
					}
				}
			}
		})
	}
}

// TestAndAndStopsAtFailure checks that no step runs after the failing one (1 step unexecuted).
func TestAndAndStopsAtFailure(t *testing.T) {
	e := newEnv(t)
	n := newNode(t)
	n.handle("/one", echoHandler("ack-one"))
	n.handle("/two", echoHandler("ack-two"))
	n.handle("/bad", func(HandlerCall) (int, any) { return 500, "no" })
	id := n.register(e.url, map[string]any{"services": []map[string]any{
		{"topic": "one", "group": "c", "path": "/one"},
		{"topic": "two", "group": "c", "path": "/two"},
		{"topic": "bad", "group": "c", "path": "/bad"},
	}})
	waitServed(t, e.url, id, "one")
	waitServedCode(t, e.url, id, "bad", 500)
	code, r := request(t, e.url, id, `{"composition":{"andand":[{"topic":"one"},{"topic":"bad"},{"topic":"two"}]},"message":{}}`)
	if code != 500 || r.Length != 1 {
		t.Fatalf("%d %+v", code, r)
	}
	if got := len(n.callsOf("/two")); got != 0 {
		t.Fatalf("two was called %d times", got)
	}
}

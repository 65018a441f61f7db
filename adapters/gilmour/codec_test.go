package gilmour

import (
	"encoding/json"
	"strings"
	"testing"
)

// Golden bodies: the spec dialect (2018 README) and the implementations' variants.
var (
	goldenNodeCreate = []string{
		`{"port":8081,"health_check":"/health","slots":[{"topic":"user.*","group":"audit","path":"/audit","timeout":5}],"services":[{"topic":"echo","group":"echo","path":"/echo","timeout":10}]}`,
		`{"port":"8081","services":{"echo":{"group":"echo","path":"/echo","timeout":10}},"slots":{"user.*":{"path":"audit"}}}`,
		`{"port":8081}`,
		`{"port":8081,"host":"10.0.0.7","health_check":"health_check"}`,
	}
	goldenSubs = []string{
		`{"topic":"echo","group":"echo","path":"/echo","timeout":10}`,
		`{"echo":{"group":"echo","path":"/echo","timeout":10},"ping":{"group":"p","path":"/ping"}}`,
		`[{"topic":"echo","group":"echo","path":"/echo"}]`,
	}
	goldenRequests = []string{
		`{"topic":"echo","message":{"a":1},"timeout":5}`,
		`{"topic":"echo","message":"hi","opts":{"timeout":3}}`,
		`{"composition":{"pipe":[{"topic":"a","message":{"x":1},"timeout":5},{"parallel":[{"topic":"b"},{"topic":"c"}]},{"lambda":"/path"}]},"message":{"input":1}}`,
		`{"composition":{"batch":[{"topic":"a"},{"topic":"b"}],"record":true},"message":{}}`,
		`{"composition":{"pipe12":[{"requests1":{"a":{"m":1}}},{"parallel3":[{"requests2":{"b":""}}]}]},"data":{"input":1}}`,
	}
	goldenSignals  = []string{`{"topic":"user.add","message":{"id":5}}`, `{"topic":"t","message":"x","opts":{}}`}
	goldenEnvelope = []string{`{"data":{"a":1},"code":200,"sender":"6f1c0f0e-8b2b-4b7e-9a43-0e7d3b0c1a55"}`,
		`{"data":"x","code":0,"sender":"0123456789abcdef0123456789abcdef"}`, `raw text`, `[1,2]`}
)

func TestDecodeGolden(t *testing.T) {
	for _, b := range goldenNodeCreate {
		if _, err := DecodeNodeCreate([]byte(b)); err != nil {
			t.Errorf("%s: %v", b, err)
		}
	}
	nc, _ := DecodeNodeCreate([]byte(goldenNodeCreate[1]))
	if nc.Port != 8081 || len(nc.Services) != 1 || nc.Services[0].Topic != "echo" || nc.Slots[0].Path != "/audit" || nc.HealthCheck != "/health" {
		t.Fatalf("map variant: %+v", nc)
	}
	for _, b := range goldenSubs {
		if _, err := DecodeSubs([]byte(b), true); err != nil {
			t.Errorf("%s: %v", b, err)
		}
	}
	if s, _ := DecodeSubs([]byte(goldenSubs[1]), true); len(s) != 2 || s[0].Topic != "echo" || s[1].Topic != "ping" {
		t.Fatalf("subs map: %+v", s)
	}
	for _, b := range goldenRequests {
		if _, err := DecodePublishRequest([]byte(b)); err != nil {
			t.Errorf("%s: %v", b, err)
		}
	}
	pr, _ := DecodePublishRequest([]byte(goldenRequests[1]))
	if pr.Timeout != 3 || string(pr.Message) != `"hi"` {
		t.Fatalf("opts timeout: %+v", pr)
	}
	pr, _ = DecodePublishRequest([]byte(goldenRequests[2]))
	canon, _ := json.Marshal(pr.Composition)
	if string(canon) != `{"pipe":[{"message":{"x":1},"timeout":5,"topic":"a"},{"parallel":[{"topic":"b"},{"topic":"c"}]},{"lambda":"/path"}]}` {
		t.Fatalf("canonical: %s", canon)
	}
	pr, _ = DecodePublishRequest([]byte(goldenRequests[4]))
	canon, _ = json.Marshal(pr.Composition)
	if string(canon) != `{"pipe":[{"message":{"m":1},"topic":"a"},{"parallel":[{"topic":"b"}]}]}` || string(pr.Message) != `{"input":1}` {
		t.Fatalf("2016 keys: %s %s", canon, pr.Message)
	}
	for _, b := range goldenSignals {
		if _, err := DecodeSignalRequest([]byte(b)); err != nil {
			t.Errorf("%s: %v", b, err)
		}
	}
	env := DecodeEnvelope([]byte(goldenEnvelope[1]))
	if env.Code != 200 || string(env.Data) != `"x"` {
		t.Fatalf("envelope code 0: %+v", env)
	}
	if env := DecodeEnvelope([]byte(`raw text`)); string(env.Data) != `"raw text"` || env.Code != 200 {
		t.Fatalf("raw: %+v", env)
	}
}

func TestDecodeBadInputs(t *testing.T) {
	huge := `{"port":1,"slots":[` + strings.Repeat(`{"topic":"a","path":"/a"},`, 1001) + `{"topic":"a","path":"/a"}]}`
	deep := strings.Repeat(`{"pipe":[`, 40) + `{"topic":"a"}` + strings.Repeat(`]}`, 40)
	cases := []struct {
		name string
		fn   func([]byte) error
		body string
		want string
	}{
		{"node empty", nodeFn, ``, "empty body"},
		{"node not object", nodeFn, `[1]`, "JSON object"},
		{"node malformed", nodeFn, `{"port":`, "malformed JSON"},
		{"node no port", nodeFn, `{}`, "missing port"},
		{"node port bool", nodeFn, `{"port":true}`, "integer"},
		{"node port float", nodeFn, `{"port":80.5}`, "integer"},
		{"node port range", nodeFn, `{"port":70000}`, "between 1 and 65535"},
		{"node port negative", nodeFn, `{"port":-1}`, "non-negative"},
		{"node port text", nodeFn, `{"port":"http"}`, "integer"},
		{"node host", nodeFn, `{"port":1,"host":"a b/c"}`, "invalid host"},
		{"node host type", nodeFn, `{"port":1,"host":5}`, "must be a string"},
		{"node health type", nodeFn, `{"port":1,"health_check":{}}`, "must be a string"},
		{"node services type", nodeFn, `{"port":1,"services":"echo"}`, "list or a topic-keyed map"},
		{"node service no group", nodeFn, `{"port":1,"services":[{"topic":"a","path":"/a"}]}`, "missing group"},
		{"node service wildcard", nodeFn, `{"port":1,"services":[{"topic":"a.*","group":"g","path":"/a"}]}`, "wildcards"},
		{"node slot no path", nodeFn, `{"port":1,"slots":[{"topic":"a"}]}`, "missing path"},
		{"node slot bad item", nodeFn, `{"port":1,"slots":[1]}`, "JSON object"},
		{"node slot timeout", nodeFn, `{"port":1,"slots":[{"topic":"a","path":"/a","timeout":"soon"}]}`, "integer"},
		{"node too many", nodeFn, huge, "too many"},
		{"sub empty topic", subFn, `{"topic":"","group":"g","path":"/a"}`, "missing topic"},
		{"sub space topic", subFn, `{"topic":"a b","group":"g","path":"/a"}`, "no spaces"},
		{"sub gt topic", subFn, `{"topic":"a.>","group":"g","path":"/a"}`, "'>'"},
		{"sub empty token", subFn, `{"topic":"a..b","group":"g","path":"/a"}`, "empty token"},
		{"sub group space", subFn, `{"topic":"a","group":"g h","path":"/a"}`, "invalid group"},
		{"sub path space", subFn, `{"topic":"a","group":"g","path":"/a b"}`, "invalid path"},
		{"sub group type", subFn, `{"topic":"a","group":1,"path":"/a"}`, "must be a string"},
		{"sub map value", subFn, `{"a":"x"}`, "JSON object"},
		{"sub long topic", subFn, `{"topic":"` + strings.Repeat("a", 600) + `","group":"g","path":"/a"}`, "longer than"},
		{"req none", reqFn, `{"message":1}`, "missing topic or composition"},
		{"req both", reqFn, `{"topic":"a","composition":{"pipe":[{"topic":"a"}]}}`, "not both"},
		{"req wildcard", reqFn, `{"topic":"a*"}`, "wildcards"},
		{"req topic type", reqFn, `{"topic":["a"]}`, "must be a string"},
		{"req timeout type", reqFn, `{"topic":"a","timeout":"x"}`, "integer"},
		{"req opts type", reqFn, `{"topic":"a","opts":3}`, "JSON object"},
		{"comp not object", reqFn, `{"composition":[1]}`, "JSON object"},
		{"comp unknown kind", reqFn, `{"composition":{"fork":[{"topic":"a"}]}}`, "unknown key"},
		{"comp two kinds", reqFn, `{"composition":{"pipe":[{"topic":"a"}],"batch":[{"topic":"a"}]}}`, "one kind"},
		{"comp empty", reqFn, `{"composition":{"pipe":[]}}`, "no steps"},
		{"comp steps type", reqFn, `{"composition":{"pipe":{"topic":"a"}}}`, "list of steps"},
		{"comp lambda type", reqFn, `{"composition":{"lambda":5}}`, "lambda must be"},
		{"comp record type", reqFn, `{"composition":{"batch":[{"topic":"a"}],"record":"yes"}}`, "record must be"},
		{"comp requestsN two", reqFn, `{"composition":{"requests1":{"a":"","b":""}}}`, "exactly one topic"},
		{"comp wildcard step", reqFn, `{"composition":{"pipe":[{"topic":"a*"}]}}`, "wildcards"},
		{"comp deep", reqFn, `{"composition":` + deep + `}`, "nested deeper"},
		{"comp no kind", reqFn, `{"composition":{"record":true}}`, "without topic or kind"},
		{"signal wildcard", sigFn, `{"topic":"*"}`, "wildcards"},
		{"signal no topic", sigFn, `{"message":1}`, "missing topic"},
		{"signal malformed", sigFn, `{"topic":"a",}`, "malformed JSON"},
	}
	for _, c := range cases {
		err := c.fn([]byte(c.body))
		if err == nil || !IsBadRequest(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want a bad request with %q", c.name, err, c.want)
		}
	}
}

func nodeFn(b []byte) error { _, err := DecodeNodeCreate(b); return err }
func subFn(b []byte) error  { _, err := DecodeSubs(b, true); return err }
func reqFn(b []byte) error  { _, err := DecodePublishRequest(b); return err }
func sigFn(b []byte) error  { _, err := DecodeSignalRequest(b); return err }

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		pattern, filter string
		exact           bool
	}{
		{"user.add.*", "user.add.>", true}, {"ping*", ">", false}, {"a.*.c", "a.>", false},
		{"user.add*", "user.>", false}, {"*", ">", true}, {"plain.topic", "plain.topic", true},
	} {
		f, ex := GlobFilter(c.pattern)
		if f != c.filter || ex != c.exact {
			t.Errorf("GlobFilter(%q) = %q %v, want %q %v", c.pattern, f, ex, c.filter, c.exact)
		}
	}
	for _, c := range []struct {
		pattern, topic string
		match          bool
	}{
		{"ping*", "pingworld", true}, {"ping*", "ping", true}, {"ping*", "pin", false},
		{"user.add.*", "user.add.5.x", true}, {"user.add.*", "user.addx", false},
		{"a.*.c", "a.b.x.c", true}, {"a.*.c", "a.b.d", false}, {"*x*y", "axbxy", true}, {"*x*y", "axbx", false},
		{"a?", "ab", false}, {"a?", "a?", true},
	} {
		if got := GlobMatch(c.pattern, c.topic); got != c.match {
			t.Errorf("GlobMatch(%q, %q) = %v", c.pattern, c.topic, got)
		}
	}
}

func TestMergeInflate(t *testing.T) {
	if got := string(Merge(json.RawMessage(`{"a":1,"b":1}`), json.RawMessage(`{"b":2}`))); got != `{"a":1,"b":2}` {
		t.Fatal(got)
	}
	if got := string(Merge(json.RawMessage(`5`), json.RawMessage(`{"b":2}`))); got != `{"b":2}` {
		t.Fatal(got)
	}
	if got := string(Merge(json.RawMessage(`{"a":1}`), nil)); got != `{"a":1}` {
		t.Fatal(got)
	}
	m := Inflate([]Message{{Data: json.RawMessage(`1`), Code: 200}, {Data: json.RawMessage(`"x"`), Code: 500}})
	if string(m.Data) != `[1,"x"]` || m.Code != 500 {
		t.Fatalf("%+v", m)
	}
}

// fuzz: no decoder panics; whatever decodes re-validates.

func FuzzDecodeNodeCreate(f *testing.F) {
	for _, b := range goldenNodeCreate {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		nc, err := DecodeNodeCreate(b)
		if err != nil {
			if !IsBadRequest(err) {
				t.Fatalf("not a bad request: %v", err)
			}
			return
		}
		for _, s := range nc.Services {
			if ValidateSub(s, true) != nil {
				t.Fatalf("invalid service accepted: %+v", s)
			}
		}
		for _, s := range nc.Slots {
			if ValidateSub(s, false) != nil {
				t.Fatalf("invalid slot accepted: %+v", s)
			}
		}
	})
}

func FuzzDecodeSubs(f *testing.F) {
	for _, b := range goldenSubs {
		f.Add([]byte(b), true)
	}
	f.Fuzz(func(t *testing.T, b []byte, service bool) {
		subs, err := DecodeSubs(b, service)
		if err != nil {
			if !IsBadRequest(err) {
				t.Fatalf("not a bad request: %v", err)
			}
			return
		}
		for _, s := range subs {
			if ValidateSub(s, service) != nil || !strings.HasPrefix(s.Path, "/") {
				t.Fatalf("invalid sub accepted: %+v", s)
			}
		}
	})
}

func FuzzDecodePublishRequest(f *testing.F) {
	for _, b := range goldenRequests {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pr, err := DecodePublishRequest(b)
		if err != nil {
			if !IsBadRequest(err) {
				t.Fatalf("not a bad request: %v", err)
			}
			return
		}
		if pr.Composition != nil {
			canon, err := json.Marshal(pr.Composition)
			if err != nil {
				t.Fatal(err)
			}
			again, err := ParseComposition(canon)
			if err != nil {
				t.Fatalf("canonical form %s does not parse: %v", canon, err)
			}
			canon2, _ := json.Marshal(again)
			if string(canon) != string(canon2) {
				t.Fatalf("canonical form unstable: %s vs %s", canon, canon2)
			}
		} else if ValidateTopic(pr.Topic, false) != nil {
			t.Fatalf("invalid topic accepted: %q", pr.Topic)
		}
	})
}

func FuzzDecodeSignalRequest(f *testing.F) {
	for _, b := range goldenSignals {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sr, err := DecodeSignalRequest(b)
		if err == nil && ValidateTopic(sr.Topic, false) != nil {
			t.Fatalf("invalid topic accepted: %q", sr.Topic)
		}
	})
}

func FuzzDecodeEnvelope(f *testing.F) {
	for _, b := range goldenEnvelope {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env := DecodeEnvelope(b)
		if !json.Valid(env.Data) || env.Code < 0 || env.Code > 999 {
			t.Fatalf("bad envelope from %q: %+v", b, env)
		}
		out := EncodeEnvelope(env)
		if !json.Valid(out) {
			t.Fatalf("encoded envelope not JSON: %s", out)
		}
	})
}

func FuzzGlob(f *testing.F) {
	f.Add("user.add.*", "user.add.5.x")
	f.Add("ping*", "pingworld")
	f.Add("a.*.c", "a.b.x.c")
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		if ValidateTopic(pattern, true) != nil || ValidateTopic(topic, false) != nil {
			return
		}
		// a topic matched by the glob is always inside the NATS filter
		if GlobMatch(pattern, topic) {
			filter, _ := GlobFilter(pattern)
			if !subjectMatches(filter, topic) {
				t.Fatalf("glob %q matches %q outside filter %q", pattern, topic, filter)
			}
		}
	})
}

// subjectMatches is NATS subject matching ('*' one token, '>' the rest) for the fuzz check.
func subjectMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, ft := range f {
		if ft == ">" {
			return len(s) > i
		}
		if i >= len(s) || (ft != "*" && ft != s[i]) {
			return false
		}
	}
	return len(f) == len(s)
}

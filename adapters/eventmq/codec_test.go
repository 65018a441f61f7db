package eventmq

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

func fr(s ...string) [][]byte {
	out := make([][]byte, len(s))
	for i, x := range s {
		out[i] = []byte(x)
	}
	return out
}

// Golden frames of §2.2 (without the routing id), as the original Python code sends them.
var golden = map[string][][]byte{
	"request":        fr("", "eMQP/1.0", "REQUEST", "3d1b4a2e-8c3f-4f4e-9d1b-2f6a1c0e5b7a", "default", "reply-requested,guarantee,retry-count:3,timeout:30", `["run", {"callable": "walk", "path": "os.path", "args": [1, "a"], "kwargs": {}, "class_args": [], "class_kwargs": {}}]`),
	"inform_worker":  fr("", "eMQP/1.0", "INFORM", "6a3b1d2c-0000-4000-8000-000000000001", `[[10, "default"], [5, "mail"]]`, "worker"),
	"inform_empty":   fr("", "eMQP/1.0", "INFORM", "6a3b1d2c-0000-4000-8000-000000000002", "", "worker"),
	"inform_sched":   fr("", "eMQP/1.0", "INFORM", "6a3b1d2c-0000-4000-8000-000000000003", "", "scheduler"),
	"ready":          fr("", "eMQP/1.0", "READY", "6a3b1d2c-0000-4000-8000-000000000004"),
	"heartbeat":      fr("", "eMQP/1.0", "HEARTBEAT", "6a3b1d2c-0000-4000-8000-000000000005", "1795315928.0492513"),
	"worker_reply":   fr("", "eMQP/1.0", "REPLY", "6a3b1d2c-0000-4000-8000-000000000006", `{"value": 3}`, "3d1b4a2e-8c3f-4f4e-9d1b-2f6a1c0e5b7a"),
	"kbye":           fr("", "eMQP/1.0", "KBYE", "6a3b1d2c-0000-4000-8000-000000000007"),
	"schedule":       fr("", "eMQP/1.0", "SCHEDULE", "6a3b1d2c-0000-4000-8000-000000000008", "default", "guarantee,run_count:3", "60", `["run", {"callable": "walk", "path": "os.path", "args": [], "kwargs": {}, "class_args": [], "class_kwargs": {}}]`, ""),
	"schedule_cron":  fr("", "eMQP/1.0", "SCHEDULE", "6a3b1d2c-0000-4000-8000-000000000009", "default", "nohaste", "-1", `["run", {"callable": "walk", "path": "os.path", "args": [], "kwargs": {}, "class_args": [], "class_kwargs": {}}]`, "*/5 * * * *"),
	"unschedule":     fr("", "eMQP/1.0", "UNSCHEDULE", "6a3b1d2c-0000-4000-8000-00000000000a", "default", "guarantee", "-1", `["run", {"callable": "walk", "path": "os.path", "args": [], "kwargs": {}, "class_args": [], "class_kwargs": {}}]`, ""),
	"publish":        fr("", "eMQP/1.0", "PUBLISH", "6a3b1d2c-0000-4000-8000-00000000000b", "news", `{"a": 1}`),
	"admin_status":   fr("", "eMQP/1.0", "STATUS", "admin:6a3b1d2c-0000-4000-8000-00000000000c"),
	"admin_workers":  fr("", "eMQP/1.0", "ROUTER_SHOW_WORKERS", "admin:6a3b1d2c-0000-4000-8000-00000000000d"),
	"admin_scheds":   fr("", "eMQP/1.0", "ROUTER_SHOW_SCHEDULERS", "admin:6a3b1d2c-0000-4000-8000-00000000000e"),
	"admin_disc":     fr("", "eMQP/1.0", "DISCONNECT", "admin:6a3b1d2c-0000-4000-8000-00000000000f"),
	"submission_ack": fr("", "eMQP/1.0", "REPLY", "6a3b1d2c-0000-4000-8000-000000000010", "3d1b4a2e-8c3f-4f4e-9d1b-2f6a1c0e5b7a"),
	"ack":            fr("", "eMQP/1.0", "ACK", "6a3b1d2c-0000-4000-8000-000000000011", "6a3b1d2c-0000-4000-8000-000000000001"),
}

func TestGoldenFramesRoundTrip(t *testing.T) {
	for name, g := range golden {
		m, err := Parse(g)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slices.EqualFunc(m.Frames(), g, func(a, b []byte) bool { return string(a) == string(b) }) {
			t.Fatalf("%s: frames changed", name)
		}
	}
	req, err := ParseRequest(mustParse(t, golden["request"]))
	if err != nil {
		t.Fatal(err)
	}
	h := req.Headers
	if !h.ReplyRequested || !h.Guarantee || h.RetryCount != 3 || h.Timeout != 30 || h.RunCount != -1 || req.Queue != "default" {
		t.Fatalf("request %+v", req)
	}
	if got := req.Frames(); len(got) != 7 || string(got[6]) != string(golden["request"][6]) || string(got[5]) != h.Raw {
		t.Fatalf("request re-encoded %q", got)
	}
	in, err := ParseInform(mustParse(t, golden["inform_worker"]))
	if err != nil || len(in.Queues) != 2 || in.Queues[1] != (QueueWeight{5, "mail"}) || in.Type != TypeWorker {
		t.Fatalf("inform %+v %v", in, err)
	}
	in, err = ParseInform(mustParse(t, golden["inform_empty"]))
	if err != nil || len(in.Queues) != 1 || in.Queues[0] != (QueueWeight{10, "default"}) {
		t.Fatalf("empty inform %+v %v", in, err)
	}
	if in, err := ParseInform(mustParse(t, golden["inform_sched"])); err != nil || in.Type != TypeScheduler || in.Queues != nil {
		t.Fatalf("scheduler inform %+v %v", in, err)
	}
	r, err := ParseWorkerReply(mustParse(t, golden["worker_reply"]))
	if err != nil || string(r.Result) != `{"value": 3}` || r.RequestMsgID != "3d1b4a2e-8c3f-4f4e-9d1b-2f6a1c0e5b7a" {
		t.Fatalf("reply %+v %v", r, err)
	}
	s, err := ParseSchedule(mustParse(t, golden["schedule"]))
	if err != nil || s.Interval != 60 || s.Headers.RunCount != 3 || s.Cron != "" {
		t.Fatalf("schedule %+v %v", s, err)
	}
	s, err = ParseSchedule(mustParse(t, golden["schedule_cron"]))
	if err != nil || s.Interval != -1 || !s.Headers.NoHaste || s.Cron != "*/5 * * * *" {
		t.Fatalf("cron schedule %+v %v", s, err)
	}
	p, err := ParsePublish(mustParse(t, golden["publish"]))
	if err != nil || p.Topic != "news" || string(p.Data) != `{"a": 1}` {
		t.Fatalf("publish %+v %v", p, err)
	}
	e := Encode(CmdHeartbeat, Timestamp(time.Unix(1795315928, 49251300)))
	if len(e) != 5 || string(e[2]) != "HEARTBEAT" || len(e[3]) != 36 || !strings.HasPrefix(string(e[4]), "1795315928.0492513") {
		t.Fatalf("heartbeat %q", e)
	}
}

func mustParse(t *testing.T, f [][]byte) Message {
	t.Helper()
	m, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBadFrames(t *testing.T) {
	long := strings.Repeat("x", 300)
	cases := []struct {
		name   string
		frames [][]byte
		parse  func(Message) error
		want   error
	}{
		{"no frames", nil, nil, ErrShort},
		{"three frames", fr("", "eMQP/1.0", "READY"), nil, ErrShort},
		{"frame 0 not empty", fr("x", "eMQP/1.0", "READY", "id"), nil, ErrEnvelope},
		{"version", fr("", "eMQP/2.0", "READY", "id"), nil, ErrVersion},
		{"lower case command", fr("", "eMQP/1.0", "ready", "id"), nil, ErrCommand},
		{"empty command", fr("", "eMQP/1.0", "", "id"), nil, ErrCommand},
		{"binary command", fr("", "eMQP/1.0", "RE\x00DY", "id"), nil, ErrCommand},
		{"empty msgid", fr("", "eMQP/1.0", "READY", ""), nil, ErrField},
		{"long msgid", fr("", "eMQP/1.0", "READY", long), nil, ErrField},
		{"msgid with newline", fr("", "eMQP/1.0", "READY", "a\nb"), nil, ErrField},
		{"msgid not utf-8", fr("", "eMQP/1.0", "READY", "\xff\xfe"), nil, ErrField},
		{"request 6 frames", fr("", "eMQP/1.0", "REQUEST", "id", "q", ""), reqP, ErrFrames},
		{"request 8 frames", fr("", "eMQP/1.0", "REQUEST", "id", "q", "", "[]", "x"), reqP, ErrFrames},
		{"request payload not json", fr("", "eMQP/1.0", "REQUEST", "id", "q", "", "{"), reqP, ErrField},
		{"request queue control char", fr("", "eMQP/1.0", "REQUEST", "id", "q\r", "", "[]"), reqP, ErrField},
		{"request long queue", fr("", "eMQP/1.0", "REQUEST", "id", long, "", "[]"), reqP, ErrField},
		{"request bad retry-count", fr("", "eMQP/1.0", "REQUEST", "id", "q", "retry-count:abc", "[]"), reqP, ErrField},
		{"request bad timeout", fr("", "eMQP/1.0", "REQUEST", "id", "q", "timeout:-5", "[]"), reqP, ErrField},
		{"inform 5 frames", fr("", "eMQP/1.0", "INFORM", "id", "[]"), infP, ErrFrames},
		{"inform bad type", fr("", "eMQP/1.0", "INFORM", "id", "", "client"), infP, ErrField},
		{"inform queues not json", fr("", "eMQP/1.0", "INFORM", "id", "default", "worker"), infP, ErrField},
		{"inform queues empty list", fr("", "eMQP/1.0", "INFORM", "id", "[]", "worker"), infP, ErrField},
		{"inform queue entry size", fr("", "eMQP/1.0", "INFORM", "id", `[[10]]`, "worker"), infP, ErrField},
		{"inform weight not number", fr("", "eMQP/1.0", "INFORM", "id", `[["a","b"]]`, "worker"), infP, ErrField},
		{"inform empty name", fr("", "eMQP/1.0", "INFORM", "id", `[[1,""]]`, "worker"), infP, ErrField},
		{"reply 5 frames", fr("", "eMQP/1.0", "REPLY", "id", "x"), repP, ErrFrames},
		{"reply empty msgid", fr("", "eMQP/1.0", "REPLY", "id", "{}", ""), repP, ErrField},
		{"schedule 8 frames", fr("", "eMQP/1.0", "SCHEDULE", "id", "q", "", "1", "[]"), schP, ErrFrames},
		{"schedule interval", fr("", "eMQP/1.0", "SCHEDULE", "id", "q", "", "soon", "[]", ""), schP, ErrField},
		{"schedule payload", fr("", "eMQP/1.0", "SCHEDULE", "id", "q", "", "1", "[", ""), schP, ErrField},
		{"schedule run_count", fr("", "eMQP/1.0", "SCHEDULE", "id", "q", "run_count:x", "1", "[]", ""), schP, ErrField},
		{"publish 5 frames", fr("", "eMQP/1.0", "PUBLISH", "id", "t"), pubP, ErrFrames},
		{"publish topic not utf-8", fr("", "eMQP/1.0", "PUBLISH", "id", "\xff", "x"), pubP, ErrField},
	}
	for _, c := range cases {
		m, err := Parse(c.frames)
		if err == nil && c.parse != nil {
			err = c.parse(m)
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func reqP(m Message) error { _, err := ParseRequest(m); return err }
func infP(m Message) error { _, err := ParseInform(m); return err }
func repP(m Message) error { _, err := ParseWorkerReply(m); return err }
func schP(m Message) error { _, err := ParseSchedule(m); return err }
func pubP(m Message) error { _, err := ParsePublish(m); return err }

func FuzzParse(f *testing.F) {
	for _, g := range golden {
		f.Add(strings.Join(bytesToStrings(g), "\x1f"))
	}
	f.Add("")
	f.Add("\x1f\x1f\x1f")
	f.Fuzz(func(t *testing.T, s string) {
		frames := fr(strings.Split(s, "\x1f")...)
		m, err := Parse(frames)
		if err != nil {
			return
		}
		// Round trip, and none of the typed parsers may panic.
		if got := m.Frames(); len(got) != len(frames) {
			t.Fatalf("round trip %q", got)
		}
		_, _ = ParseRequest(m)
		_, _ = ParseInform(m)
		_, _ = ParseWorkerReply(m)
		if sc, err := ParseSchedule(m); err == nil {
			_, _ = ScheduleHash(sc.Payload)
			_, _ = parseCron(sc.Cron)
		}
		_, _ = ParsePublish(m)
	})
}

func FuzzScheduleHash(f *testing.F) {
	f.Add(`["run", {"callable": "walk", "path": "os.path", "args": [1.5, 1e20, "é𝄞"], "kwargs": {"b": 1, "a": [null, true]}, "class_args": [], "class_kwargs": {}}]`)
	f.Add(`[]`)
	f.Add(`["run", 1]`)
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ScheduleHash([]byte(s))
		if err == nil && len(h) != 40 {
			t.Fatalf("hash %q", h)
		}
	})
}

func FuzzCron(f *testing.F) {
	for _, s := range []string{"* * * * *", "*/5 1-3 * jan-mar mon,fri", "0 0 29 2 *", "@hourly", "* * * * * */2", "1-2/0 * * * *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCron(s)
		if err != nil {
			return
		}
		from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		if n := c.Next(from); !n.IsZero() && !n.After(from) {
			t.Fatalf("%q: next %v not after %v", s, n, from)
		}
	})
}

func bytesToStrings(b [][]byte) []string {
	out := make([]string, len(b))
	for i, x := range b {
		out[i] = string(x)
	}
	return out
}

// The schedule hash must be the original scheduler's, byte for byte: compare with Python.
func TestScheduleHashMatchesPython(t *testing.T) {
	if _, err := exec.LookPath(python); err != nil {
		t.Skip("no python3")
	}
	payloads := []string{
		`["run", {"callable": "walk", "path": "os.path", "args": [], "kwargs": {}, "class_args": [], "class_kwargs": {}}]`,
		`["run", {"callable": "send", "path": "app.mail:Mailer", "args": [1, 2.5, 1e20, 1e-7, 123456789012345678901234567890, -0.0, 0.1, 100.0], "kwargs": {"z": "é", "a": "𝄞\u0001\u007f\t\"\\/", "m": {"y": null, "x": [true, false]}}, "class_args": ["x"], "class_kwargs": {"k": 1}}]`,
		`["run", {"callable": "f", "path": "p", "args": [1.0e16, 1.5e-5, 0.0001, 3.14159265358979, 12345678.9], "kwargs": {"dup": 1, "dup": 2}, "class_args": [], "class_kwargs": {}}]`,
		`["run", {"callable": "f", "path": "p", "args": ["\u00e9\u4e2d\ud83d\ude00"], "kwargs": {}, "class_args": [], "class_kwargs": {}, "extra": 1}]`,
	}
	script := `import sys, json, hashlib
for line in sys.stdin:
    msg = json.loads(line)[1]
    s = json.dumps({'args': msg['args'], 'kwargs': msg['kwargs'], 'class_args': msg['class_args'],
                    'class_kwargs': msg['class_kwargs'], 'path': msg['path'], 'callable': msg['callable']}, sort_keys=True)
    print(hashlib.sha1(s.encode('utf-8')).hexdigest())`
	cmd := exec.Command(python, "-c", script)
	cmd.Stdin = strings.NewReader(strings.Join(payloads, "\n") + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	want := strings.Fields(string(out))
	for i, p := range payloads {
		got, err := ScheduleHash([]byte(p))
		if err != nil || got != want[i] {
			t.Errorf("payload %d: hash %s (%v), python %s", i, got, err, want[i])
		}
	}
}

func TestCronNext(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cases := []struct{ expr, from, want string }{
		{"* * * * *", "2026-01-01T00:00:30Z", "2026-01-01T00:01:00Z"},
		{"*/15 * * * *", "2026-01-01T00:01:00Z", "2026-01-01T00:15:00Z"},
		{"0 9 * * mon-fri", "2026-01-02T10:00:00Z", "2026-01-05T09:00:00Z"}, // Fri → Mon
		{"0 0 29 2 *", "2026-03-01T00:00:00Z", "2028-02-29T00:00:00Z"},
		{"0 0 1 * 0", "2026-01-02T00:00:00Z", "2026-01-04T00:00:00Z"}, // dom OR dow
		{"@daily", "2026-01-01T12:00:00Z", "2026-01-02T00:00:00Z"},
		{"* * * * * */10", "2026-01-01T00:00:01Z", "2026-01-01T00:00:10Z"},
		{"30 2 * * 7", "2026-01-01T00:00:00Z", "2026-01-04T02:30:00Z"},
	}
	for _, c := range cases {
		cs, err := parseCron(c.expr)
		if err != nil {
			t.Fatalf("%s: %v", c.expr, err)
		}
		if got := cs.Next(at(c.from)); !got.Equal(at(c.want)) {
			t.Errorf("%s from %s: %s, want %s", c.expr, c.from, got, c.want)
		}
	}
	for _, bad := range []string{"", "* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *", "5-1 * * * *", "x * * * *"} {
		if _, err := parseCron(bad); err == nil {
			t.Errorf("cron %q accepted", bad)
		}
	}
}

func TestHeaders(t *testing.T) {
	h, err := ParseHeaders("nohaste, run_count:4,unknown,guarantee")
	if err != nil || !h.NoHaste || h.RunCount != 4 || !h.Guarantee || h.ReplyRequested || h.RetryCount != -1 || h.Timeout != 0 {
		t.Fatalf("%+v %v", h, err)
	}
	if h, _ := ParseHeaders(""); h.RunCount != -1 || h.RetryCount != -1 {
		t.Fatalf("empty %+v", h)
	}
}

func TestPyFloatRepr(t *testing.T) {
	for f, want := range map[float64]string{1: "1.0", 0.1: "0.1", 1e16: "1e+16", 1e15: "1000000000000000.0", 1e-5: "1e-05",
		0.0001: "0.0001", -2.5: "-2.5", 1.5e300: "1.5e+300", 123456789.125: "123456789.125", 5e-324: "5e-324"} {
		if got := pyFloatRepr(f); got != want {
			t.Errorf("%v: %s want %s", f, got, want)
		}
	}
}

func TestNamesAndTokens(t *testing.T) {
	for _, q := range []string{"default", "a.b", "with space", "x*y>z", "100%", "ünïcode", strings.Repeat("q", 200), ""} {
		n := consumerName(q)
		if !strings.HasPrefix(n, consumerPrefix) || len(n) > 80 {
			t.Errorf("consumer name %q for %q", n, q)
		}
		for _, c := range n {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				t.Errorf("consumer name %q has %q", n, c)
			}
		}
		if q != "" && untoken(jetstream.Token(q)) != q {
			t.Errorf("token round trip of %q: %q", q, untoken(jetstream.Token(q)))
		}
	}
	if consumerName("a.b") == consumerName("a_b") {
		t.Error("a.b and a_b share a consumer")
	}
	if !strings.HasPrefix(queueKey("x"), "q.") || !strings.HasPrefix(podKey("p"), "pod.") {
		t.Error("KV keys")
	}
	if untoken("%zz%4") != "%zz%4" {
		t.Error("bad escapes must stay as they are")
	}
}

package zmtp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// goldenGreeting31 is the greeting of a ZMTP 3.1 NULL client as libzmq
// 4.3 sends it (padding zero, 0x7F, 3.1, "NULL", as-server 0, filler).
const goldenGreeting31 = "ff 0000000000000000 7f 03 01" +
	" 4e554c4c 00000000000000000000000000000000" + // "NULL" + 16 NULs
	" 00" + " 00000000000000000000000000000000000000000000000000000000000000"

func TestGreetingGolden(t *testing.T) {
	want := unhex(t, goldenGreeting31)
	if len(want) != GreetingSize {
		t.Fatalf("golden greeting has %d bytes", len(want))
	}
	got := AppendGreeting(nil, Greeting{Major: 3, Minor: 1, Mechanism: "NULL"})
	if !bytes.Equal(got, want) {
		t.Fatalf("greeting\n got %x\nwant %x", got, want)
	}
	g, err := ParseGreeting(want)
	if err != nil {
		t.Fatal(err)
	}
	if g != (Greeting{Major: 3, Minor: 1, Mechanism: "NULL"}) {
		t.Fatalf("parsed %+v", g)
	}
	if err := CheckGreeting(g); err != nil {
		t.Fatal(err)
	}
	// A 3.0 peer, as-server set.
	b := bytes.Clone(want)
	b[11], b[32] = 0, 1
	g, err = ParseGreeting(b)
	if err != nil || g.Minor != 0 || !g.AsServer {
		t.Fatalf("3.0 greeting: %+v %v", g, err)
	}
	// A future 3.2 peer and a 4.0 peer still parse (we speak 3.1 to them).
	b[10], b[11] = 4, 0
	if _, err := ParseGreeting(b); err != nil {
		t.Fatalf("4.0 greeting: %v", err)
	}
}

func TestGreetingBad(t *testing.T) {
	good := unhex(t, goldenGreeting31)
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrBadSignature},
		{"bad first byte", mod(func(b []byte) []byte { b[0] = 0x01; return b }), ErrBadSignature},
		{"zmtp 1.0 (byte 9 even)", mod(func(b []byte) []byte { b[9] = 0x7E; return b }), ErrBadSignature},
		{"version 2", mod(func(b []byte) []byte { b[10] = 2; return b }), ErrBadVersion},
		{"version 1 short", mod(func(b []byte) []byte { b[10] = 1; return b[:11] }), ErrBadVersion},
		{"truncated signature", good[:5], ErrTruncated},
		{"truncated", good[:40], ErrTruncated},
		{"mechanism not NUL padded", mod(func(b []byte) []byte { b[12+5] = 'X'; return b }), ErrMechanism},
		{"bad as-server", mod(func(b []byte) []byte { b[32] = 2; return b }), ErrBadSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseGreeting(c.in)
			if !errors.Is(err, c.want) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
		})
	}
	for _, mech := range []string{"PLAIN", "CURVE", "", "null"} {
		b := AppendGreeting(nil, Greeting{Major: 3, Minor: 1, Mechanism: mech})
		g, err := ParseGreeting(b)
		if err != nil {
			t.Fatalf("%q: %v", mech, err)
		}
		if err := CheckGreeting(g); !errors.Is(err, ErrMechanism) {
			t.Fatalf("mechanism %q accepted: %v", mech, err)
		}
	}
}

func TestFrameGolden(t *testing.T) {
	cases := []struct {
		name  string
		flags Flags
		body  []byte
		want  string
	}{
		{"empty last", 0, nil, "00 00"},
		{"short more", FlagMore, []byte("Hi"), "01 02 4869"},
		{"short 255", 0, bytes.Repeat([]byte{7}, 255), "00 ff" + strings.Repeat("07", 255)},
		{"long 256", FlagMore, bytes.Repeat([]byte{1}, 256), "03 0000000000000100" + strings.Repeat("01", 256)},
		{"command short", FlagCommand, []byte{4, 'P', 'O', 'N', 'G'}, "04 05 04504f4e47"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := unhex(t, c.want)
			got := AppendFrame(nil, c.flags, c.body)
			if !bytes.Equal(got, want) {
				t.Fatalf("got %x want %x", got, want)
			}
			f, rest, err := ParseFrame(append(bytes.Clone(want), 0xAA), 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(f.Body, c.body) || f.Flags&^FlagLong != c.flags || !bytes.Equal(rest, []byte{0xAA}) {
				t.Fatalf("parsed %+v rest %x", f, rest)
			}
		})
	}
	msg := AppendMessage(nil, [][]byte{[]byte("id"), {}, []byte("body")})
	if want := unhex(t, "01 02 6964 01 00 00 04 626f6479"); !bytes.Equal(msg, want) {
		t.Fatalf("message %x want %x", msg, want)
	}
	if MessageWireSize([][]byte{[]byte("id"), {}, []byte("body")}) != len(msg) {
		t.Fatal("MessageWireSize")
	}
}

func TestFrameBad(t *testing.T) {
	cases := []struct {
		name string
		in   string
		max  uint64
		want error
	}{
		{"empty", "", 100, ErrTruncated},
		{"short header", "00", 100, ErrTruncated},
		{"long header cut", "02 00000000", 100, ErrTruncated},
		{"reserved bit", "08 00", 100, ErrFrameFlags},
		{"high bit", "80 00", 100, ErrFrameFlags},
		{"command with more", "05 00", 100, ErrFrameFlags},
		{"body truncated", "00 05 6869", 100, ErrTruncated},
		{"oversize short", "00 ff", 100, ErrTooLarge},
		{"oversize long claim 2^63", "02 8000000000000000", 1 << 20, ErrTooLarge},
		{"oversize long claim max", "02 ffffffffffffffff", 1 << 20, ErrTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := ParseFrame(unhex(t, c.in), c.max)
			if !errors.Is(err, c.want) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
		})
	}
}

// goldenReady is the READY of a libzmq DEALER with routing id "w1".
const goldenReady = "04 2b" + // command, short, 43 bytes
	" 05 5245414459" + // "READY"
	" 0b 536f636b65742d54797065 00000006 4445414c4552" + // Socket-Type: DEALER
	" 08 4964656e74697479 00000002 7731" // Identity: w1

func TestReadyGolden(t *testing.T) {
	want := unhex(t, goldenReady)
	got := ReadyFrame(Metadata{{PropSocketType, []byte("DEALER")}, {PropIdentity, []byte("w1")}})
	if !bytes.Equal(got, want) {
		t.Fatalf("READY\n got %x\nwant %x", got, want)
	}
	f, _, err := ParseFrame(want, 1<<20)
	if err != nil || !f.IsCommand() {
		t.Fatal(f, err)
	}
	cmd, err := ParseCommand(f.Body)
	if err != nil || cmd.Name != CmdReady {
		t.Fatal(cmd, err)
	}
	md, err := ParseMetadata(cmd.Data)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := md.Get("socket-type"); string(st) != "DEALER" {
		t.Fatalf("socket type %q", st)
	}
	if id, ok := md.Get("IDENTITY"); !ok || string(id) != "w1" {
		t.Fatalf("identity %q", id)
	}
	if _, ok := md.Get("Resource"); ok {
		t.Fatal("unexpected property")
	}
}

func TestCommandGolden(t *testing.T) {
	cases := []struct {
		name string
		got  []byte
		want string
	}{
		{"PING ttl 1s ctx", PingFrame(time.Second, []byte("ab")), "04 09 0450494e47 000a 6162"},
		{"PING no ttl", PingFrame(0, nil), "04 07 0450494e47 0000"},
		{"PING ttl capped", PingFrame(time.Hour*10, nil), "04 07 0450494e47 ffff"},
		{"PONG", PongFrame([]byte("ab")), "04 07 04504f4e47 6162"},
		{"SUBSCRIBE", SubscribeFrame([]byte("a."), false), "04 0c 09535542534352494245 612e"},
		{"CANCEL", SubscribeFrame([]byte("a."), true), "04 09 0643414e43454c 612e"},
		{"ERROR", ErrorFrame("no"), "04 09 054552524f52 02 6e6f"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if want := unhex(t, c.want); !bytes.Equal(c.got, want) {
				t.Fatalf("got %x want %x", c.got, want)
			}
		})
	}
	ttl, ctx, err := ParsePing(unhex(t, "000a 6162"))
	if err != nil || ttl != time.Second || string(ctx) != "ab" {
		t.Fatal(ttl, ctx, err)
	}
	r, err := ParseErrorReason(unhex(t, "02 6e6f"))
	if err != nil || r != "no" {
		t.Fatal(r, err)
	}
	long := ErrorFrame(strings.Repeat("x", 300))
	f, _, _ := ParseFrame(long, 1<<20)
	c, _ := ParseCommand(f.Body)
	if r, err := ParseErrorReason(c.Data); err != nil || len(r) != 255 {
		t.Fatal(len(r), err)
	}
}

func TestCommandBad(t *testing.T) {
	for _, c := range []struct{ name, in string }{
		{"empty", ""},
		{"zero name", "00"},
		{"name cut", "05 5245"},
		{"bad name char", "02 41 20"},
	} {
		if _, err := ParseCommand(unhex(t, c.in)); !errors.Is(err, ErrBadCommand) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	for _, c := range []struct{ name, in string }{
		{"zero name", "00 00000000"},
		{"header cut", "04 41424344 0000"},
		{"value cut", "01 41 00000005 6869"},
		{"value claims 4 GiB", "01 41 ffffffff"},
		{"bad name", "01 20 00000000"},
	} {
		if _, err := ParseMetadata(unhex(t, c.in)); !errors.Is(err, ErrBadMetadata) {
			t.Errorf("metadata %s: %v", c.name, err)
		}
	}
	for _, c := range []string{"", "00", strings.Repeat("00", 19)} {
		if _, _, err := ParsePing(unhex(t, c)); !errors.Is(err, ErrBadCommand) {
			t.Errorf("PING %q: %v", c, err)
		}
	}
	for _, c := range []string{"", "05 6162"} {
		if _, err := ParseErrorReason(unhex(t, c)); !errors.Is(err, ErrBadCommand) {
			t.Errorf("ERROR %q: %v", c, err)
		}
	}
}

func TestSubscriptionMessage(t *testing.T) {
	for _, c := range []struct {
		in     [][]byte
		prefix string
		sub    bool
		ok     bool
	}{
		{[][]byte{[]byte("\x01a.")}, "a.", true, true},
		{[][]byte{[]byte("\x00a.")}, "a.", false, true},
		{[][]byte{[]byte("\x01")}, "", true, true},
		{[][]byte{[]byte("\x02a")}, "", false, false},
		{[][]byte{{}}, "", false, false},
		{[][]byte{[]byte("\x01a"), []byte("x")}, "", false, false},
	} {
		p, sub, ok := ParseSubscriptionMessage(c.in)
		if string(p) != c.prefix || sub != c.sub || ok != c.ok {
			t.Errorf("%q: %q %v %v", c.in, p, sub, ok)
		}
	}
}

func TestCompatible(t *testing.T) {
	for _, c := range []struct {
		local, remote string
		ok            bool
	}{
		{TypeRouter, TypeReq, true}, {TypeRouter, TypeDealer, true}, {TypeRouter, TypeRouter, true},
		{TypeRouter, TypeRep, false}, {TypeRouter, TypeSub, false}, {TypeRouter, "dealer", false},
		{TypePub, TypeSub, true}, {TypePub, TypeXSub, true}, {TypePub, TypeDealer, false}, {TypePub, TypePub, false},
		{TypeReq, TypeRouter, true}, {TypeDealer, TypeRep, true}, {TypeRep, TypeDealer, true},
		{TypeSub, TypeXPub, true}, {TypePush, TypePull, true}, {TypePair, TypePair, true}, {"FOO", "FOO", false},
	} {
		if got := Compatible(c.local, c.remote); got != c.ok {
			t.Errorf("Compatible(%s, %s) = %v", c.local, c.remote, got)
		}
	}
}

func TestSplitEnvelope(t *testing.T) {
	b := func(s ...string) [][]byte {
		var out [][]byte
		for _, x := range s {
			out = append(out, []byte(x))
		}
		return out
	}
	env, body := SplitEnvelope(b("", "hello"))
	if len(env) != 1 || len(body) != 1 || string(body[0]) != "hello" {
		t.Fatal(env, body)
	}
	env, body = SplitEnvelope(b("hop", "", "a", "b"))
	if len(env) != 2 || len(body) != 2 {
		t.Fatal(env, body)
	}
	// Appending to the envelope must not clobber the body.
	full := b("", "x")
	env, body = SplitEnvelope(full)
	_ = append(env, []byte("y"))
	if string(full[1]) != "x" || string(body[0]) != "x" {
		t.Fatal("envelope aliases body")
	}
	env, body = SplitEnvelope(b("a", "b"))
	if env != nil || len(body) != 2 {
		t.Fatal(env, body)
	}
	m := Message{Frames: b("", "q")}
	if len(m.Envelope()) != 1 || string(m.Body()[0]) != "q" {
		t.Fatal(m)
	}
}

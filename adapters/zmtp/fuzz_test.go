package zmtp

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
	"time"
)

func FuzzGreeting(f *testing.F) {
	g := AppendGreeting(nil, Greeting{Major: 3, Minor: 1, Mechanism: "NULL"})
	f.Add(g)
	f.Add(AppendGreeting(nil, Greeting{Major: 3, Minor: 0, Mechanism: "PLAIN", AsServer: true}))
	f.Add(g[:11])
	f.Add([]byte{0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 2})
	f.Add([]byte{0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := ParseGreeting(b)
		if err != nil {
			return
		}
		if len(b) < GreetingSize || g.Major < 3 {
			t.Fatalf("accepted %x as %+v", b, g)
		}
		// Re-encoding a parsed greeting parses to the same value.
		g2, err := ParseGreeting(AppendGreeting(nil, g))
		if err != nil || g2 != g {
			t.Fatalf("round trip %+v -> %+v, %v", g, g2, err)
		}
	})
}

func FuzzFrame(f *testing.F) {
	f.Add(AppendMessage(nil, [][]byte{[]byte("id"), {}, []byte("body")}), uint16(100))
	f.Add(AppendFrame(nil, FlagMore, bytes.Repeat([]byte{1}, 300)), uint16(1000))
	f.Add(ReadyFrame(Metadata{{PropSocketType, []byte("DEALER")}}), uint16(100))
	f.Add([]byte{0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint16(100))
	f.Add([]byte{0x05, 0x00}, uint16(100))
	f.Fuzz(func(t *testing.T, b []byte, max uint16) {
		rest := b
		for len(rest) > 0 {
			fr, r, err := ParseFrame(rest, uint64(max))
			if err != nil {
				if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrFrameFlags) && !errors.Is(err, ErrTooLarge) {
					t.Fatalf("unexpected error class %v", err)
				}
				return
			}
			if len(fr.Body) > int(max) || len(r) >= len(rest) {
				t.Fatalf("frame %d bytes (max %d), rest %d of %d", len(fr.Body), max, len(r), len(rest))
			}
			// Re-encoding yields a frame that parses to the same body and flags.
			enc := AppendFrame(nil, fr.Flags, fr.Body)
			fr2, r2, err := ParseFrame(enc, uint64(max))
			if err != nil || len(r2) != 0 || !bytes.Equal(fr2.Body, fr.Body) || fr2.Flags&^FlagLong != fr.Flags&^FlagLong {
				t.Fatalf("round trip %+v -> %+v %v", fr, fr2, err)
			}
			rest = r
		}
	})
}

func FuzzCommand(f *testing.F) {
	body := func(frame []byte) []byte { fr, _, _ := ParseFrame(frame, 1<<20); return fr.Body }
	f.Add(body(ReadyFrame(Metadata{{PropSocketType, []byte("DEALER")}, {PropIdentity, []byte("w1")}})))
	f.Add(body(PingFrame(time.Second, []byte("ctx"))))
	f.Add(body(PongFrame([]byte("ctx"))))
	f.Add(body(SubscribeFrame([]byte("topic"), false)))
	f.Add(body(ErrorFrame("bad")))
	f.Add([]byte{5, 'R', 'E', 'A', 'D', 'Y', 1, 'A', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		cmd, err := ParseCommand(b)
		if err != nil {
			return
		}
		if got := AppendCommand(nil, cmd.Name, cmd.Data); !bytes.Equal(got, b) {
			t.Fatalf("command round trip %x -> %x", b, got)
		}
		if md, err := ParseMetadata(cmd.Data); err == nil {
			if got := AppendMetadata(nil, md); !bytes.Equal(got, cmd.Data) {
				t.Fatalf("metadata round trip %x -> %x", cmd.Data, got)
			}
		}
		if ttl, ctx, err := ParsePing(cmd.Data); err == nil {
			if ttl < 0 || len(ctx) > MaxPingContext {
				t.Fatalf("ping %v %x", ttl, ctx)
			}
		}
		_, _ = ParseErrorReason(cmd.Data)
	})
}

// fuzzHooks stands in for a Router/Pub behind the reader loop.
type fuzzHooks struct{ msgs, cmds, biggest int }

func (h *fuzzHooks) localType() string         { return TypeRouter }
func (h *fuzzHooks) localMetadata() Metadata   { return nil }
func (h *fuzzHooks) admit(*peer, []byte) error { return nil }
func (h *fuzzHooks) remove(*peer)              {}
func (h *fuzzHooks) deliver(_ *peer, frames [][]byte) error {
	h.msgs++
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	h.biggest = max(h.biggest, n)
	return nil
}
func (h *fuzzHooks) command(_ *peer, cmd Command) error { h.cmds++; return nil }

// FuzzReadLoop feeds arbitrary bytes to a connection's reader loop after
// the handshake: it must end with an error (never panic, never hang) and
// never deliver a message over the size limit.
func FuzzReadLoop(f *testing.F) {
	f.Add(AppendMessage(nil, [][]byte{[]byte("id"), {}, []byte("body")}))
	f.Add(append(PingFrame(time.Second, []byte("c")), SubscribeFrame([]byte("a"), false)...))
	f.Add(append(AppendFrame(nil, FlagMore, make([]byte, 300)), AppendFrame(nil, 0, make([]byte, 300))...))
	f.Add([]byte{0x02, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add(ErrorFrame("x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h := &fuzzHooks{}
		l := &listener{opts: Options{MaxMessageSize: 512}, m: newMetrics(nil, "fuzz"), hooks: h}
		p := &peer{l: l, done: make(chan struct{})}
		p.q.init(4)
		err := p.readLoop(bufio.NewReader(bytes.NewReader(b)))
		if err == nil {
			t.Fatal("reader loop ended without error")
		}
		if h.biggest > 512 {
			t.Fatalf("delivered a message of %d bytes over the 512 limit", h.biggest)
		}
	})
}

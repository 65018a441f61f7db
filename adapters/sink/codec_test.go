package sink

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// goldenVectors are the frames of spec §5, printed by the original encoder.
var goldenVectors = []struct {
	name  string
	frame string
	msg   Message
}{
	{"request v0 no server id", "00 05 312e302e30 00000001",
		Message{Type: TypeConnectionRequest, Request: ConnectionRequest{AppVersion: "1.0.0", ClientInstanceID: 1}}},
	{"request v0 server id 2", "00 05 312e302e30 00000001 00000002",
		Message{Type: TypeConnectionRequest, Request: ConnectionRequest{AppVersion: "1.0.0", ClientInstanceID: 1, ServerInstanceID: 2, HasServerID: true}}},
	{"request v15", "0f 05 312e302e30 00000001",
		Message{Type: TypeConnectionRequest, Request: ConnectionRequest{Version: 15}}},
	{"connected", "10", Message{Type: TypeConnectionResponse, Response: ConnectionResponse{Code: RespConnected}}},
	{"hello_new_client", "11 00000002", Message{Type: TypeConnectionResponse, Response: ConnectionResponse{Code: RespHelloNewClient, ServerInstanceID: 2}}},
	{"mismatch", "12", Message{Type: TypeConnectionResponse, Response: ConnectionResponse{Code: RespInstanceIDMismatch}}},
	{"quarantined", "13 03 010101 626c6f636b6564", Message{Type: TypeConnectionResponse,
		Response: ConnectionResponse{Code: RespQuarantined, Machine: []byte{1, 1, 1}, Human: []byte("blocked")}}},
	{"unsupported protocol", "14", Message{Type: TypeConnectionResponse, Response: ConnectionResponse{Code: RespUnsupportedProtocolVersion}}},
	{"unsupported application", "15", Message{Type: TypeConnectionResponse, Response: ConnectionResponse{Code: RespUnsupportedApplicationVersion}}},
	{"ack 0", "3000", Message{Type: TypeAck, ID: 0}},
	{"ack 4095", "3fff", Message{Type: TypeAck, ID: 4095}},
	{"ack 0x123", "3123", Message{Type: TypeAck, ID: 0x123}},
	{"publish 7", "4007 01 01 03010203 ac02 ed85cc8306 026869", Message{Type: TypePublish, ID: 7,
		Event: Event{TypeID: 1, SchemaVersion: 1, Key: []byte{1, 2, 3}, Offset: 300, Timestamp: 1618150125, Data: []byte("hi")}}},
	{"ping", "5000", Message{Type: TypePing}},
	{"pong", "6000", Message{Type: TypePong}},
	{"nack 7", "7007 03 010101 626c6f636b6564", Message{Type: TypeNack, ID: 7, Machine: []byte{1, 1, 1}, Human: []byte("blocked")}},
}

func encode(t testing.TB, m Message) []byte {
	t.Helper()
	var b []byte
	var err error
	switch m.Type {
	case TypeConnectionRequest:
		b, err = AppendConnectionRequest(nil, m.Request)
	case TypeConnectionResponse:
		b, err = AppendConnectionResponse(nil, m.Response)
	case TypeAck:
		b, err = AppendAck(nil, m.ID)
	case TypePublish:
		b, err = AppendPublish(nil, m.ID, m.Event)
	case TypePing:
		b = AppendPing(nil)
	case TypePong:
		b = AppendPong(nil)
	case TypeNack:
		b, err = AppendNack(nil, m.ID, m.Machine, m.Human)
	}
	if err != nil {
		t.Fatalf("encode %v: %v", m.Type, err)
	}
	return b
}

func normalize(m Message) Message {
	// nil and empty slices compare equal for our purposes
	fix := func(b []byte) []byte {
		if len(b) == 0 {
			return nil
		}
		return b
	}
	m.Event.Key, m.Event.Data = fix(m.Event.Key), fix(m.Event.Data)
	m.Machine, m.Human = fix(m.Machine), fix(m.Human)
	m.Response.Machine, m.Response.Human = fix(m.Response.Machine), fix(m.Response.Human)
	return m
}

func TestGoldenVectors(t *testing.T) {
	for _, g := range goldenVectors {
		t.Run(g.name, func(t *testing.T) {
			want := unhex(t, g.frame)
			got, err := Decode(want)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(normalize(got), normalize(g.msg)) {
				t.Fatalf("decode:\n got %+v\nwant %+v", got, g.msg)
			}
			if g.msg.Type == TypeConnectionRequest && g.msg.Request.Version != 0 {
				// only the version is kept for unknown versions; encode the full request instead
				m := g.msg
				m.Request = ConnectionRequest{Version: 15, AppVersion: "1.0.0", ClientInstanceID: 1}
				if enc := encode(t, m); !bytes.Equal(enc, want) {
					t.Fatalf("encode: got %x want %x", enc, want)
				}
				return
			}
			if enc := encode(t, g.msg); !bytes.Equal(enc, want) {
				t.Fatalf("encode: got %x want %x", enc, want)
			}
		})
	}
}

func TestPublishWire(t *testing.T) {
	f := unhex(t, "4007 01 01 03010203 ac02 ed85cc8306 026869")
	var buf bytes.Buffer
	if err := WriteFrame(&buf, f); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(buf.Bytes()[:2]); got != "0012" {
		t.Fatalf("wire prefix %s, want 0012", got)
	}
	r := bufio.NewReader(&buf)
	got, err := ReadFrame(r, nil)
	if err != nil || !bytes.Equal(got, f) {
		t.Fatalf("read frame %x, %v", got, err)
	}
	if _, err := ReadFrame(r, nil); !errors.Is(err, io.EOF) {
		t.Fatalf("want EOF, got %v", err)
	}
	// truncated frame
	if _, err := ReadFrame(bufio.NewReader(bytes.NewReader([]byte{0, 5, 1, 2})), nil); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v", err)
	}
}

func TestBadInputs(t *testing.T) {
	cases := []struct {
		name  string
		frame string
		want  error
		id    uint16
	}{
		{"empty", "", ErrEmptyFrame, 0},
		{"unused type 2", "2000", ErrUnknownType, 0},
		{"unused type 8", "80", ErrUnknownType, 0},
		{"unused type 15", "ff00", ErrUnknownType, 0},
		{"ack short", "30", ErrShortFrame, 0},
		{"ack trailing", "300100", ErrTrailing, 1},
		{"ping trailing", "500000", ErrTrailing, 0},
		{"pong short", "60", ErrShortFrame, 0},
		{"publish header only", "4007", ErrBadVarint, 7},
		{"publish truncated varint", "4007 81", ErrBadVarint, 7},
		{"publish key longer than frame", "4007 01 01 09 0102", ErrBadChunk, 7},
		{"publish no offset", "4007 01 01 03010203", ErrBadVarint, 7},
		{"publish data longer than frame", "4007 01 01 03010203 ac02 ed85cc8306 056869", ErrBadChunk, 7},
		{"publish trailing", "4007 01 01 03010203 ac02 ed85cc8306 026869 00", ErrTrailing, 7},
		{"publish varint overflow", "4fff ffffffffffffffffffff01 01 00 01 01 00", ErrBadVarint, 4095},
		{"nack no machine", "7007", ErrBadVarint, 7},
		{"nack machine too long", "7007 05 0101", ErrBadChunk, 7},
		{"request no app version", "00", ErrBadVarint, 0},
		{"request app version too long", "00 09 312e30", ErrBadChunk, 0},
		{"request short client id", "00 05 312e302e30 000001", ErrShortFrame, 0},
		{"request 2-byte server id", "00 05 312e302e30 00000001 0002", ErrServerIDSize, 0},
		{"request 5-byte server id", "00 05 312e302e30 00000001 0000000200", ErrServerIDSize, 0},
		{"response bad code", "16", ErrBadRespCode, 0},
		{"response connected trailing", "1000", ErrTrailing, 0},
		{"response hello short", "11 0002", ErrShortFrame, 0},
		{"response quarantined empty", "13", ErrBadVarint, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := Decode(unhex(t, c.frame))
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if m.ID != c.id {
				t.Fatalf("id %d, want %d", m.ID, c.id)
			}
		})
	}
}

func TestEncodeStrict(t *testing.T) {
	if _, err := AppendAck(nil, 4096); !errors.Is(err, ErrBadID) {
		t.Fatalf("ack 4096: %v", err)
	}
	if _, err := AppendNack(nil, 5000, nil, nil); !errors.Is(err, ErrBadID) {
		t.Fatalf("nack 5000: %v", err)
	}
	if _, err := AppendConnectionResponse(nil, ConnectionResponse{Code: 6}); !errors.Is(err, ErrBadRespCode) {
		t.Fatalf("code 6: %v", err)
	}
	big := make([]byte, MaxFrame)
	if b, err := AppendPublish([]byte("x"), 1, Event{Data: big}); !errors.Is(err, ErrFrameTooBig) || string(b) != "x" {
		t.Fatalf("big publish: %v %q", err, b)
	}
	// the largest event that fits: header 2 + 5 one-byte varints/lengths... compute exactly
	overhead := len(mustPublish(t, Event{}))
	data := make([]byte, MaxFrame-overhead-2) // data length needs a 3-byte varint instead of 1
	if b, err := AppendPublish(nil, 1, Event{Data: data}); err != nil || len(b) != MaxFrame {
		t.Fatalf("max publish: len %d, %v", len(b), err)
	}
	if err := WriteFrame(io.Discard, make([]byte, MaxFrame+1)); !errors.Is(err, ErrFrameTooBig) {
		t.Fatalf("write big: %v", err)
	}
	// empty NACK payload: machine "" human ""
	if b, _ := AppendNack(nil, 1, nil, nil); hex.EncodeToString(b) != "700100" {
		t.Fatalf("empty nack %x", b)
	}
}

func mustPublish(t testing.TB, e Event) []byte {
	b, err := AppendPublish(nil, 0, e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTripLargeValues(t *testing.T) {
	e := Event{TypeID: 1<<64 - 1, SchemaVersion: 1 << 40, Key: bytes.Repeat([]byte{0xff}, 300), Offset: 1<<63 + 5,
		Timestamp: 1 << 33, Data: bytes.Repeat([]byte("a"), 20000)}
	for _, id := range []uint16{0, 1, 0x800, MaxID} {
		b, err := AppendPublish(nil, id, e)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Decode(b)
		if err != nil || m.ID != id || !reflect.DeepEqual(m.Event, e) {
			t.Fatalf("round trip id %d: %v", id, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, g := range goldenVectors {
		f.Add(unhex(f, g.frame))
	}
	f.Add([]byte{})
	f.Add([]byte{0x20, 0})
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, err := Decode(frame)
		if err != nil {
			return
		}
		// whatever decodes must re-encode to the same bytes, except forms the decoder is lenient
		// about (non-minimal varints, unknown request versions)
		if m.Type == TypeConnectionRequest && m.Request.Version != 0 {
			return
		}
		enc := encode(t, m)
		if !bytes.Equal(enc, frame) {
			m2, err := Decode(enc)
			if err != nil || !reflect.DeepEqual(normalize(m2), normalize(m)) {
				t.Fatalf("re-encode of %x gave %x (%v)", frame, enc, err)
			}
		}
	})
}

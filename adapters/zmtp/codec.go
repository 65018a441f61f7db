package zmtp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// This file is the wire codec: pure functions over byte slices, no I/O.
// References: ZeroMQ RFC 23 (ZMTP 3.0), RFC 37 (ZMTP 3.1), RFC 27 (NULL).

// GreetingSize is the fixed size of a ZMTP 3.x greeting.
const GreetingSize = 64

// Protocol version advertised by this implementation.
const (
	VersionMajor = 3
	VersionMinor = 1
)

// MechanismNull is the only security mechanism supported.
const MechanismNull = "NULL"

// Command names.
const (
	CmdReady     = "READY"
	CmdError     = "ERROR"
	CmdPing      = "PING"
	CmdPong      = "PONG"
	CmdSubscribe = "SUBSCRIBE"
	CmdCancel    = "CANCEL"
)

// Metadata property names used in READY.
const (
	PropSocketType = "Socket-Type"
	PropIdentity   = "Identity"
)

// Socket types (the values of the Socket-Type property).
const (
	TypeReq    = "REQ"
	TypeRep    = "REP"
	TypeDealer = "DEALER"
	TypeRouter = "ROUTER"
	TypePub    = "PUB"
	TypeSub    = "SUB"
	TypeXPub   = "XPUB"
	TypeXSub   = "XSUB"
	TypePush   = "PUSH"
	TypePull   = "PULL"
	TypePair   = "PAIR"
)

// MaxPingContext is the longest ping context RFC 37 allows.
const MaxPingContext = 16

// Codec errors. They are wrapped with context; test with errors.Is.
var (
	ErrBadSignature = errors.New("zmtp: bad greeting signature")
	ErrBadVersion   = errors.New("zmtp: unsupported protocol version")
	ErrMechanism    = errors.New("zmtp: unsupported security mechanism")
	ErrTruncated    = errors.New("zmtp: truncated input")
	ErrFrameFlags   = errors.New("zmtp: reserved frame flag bits set")
	ErrTooLarge     = errors.New("zmtp: message exceeds maximum size")
	ErrBadCommand   = errors.New("zmtp: malformed command")
	ErrBadMetadata  = errors.New("zmtp: malformed metadata")
	ErrSocketType   = errors.New("zmtp: incompatible socket type")
)

// Greeting is the 64-byte ZMTP 3.x greeting.
type Greeting struct {
	Major, Minor byte
	Mechanism    string // e.g. "NULL"
	AsServer     bool
}

// AppendGreeting appends the 64-byte encoding of g to dst.
// Layout: 0xFF, 8 padding bytes, 0x7F, major, minor, 20-byte mechanism
// (NUL padded), as-server, 31 filler bytes.
func AppendGreeting(dst []byte, g Greeting) []byte {
	var b [GreetingSize]byte
	b[0] = 0xFF
	b[9] = 0x7F
	b[10] = g.Major
	b[11] = g.Minor
	copy(b[12:32], g.Mechanism)
	if g.AsServer {
		b[32] = 1
	}
	return append(dst, b[:]...)
}

// ParseGreeting decodes a greeting. It accepts ZMTP 3.0 and 3.x (x>=1)
// peers; major versions below 3 are refused (ErrBadVersion). The mechanism
// is returned as sent (trailing NULs removed); checking it is the caller's
// job (see CheckGreeting).
func ParseGreeting(b []byte) (Greeting, error) {
	if len(b) < 1 || b[0] != 0xFF {
		return Greeting{}, fmt.Errorf("greeting byte 0: %w", ErrBadSignature)
	}
	if len(b) < 10 {
		return Greeting{}, fmt.Errorf("greeting of %d bytes: %w", len(b), ErrTruncated)
	}
	if b[9]&0x01 == 0 {
		// A ZMTP 1.0 peer (the padding is a length) or garbage.
		return Greeting{}, fmt.Errorf("greeting byte 9 %#x: %w", b[9], ErrBadSignature)
	}
	if len(b) >= 11 && b[10] < 3 {
		return Greeting{}, fmt.Errorf("peer speaks ZMTP major %d: %w", b[10], ErrBadVersion)
	}
	if len(b) < GreetingSize {
		return Greeting{}, fmt.Errorf("greeting of %d bytes: %w", len(b), ErrTruncated)
	}
	mech := b[12:32]
	n := 0
	for n < len(mech) && mech[n] != 0 {
		n++
	}
	for _, c := range mech[n:] {
		if c != 0 {
			return Greeting{}, fmt.Errorf("mechanism field %q: %w", mech, ErrMechanism)
		}
	}
	g := Greeting{Major: b[10], Minor: b[11], Mechanism: string(mech[:n])}
	switch b[32] {
	case 0:
	case 1:
		g.AsServer = true
	default:
		return Greeting{}, fmt.Errorf("as-server byte %#x: %w", b[32], ErrBadSignature)
	}
	return g, nil
}

// CheckGreeting verifies that a peer greeting can talk to us: NULL
// mechanism, and (NULL having no roles) any as-server value.
func CheckGreeting(g Greeting) error {
	if g.Mechanism != MechanismNull {
		return fmt.Errorf("peer mechanism %q: %w", g.Mechanism, ErrMechanism)
	}
	return nil
}

// Flags are the flag bits of a frame header.
type Flags byte

// Frame flag bits.
const (
	FlagMore    Flags = 0x01
	FlagLong    Flags = 0x02
	FlagCommand Flags = 0x04
	flagsMask         = FlagMore | FlagLong | FlagCommand
)

// FrameHeaderLen returns the header length implied by the first byte of a
// frame: 2 for short frames, 9 for long frames.
func FrameHeaderLen(flags byte) int {
	if Flags(flags)&FlagLong != 0 {
		return 9
	}
	return 2
}

// ParseFrameHeader decodes a complete frame header (2 or 9 bytes, see
// FrameHeaderLen). It checks the reserved bits, that a command is not
// marked MORE, and that the claimed size is at most max: nothing is
// allocated for a size before this check.
func ParseFrameHeader(hdr []byte, max uint64) (Flags, uint64, error) {
	if len(hdr) < 1 {
		return 0, 0, fmt.Errorf("frame header: %w", ErrTruncated)
	}
	f := Flags(hdr[0])
	if f&^flagsMask != 0 {
		return 0, 0, fmt.Errorf("frame flags %#x: %w", hdr[0], ErrFrameFlags)
	}
	if f&FlagCommand != 0 && f&FlagMore != 0 {
		return 0, 0, fmt.Errorf("command frame with MORE flag %#x: %w", hdr[0], ErrFrameFlags)
	}
	need := FrameHeaderLen(hdr[0])
	if len(hdr) < need {
		return 0, 0, fmt.Errorf("frame header of %d bytes, want %d: %w", len(hdr), need, ErrTruncated)
	}
	var size uint64
	if f&FlagLong != 0 {
		size = binary.BigEndian.Uint64(hdr[1:9])
	} else {
		size = uint64(hdr[1])
	}
	if size > max {
		return 0, 0, fmt.Errorf("frame claims %d bytes, limit %d: %w", size, max, ErrTooLarge)
	}
	return f, size, nil
}

// AppendFrameHeader appends a frame header for a body of size n. The LONG
// bit is chosen from n (frames over 255 bytes are long); other bits are
// taken from flags.
func AppendFrameHeader(dst []byte, flags Flags, n int) []byte {
	flags &^= FlagLong
	if n > 255 {
		dst = append(dst, byte(flags|FlagLong))
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, byte(flags), byte(n))
}

// AppendFrame appends one frame (header and body) to dst.
func AppendFrame(dst []byte, flags Flags, body []byte) []byte {
	dst = AppendFrameHeader(dst, flags, len(body))
	return append(dst, body...)
}

// AppendMessage appends a multipart message: every frame but the last has
// the MORE flag. An empty message encodes nothing.
func AppendMessage(dst []byte, frames [][]byte) []byte {
	for i, f := range frames {
		var fl Flags
		if i < len(frames)-1 {
			fl = FlagMore
		}
		dst = AppendFrame(dst, fl, f)
	}
	return dst
}

// MessageWireSize is the encoded size of a multipart message.
func MessageWireSize(frames [][]byte) int {
	n := 0
	for _, f := range frames {
		if len(f) > 255 {
			n += 9 + len(f)
		} else {
			n += 2 + len(f)
		}
	}
	return n
}

// Frame is one decoded frame.
type Frame struct {
	Flags Flags
	Body  []byte
}

// More reports whether another frame of the same message follows.
func (f Frame) More() bool { return f.Flags&FlagMore != 0 }

// IsCommand reports whether the frame carries a command.
func (f Frame) IsCommand() bool { return f.Flags&FlagCommand != 0 }

// ParseFrame decodes the first frame of b (body aliases b) and returns the
// remaining bytes.
func ParseFrame(b []byte, max uint64) (Frame, []byte, error) {
	if len(b) < 1 {
		return Frame{}, b, fmt.Errorf("frame: %w", ErrTruncated)
	}
	n := FrameHeaderLen(b[0])
	if len(b) < n {
		return Frame{}, b, fmt.Errorf("frame header: %w", ErrTruncated)
	}
	f, size, err := ParseFrameHeader(b[:n], max)
	if err != nil {
		return Frame{}, b, err
	}
	if uint64(len(b)-n) < size {
		return Frame{}, b, fmt.Errorf("frame body of %d bytes, have %d: %w", size, len(b)-n, ErrTruncated)
	}
	end := n + int(size)
	return Frame{Flags: f, Body: b[n:end:end]}, b[end:], nil
}

// Command is a decoded command frame body.
type Command struct {
	Name string
	Data []byte
}

// ParseCommand decodes a command body: 1-byte name size, name, data.
func ParseCommand(body []byte) (Command, error) {
	if len(body) < 1 {
		return Command{}, fmt.Errorf("empty command: %w", ErrBadCommand)
	}
	n := int(body[0])
	if n == 0 {
		return Command{}, fmt.Errorf("command with empty name: %w", ErrBadCommand)
	}
	if len(body)-1 < n {
		return Command{}, fmt.Errorf("command name of %d bytes, have %d: %w", n, len(body)-1, ErrBadCommand)
	}
	name := body[1 : 1+n]
	for _, c := range name {
		if !isNameChar(c) {
			return Command{}, fmt.Errorf("command name %q: %w", name, ErrBadCommand)
		}
	}
	return Command{Name: string(name), Data: body[1+n:]}, nil
}

// AppendCommand appends a command body (not the frame header).
func AppendCommand(dst []byte, name string, data []byte) []byte {
	dst = append(dst, byte(len(name)))
	dst = append(dst, name...)
	return append(dst, data...)
}

// AppendCommandFrame appends a complete command frame.
func AppendCommandFrame(dst []byte, name string, data []byte) []byte {
	dst = AppendFrameHeader(dst, FlagCommand, 1+len(name)+len(data))
	return AppendCommand(dst, name, data)
}

func isNameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '+'
}

// Property is one metadata property of READY.
type Property struct {
	Name  string
	Value []byte
}

// Metadata is an ordered list of properties; names compare case-insensitively.
type Metadata []Property

// Get returns the value of the named property (case-insensitive).
func (m Metadata) Get(name string) ([]byte, bool) {
	for _, p := range m {
		if strings.EqualFold(p.Name, name) {
			return p.Value, true
		}
	}
	return nil, false
}

// maxPropertyValue bounds one value; RFC 37 allows up to 2^31-1 but the
// whole command is already bounded by the frame limit.
const maxPropertyValue = 1<<31 - 1

// AppendMetadata appends the wire form of m: for each property a 1-byte
// name size, the name, a 4-byte big-endian value size and the value.
func AppendMetadata(dst []byte, m Metadata) []byte {
	for _, p := range m {
		dst = append(dst, byte(len(p.Name)))
		dst = append(dst, p.Name...)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(p.Value)))
		dst = append(dst, p.Value...)
	}
	return dst
}

// ParseMetadata decodes a property list. Values alias b.
func ParseMetadata(b []byte) (Metadata, error) {
	var m Metadata
	for len(b) > 0 {
		n := int(b[0])
		if n == 0 {
			return nil, fmt.Errorf("property with empty name: %w", ErrBadMetadata)
		}
		if len(b) < 1+n+4 {
			return nil, fmt.Errorf("property header truncated: %w", ErrBadMetadata)
		}
		name := b[1 : 1+n]
		for _, c := range name {
			if !isNameChar(c) {
				return nil, fmt.Errorf("property name %q: %w", name, ErrBadMetadata)
			}
		}
		vl := binary.BigEndian.Uint32(b[1+n : 1+n+4])
		rest := b[1+n+4:]
		if vl > maxPropertyValue || uint64(vl) > uint64(len(rest)) {
			return nil, fmt.Errorf("property %q value of %d bytes, have %d: %w", name, vl, len(rest), ErrBadMetadata)
		}
		m = append(m, Property{Name: string(name), Value: rest[:vl:vl]})
		b = rest[vl:]
	}
	return m, nil
}

// ReadyFrame returns a complete READY command frame with metadata m.
func ReadyFrame(m Metadata) []byte {
	return AppendCommandFrame(nil, CmdReady, AppendMetadata(nil, m))
}

// ErrorFrame returns a complete ERROR command frame. The reason is cut to
// 255 bytes.
func ErrorFrame(reason string) []byte {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	data := append([]byte{byte(len(reason))}, reason...)
	return AppendCommandFrame(nil, CmdError, data)
}

// ParseErrorReason decodes the data of an ERROR command.
func ParseErrorReason(data []byte) (string, error) {
	if len(data) < 1 || len(data)-1 < int(data[0]) {
		return "", fmt.Errorf("ERROR reason: %w", ErrBadCommand)
	}
	return string(data[1 : 1+int(data[0])]), nil
}

// TTL is carried in tenths of a second (RFC 37).
const ttlUnit = 100 * time.Millisecond

// PingFrame returns a complete PING command frame with the given TTL
// (rounded down to tenths of a second, capped at 6553.5 s) and context
// (cut to 16 bytes).
func PingFrame(ttl time.Duration, context []byte) []byte {
	t := ttl / ttlUnit
	if t < 0 {
		t = 0
	}
	if t > 0xFFFF {
		t = 0xFFFF
	}
	if len(context) > MaxPingContext {
		context = context[:MaxPingContext]
	}
	data := binary.BigEndian.AppendUint16(nil, uint16(t))
	data = append(data, context...)
	return AppendCommandFrame(nil, CmdPing, data)
}

// ParsePing decodes the data of a PING command: a 2-byte TTL in tenths of
// a second and up to 16 bytes of context.
func ParsePing(data []byte) (ttl time.Duration, context []byte, err error) {
	if len(data) < 2 {
		return 0, nil, fmt.Errorf("PING of %d bytes: %w", len(data), ErrBadCommand)
	}
	ctx := data[2:]
	if len(ctx) > MaxPingContext {
		return 0, nil, fmt.Errorf("PING context of %d bytes: %w", len(ctx), ErrBadCommand)
	}
	return time.Duration(binary.BigEndian.Uint16(data[:2])) * ttlUnit, ctx, nil
}

// PongFrame returns a complete PONG command frame echoing context.
func PongFrame(context []byte) []byte {
	if len(context) > MaxPingContext {
		context = context[:MaxPingContext]
	}
	return AppendCommandFrame(nil, CmdPong, context)
}

// SubscribeFrame returns a SUBSCRIBE (or CANCEL when cancel is set) command
// frame for ZMTP 3.1 peers.
func SubscribeFrame(prefix []byte, cancel bool) []byte {
	if cancel {
		return AppendCommandFrame(nil, CmdCancel, prefix)
	}
	return AppendCommandFrame(nil, CmdSubscribe, prefix)
}

// ParseSubscriptionMessage decodes a ZMTP 3.0-style subscription message
// (a single frame whose first byte is 1 for subscribe, 0 for cancel).
// ok is false for any other message.
func ParseSubscriptionMessage(frames [][]byte) (prefix []byte, subscribe, ok bool) {
	if len(frames) != 1 || len(frames[0]) < 1 {
		return nil, false, false
	}
	switch frames[0][0] {
	case 1:
		return frames[0][1:], true, true
	case 0:
		return frames[0][1:], false, true
	}
	return nil, false, false
}

// Compatible reports whether a local socket of type local accepts a peer of
// type remote (RFC 37 socket-type rules). Types compare case-sensitively,
// as libzmq does.
func Compatible(local, remote string) bool {
	switch local {
	case TypeRouter:
		return remote == TypeReq || remote == TypeDealer || remote == TypeRouter
	case TypeDealer:
		return remote == TypeRep || remote == TypeDealer || remote == TypeRouter
	case TypeReq:
		return remote == TypeRep || remote == TypeRouter
	case TypeRep:
		return remote == TypeReq || remote == TypeDealer
	case TypePub, TypeXPub:
		return remote == TypeSub || remote == TypeXSub
	case TypeSub, TypeXSub:
		return remote == TypePub || remote == TypeXPub
	case TypePush:
		return remote == TypePull
	case TypePull:
		return remote == TypePush
	case TypePair:
		return remote == TypePair
	}
	return false
}

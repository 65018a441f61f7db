// Package sink serves the Sink device event-sync protocol (SparkMeter's sink, wire format of
// protocol version 0) over mutual TLS and maps it onto JetStream.
//
// codec.go holds the wire codec: no I/O besides the 2-byte length framing helpers. It is strict on
// send (exact lengths, 12-bit ids, frames of at most 65,535 bytes) and reports precisely what is
// wrong on receive so that the session can be forgiving where the protocol allows.
package sink

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MsgType is the high nibble of a frame's first byte.
type MsgType uint8

// Message types of protocol version 0 (spec §3). 2 and 8–15 are unused.
const (
	TypeConnectionRequest  MsgType = 0
	TypeConnectionResponse MsgType = 1
	TypeAck                MsgType = 3
	TypePublish            MsgType = 4
	TypePing               MsgType = 5
	TypePong               MsgType = 6
	TypeNack               MsgType = 7
)

func (t MsgType) String() string {
	switch t {
	case TypeConnectionRequest:
		return "connection_request"
	case TypeConnectionResponse:
		return "connection_response"
	case TypeAck:
		return "ack"
	case TypePublish:
		return "publish"
	case TypePing:
		return "ping"
	case TypePong:
		return "pong"
	case TypeNack:
		return "nack"
	}
	return fmt.Sprintf("unknown_%d", uint8(t))
}

// Connection response codes (spec §4.2).
const (
	RespConnected                     uint8 = 0
	RespHelloNewClient                uint8 = 1
	RespInstanceIDMismatch            uint8 = 2
	RespQuarantined                   uint8 = 3
	RespUnsupportedProtocolVersion    uint8 = 4
	RespUnsupportedApplicationVersion uint8 = 5
)

// MaxFrame is the largest frame the 2-byte length prefix can carry.
const MaxFrame = 65535

// MaxID is the largest 12-bit message id.
const MaxID = 4095

// Decoding errors. They are wrapped with context; test with errors.Is.
var (
	ErrEmptyFrame   = errors.New("sink: empty frame")
	ErrUnknownType  = errors.New("sink: unknown message type")
	ErrShortFrame   = errors.New("sink: frame too short")
	ErrTrailing     = errors.New("sink: trailing bytes")
	ErrBadVarint    = errors.New("sink: bad varint")
	ErrBadChunk     = errors.New("sink: chunk longer than frame")
	ErrFrameTooBig  = errors.New("sink: frame larger than 65535 bytes")
	ErrBadID        = errors.New("sink: message id outside 0..4095")
	ErrBadRespCode  = errors.New("sink: connection response code outside 0..5")
	ErrServerIDSize = errors.New("sink: server instance id must be absent or 4 bytes")
)

// Event is the payload of a PUBLISH (spec §4.3).
type Event struct {
	TypeID        uint64
	SchemaVersion uint64
	Key           []byte
	Offset        uint64
	Timestamp     uint64
	Data          []byte
}

// ConnectionRequest is the client's first message (spec §4.1).
type ConnectionRequest struct {
	// Version is the protocol version nibble. Only 0 is understood; for other versions the rest of
	// the frame is not parsed (the server answers 14 without needing it).
	Version          uint8
	AppVersion       string
	ClientInstanceID uint32
	ServerInstanceID uint32
	HasServerID      bool
}

// ConnectionResponse is the server's answer to a ConnectionRequest (spec §4.2).
type ConnectionResponse struct {
	Code             uint8
	ServerInstanceID uint32 // code 1
	Machine, Human   []byte // code 3
}

// Message is one decoded frame. Only the fields of its Type are set. Slices alias the frame.
type Message struct {
	Type     MsgType
	ID       uint16 // ACK, PUBLISH, NACK
	Request  ConnectionRequest
	Response ConnectionResponse
	Event    Event
	// Machine and Human are the NACK payload.
	Machine, Human []byte
}

// Decode parses one frame (without its length prefix). On error the returned Message still has
// Type and, for ACK/PUBLISH/NACK frames of at least 2 bytes, ID set, so that the caller can answer
// a malformed PUBLISH with a NACK.
func Decode(f []byte) (Message, error) {
	var m Message
	if len(f) == 0 {
		return m, ErrEmptyFrame
	}
	m.Type = MsgType(f[0] >> 4)
	switch m.Type {
	case TypeAck, TypePublish, TypeNack, TypePing, TypePong:
		if len(f) < 2 {
			return m, fmt.Errorf("%s: %w", m.Type, ErrShortFrame)
		}
		if m.Type == TypeAck || m.Type == TypePublish || m.Type == TypeNack {
			m.ID = uint16(f[0]&0x0f)<<8 | uint16(f[1])
		}
	}
	switch m.Type {
	case TypeConnectionRequest:
		return m, decodeRequest(f, &m.Request)
	case TypeConnectionResponse:
		return m, decodeResponse(f, &m.Response)
	case TypeAck, TypePing, TypePong:
		if len(f) != 2 {
			return m, fmt.Errorf("%s: %d bytes after header: %w", m.Type, len(f)-2, ErrTrailing)
		}
		return m, nil
	case TypePublish:
		if err := decodeEvent(f[2:], &m.Event); err != nil {
			return m, fmt.Errorf("publish %d: %w", m.ID, err)
		}
		return m, nil
	case TypeNack:
		mach, human, err := decodeNackPayload(f[2:])
		if err != nil {
			return m, fmt.Errorf("nack %d: %w", m.ID, err)
		}
		m.Machine, m.Human = mach, human
		return m, nil
	}
	return m, fmt.Errorf("type %d: %w", uint8(m.Type), ErrUnknownType)
}

func decodeRequest(f []byte, r *ConnectionRequest) error {
	r.Version = f[0] & 0x0f
	if r.Version != 0 {
		return nil // unknown layout; the server only needs the version to refuse it
	}
	app, rest, err := chunk(f[1:])
	if err != nil {
		return fmt.Errorf("connection request application version: %w", err)
	}
	r.AppVersion = string(app)
	if len(rest) < 4 {
		return fmt.Errorf("connection request client instance id: %w", ErrShortFrame)
	}
	r.ClientInstanceID = binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	switch len(rest) {
	case 0:
	case 4:
		r.ServerInstanceID, r.HasServerID = binary.BigEndian.Uint32(rest), true
	default:
		return fmt.Errorf("connection request: %d bytes after client id: %w", len(rest), ErrServerIDSize)
	}
	return nil
}

func decodeResponse(f []byte, r *ConnectionResponse) error {
	r.Code = f[0] & 0x0f
	rest := f[1:]
	switch r.Code {
	case RespConnected, RespInstanceIDMismatch, RespUnsupportedProtocolVersion, RespUnsupportedApplicationVersion:
		if len(rest) != 0 {
			return fmt.Errorf("connection response %d: %w", r.Code, ErrTrailing)
		}
	case RespHelloNewClient:
		if len(rest) != 4 {
			return fmt.Errorf("connection response 1: %d bytes, want 4: %w", len(rest), ErrShortFrame)
		}
		r.ServerInstanceID = binary.BigEndian.Uint32(rest)
	case RespQuarantined:
		mach, human, err := decodeNackPayload(rest)
		if err != nil {
			return fmt.Errorf("connection response 3: %w", err)
		}
		r.Machine, r.Human = mach, human
	default:
		return fmt.Errorf("connection response %d: %w", r.Code, ErrBadRespCode)
	}
	return nil
}

func decodeEvent(b []byte, e *Event) error {
	var err error
	if e.TypeID, b, err = uvarint(b, "event_type_id"); err != nil {
		return err
	}
	if e.SchemaVersion, b, err = uvarint(b, "schema_version"); err != nil {
		return err
	}
	if e.Key, b, err = chunk(b); err != nil {
		return fmt.Errorf("key: %w", err)
	}
	if e.Offset, b, err = uvarint(b, "offset"); err != nil {
		return err
	}
	if e.Timestamp, b, err = uvarint(b, "timestamp"); err != nil {
		return err
	}
	if e.Data, b, err = chunk(b); err != nil {
		return fmt.Errorf("event_data: %w", err)
	}
	if len(b) != 0 {
		return fmt.Errorf("%d bytes after event_data: %w", len(b), ErrTrailing)
	}
	return nil
}

func decodeNackPayload(b []byte) (machine, human []byte, err error) {
	machine, human, err = chunk(b)
	if err != nil {
		return nil, nil, fmt.Errorf("machine message: %w", err)
	}
	return machine, human, nil
}

func uvarint(b []byte, field string) (uint64, []byte, error) {
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, b, fmt.Errorf("%s: %w", field, ErrBadVarint)
	}
	return v, b[n:], nil
}

func chunk(b []byte) (c, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, b, ErrBadVarint
	}
	b = b[k:]
	if n > uint64(len(b)) {
		return nil, b, ErrBadChunk
	}
	return b[:n], b[n:], nil
}

func appendChunk(dst, c []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(c)))
	return append(dst, c...)
}

func header(t MsgType, id uint16) [2]byte {
	return [2]byte{byte(t)<<4 | byte(id>>8)&0x0f, byte(id)}
}

func checkID(id uint16) error {
	if id > MaxID {
		return fmt.Errorf("id %d: %w", id, ErrBadID)
	}
	return nil
}

func checkSize(start int, dst []byte) ([]byte, error) {
	if len(dst)-start > MaxFrame {
		return dst[:start], fmt.Errorf("%d bytes: %w", len(dst)-start, ErrFrameTooBig)
	}
	return dst, nil
}

// AppendConnectionRequest encodes a version-0 CONNECTION_REQUEST (used by test clients and the
// benchmark). The server instance id is written only when hasServerID is set.
func AppendConnectionRequest(dst []byte, r ConnectionRequest) ([]byte, error) {
	if r.Version > 15 {
		return dst, fmt.Errorf("protocol version %d does not fit 4 bits", r.Version)
	}
	start := len(dst)
	dst = append(dst, byte(TypeConnectionRequest)<<4|r.Version)
	dst = appendChunk(dst, []byte(r.AppVersion))
	dst = binary.BigEndian.AppendUint32(dst, r.ClientInstanceID)
	if r.HasServerID {
		dst = binary.BigEndian.AppendUint32(dst, r.ServerInstanceID)
	}
	return checkSize(start, dst)
}

// AppendConnectionResponse encodes a CONNECTION_RESPONSE; only the fields of the code are used.
func AppendConnectionResponse(dst []byte, r ConnectionResponse) ([]byte, error) {
	start := len(dst)
	switch r.Code {
	case RespConnected, RespInstanceIDMismatch, RespUnsupportedProtocolVersion, RespUnsupportedApplicationVersion:
		return append(dst, byte(TypeConnectionResponse)<<4|r.Code), nil
	case RespHelloNewClient:
		dst = append(dst, byte(TypeConnectionResponse)<<4|r.Code)
		return binary.BigEndian.AppendUint32(dst, r.ServerInstanceID), nil
	case RespQuarantined:
		dst = append(dst, byte(TypeConnectionResponse)<<4|r.Code)
		dst = appendChunk(dst, r.Machine)
		dst = append(dst, r.Human...)
		return checkSize(start, dst)
	}
	return dst, fmt.Errorf("connection response code %d: %w", r.Code, ErrBadRespCode)
}

// AppendAck encodes an ACK of message id.
func AppendAck(dst []byte, id uint16) ([]byte, error) {
	if err := checkID(id); err != nil {
		return dst, fmt.Errorf("ack: %w", err)
	}
	h := header(TypeAck, id)
	return append(dst, h[:]...), nil
}

// AppendPing encodes a PING (the 12 bits are sent as 0).
func AppendPing(dst []byte) []byte { return append(dst, byte(TypePing)<<4, 0) }

// AppendPong encodes a PONG (the 12 bits are sent as 0).
func AppendPong(dst []byte) []byte { return append(dst, byte(TypePong)<<4, 0) }

// AppendPublish encodes a PUBLISH of e with message id.
func AppendPublish(dst []byte, id uint16, e Event) ([]byte, error) {
	if err := checkID(id); err != nil {
		return dst, fmt.Errorf("publish: %w", err)
	}
	start := len(dst)
	h := header(TypePublish, id)
	dst = append(dst, h[:]...)
	dst = binary.AppendUvarint(dst, e.TypeID)
	dst = binary.AppendUvarint(dst, e.SchemaVersion)
	dst = appendChunk(dst, e.Key)
	dst = binary.AppendUvarint(dst, e.Offset)
	dst = binary.AppendUvarint(dst, e.Timestamp)
	dst = appendChunk(dst, e.Data)
	return checkSize(start, dst)
}

// AppendNack encodes a NACK of message id with its machine and human messages.
func AppendNack(dst []byte, id uint16, machine, human []byte) ([]byte, error) {
	if err := checkID(id); err != nil {
		return dst, fmt.Errorf("nack: %w", err)
	}
	start := len(dst)
	h := header(TypeNack, id)
	dst = append(dst, h[:]...)
	dst = appendChunk(dst, machine)
	dst = append(dst, human...)
	return checkSize(start, dst)
}

// AppendFrame appends f with its 2-byte big-endian length prefix (one buffer, for one write).
func AppendFrame(dst, f []byte) ([]byte, error) {
	if len(f) > MaxFrame {
		return dst, fmt.Errorf("append frame: %w", ErrFrameTooBig)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(f)))
	return append(dst, f...), nil
}

// WriteFrame writes f with its 2-byte big-endian length prefix.
func WriteFrame(w io.Writer, f []byte) error {
	if len(f) > MaxFrame {
		return fmt.Errorf("write frame: %w", ErrFrameTooBig)
	}
	if bw, ok := w.(io.ByteWriter); ok { // a buffered writer: no escaping length array
		if err := bw.WriteByte(byte(len(f) >> 8)); err != nil {
			return fmt.Errorf("write frame length: %w", err)
		}
		if err := bw.WriteByte(byte(len(f))); err != nil {
			return fmt.Errorf("write frame length: %w", err)
		}
	} else {
		var l [2]byte
		binary.BigEndian.PutUint16(l[:], uint16(len(f)))
		if _, err := w.Write(l[:]); err != nil {
			return fmt.Errorf("write frame length: %w", err)
		}
	}
	if _, err := w.Write(f); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

// ReadFrame reads one length-prefixed frame into buf (grown as needed) and returns it. The result
// is only valid until the next call with the same buf.
func ReadFrame(r *bufio.Reader, buf []byte) ([]byte, error) {
	// two ReadByte calls rather than io.ReadFull into an array, which would escape (one
	// allocation per frame); same errors as io.ReadFull
	hi, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	lo, err := r.ReadByte()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	n := int(hi)<<8 | int(lo)
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read frame of %d bytes: %w", n, err)
	}
	return buf, nil
}

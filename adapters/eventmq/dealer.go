package eventmq

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
)

// Dealer is a minimal ZMTP 3.1 DEALER (or SUB) client, enough to speak eMQP to the broker from Go:
// the benchmark and the Go-side tests use it. It is not safe for concurrent Recv calls; Send may
// be called from any goroutine.
type Dealer struct {
	conn net.Conn
	br   *bufio.Reader
	wmu  sync.Mutex
	max  uint64
}

// DialDealer connects to addr as a DEALER with the given identity ("" for none).
func DialDealer(ctx context.Context, addr, identity string) (*Dealer, error) {
	md := zmtp.Metadata{{Name: zmtp.PropSocketType, Value: []byte(zmtp.TypeDealer)}}
	if identity != "" {
		md = append(md, zmtp.Property{Name: zmtp.PropIdentity, Value: []byte(identity)})
	}
	return dial(ctx, addr, md)
}

// DialSub connects to addr as a SUB socket subscribed to prefix.
func DialSub(ctx context.Context, addr string, prefix []byte) (*Dealer, error) {
	d, err := dial(ctx, addr, zmtp.Metadata{{Name: zmtp.PropSocketType, Value: []byte(zmtp.TypeSub)}})
	if err != nil {
		return nil, err
	}
	d.wmu.Lock()
	_, err = d.conn.Write(zmtp.SubscribeFrame(prefix, false))
	d.wmu.Unlock()
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func dial(ctx context.Context, addr string, md zmtp.Metadata) (*Dealer, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	d := &Dealer{conn: c, br: bufio.NewReaderSize(c, 64<<10), max: 64 << 20}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := c.Write(zmtp.AppendGreeting(nil, zmtp.Greeting{Major: 3, Minor: 1, Mechanism: zmtp.MechanismNull})); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	var g [zmtp.GreetingSize]byte
	if _, err := io.ReadFull(d.br, g[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if _, err := zmtp.ParseGreeting(g[:]); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := c.Write(zmtp.ReadyFrame(md)); err != nil {
		c.Close()
		return nil, fmt.Errorf("READY: %w", err)
	}
	fl, body, err := d.frame()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("READY: %w", err)
	}
	cmd, err := zmtp.ParseCommand(body)
	if fl&zmtp.FlagCommand == 0 || err != nil || cmd.Name != zmtp.CmdReady {
		c.Close()
		return nil, fmt.Errorf("expected READY, got %q: %w", body, zmtp.ErrProtocol)
	}
	_ = c.SetDeadline(time.Time{})
	return d, nil
}

func (d *Dealer) frame() (zmtp.Flags, []byte, error) {
	b0, err := d.br.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	hdr := make([]byte, zmtp.FrameHeaderLen(b0))
	hdr[0] = b0
	if _, err := io.ReadFull(d.br, hdr[1:]); err != nil {
		return 0, nil, err
	}
	fl, size, err := zmtp.ParseFrameHeader(hdr, d.max)
	if err != nil {
		return 0, nil, err
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(d.br, body); err != nil {
		return 0, nil, err
	}
	return fl, body, nil
}

// Send writes one multipart message.
func (d *Dealer) Send(frames ...[]byte) error {
	buf := zmtp.AppendMessage(nil, frames)
	d.wmu.Lock()
	defer d.wmu.Unlock()
	_, err := d.conn.Write(buf)
	return err
}

// SendMany writes several multipart messages with one write.
func (d *Dealer) SendMany(msgs ...[][]byte) error {
	var buf []byte
	for _, m := range msgs {
		buf = zmtp.AppendMessage(buf, m)
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	_, err := d.conn.Write(buf)
	return err
}

// SendStrings writes one multipart message of strings.
func (d *Dealer) SendStrings(frames ...string) error {
	b := make([][]byte, len(frames))
	for i, f := range frames {
		b[i] = []byte(f)
	}
	return d.Send(b...)
}

// Recv reads the next multipart message (commands such as PING are skipped); timeout 0 waits
// forever.
func (d *Dealer) Recv(timeout time.Duration) ([][]byte, error) {
	if timeout > 0 {
		_ = d.conn.SetReadDeadline(time.Now().Add(timeout))
		defer d.conn.SetReadDeadline(time.Time{})
	}
	var msg [][]byte
	for {
		fl, body, err := d.frame()
		if err != nil {
			return nil, err
		}
		if fl&zmtp.FlagCommand != 0 {
			if cmd, err := zmtp.ParseCommand(body); err == nil && cmd.Name == zmtp.CmdPing {
				ttlCtx := cmd.Data
				if len(ttlCtx) >= 2 {
					ttlCtx = ttlCtx[2:]
				}
				d.wmu.Lock()
				_, _ = d.conn.Write(zmtp.PongFrame(ttlCtx))
				d.wmu.Unlock()
			}
			continue
		}
		msg = append(msg, body)
		if fl&zmtp.FlagMore == 0 {
			return msg, nil
		}
	}
}

// Close closes the connection.
func (d *Dealer) Close() error { return d.conn.Close() }

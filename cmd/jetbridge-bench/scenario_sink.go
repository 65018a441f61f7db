package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/jetbridge/jetbridge/adapters/sink"
)

var sinkRun atomic.Int64

// sinkConn is one benchmark device: a TLS connection with its own client certificate.
type sinkConn struct {
	conn   *tls.Conn
	br     *bufio.Reader
	id     uint16
	offset uint64
	buf    []byte
	rbuf   []byte    // read buffer, reused
	dl     time.Time // deadline set on conn
}

func init() {
	register(&scenario{
		name:     "sink-ingest",
		about:    "Sink over mutual TLS: one device per worker publishes an event and waits for its ACK (sent after the JetStream ack)",
		baseline: "raw-publish",
		setup:    sinkIngestSetup,
	})
}

func sinkIngestSetup(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
	admin, addr := h.Addr("admin"), h.Addr("sink")
	if admin == "" || addr == "" {
		return nil, nil, fmt.Errorf("sink-ingest needs the admin and sink listeners")
	}
	ca, err := sink.NewCA("jetbridge-bench")
	if err != nil {
		return nil, nil, err
	}
	run := sinkRun.Add(1)
	conns := make([]*sinkConn, h.Concurrency)
	cleanup := func() {
		for _, c := range conns {
			if c != nil {
				_ = c.conn.Close()
			}
		}
	}
	for i := range conns {
		id := fmt.Sprintf("bench-%d-%d", run, i)
		cert, err := ca.Issue(id, nil, nil, true)
		if err != nil {
			cleanup()
			return nil, nil, err
		}
		body, _ := json.Marshal(sink.AddClientRequest{ID: id, CertPEM: string(cert.CertPEM)})
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+admin+"/api/v1/sink/clients", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("register %s: %w", id, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			cleanup()
			return nil, nil, fmt.Errorf("register %s: HTTP %d", id, resp.StatusCode)
		}
		kp, err := cert.TLS()
		if err != nil {
			cleanup()
			return nil, nil, err
		}
		// the pod's generated development server certificate is not trusted here: loopback only
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}) //nolint:gosec
		if err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		c := &sinkConn{conn: conn, br: bufio.NewReader(conn)}
		conns[i] = c
		f, _ := sink.AppendConnectionRequest(nil, sink.ConnectionRequest{AppVersion: "1.0.0", ClientInstanceID: uint32(i + 1)})
		w, _ := sink.AppendFrame(nil, f)
		if _, err := conn.Write(w); err != nil {
			cleanup()
			return nil, nil, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		rf, err := sink.ReadFrame(c.br, nil)
		if err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("handshake %s: %w", id, err)
		}
		if m, err := sink.Decode(rf); err != nil || m.Type != sink.TypeConnectionResponse || m.Response.Code > sink.RespHelloNewClient {
			cleanup()
			return nil, nil, fmt.Errorf("handshake %s refused: %x", id, rf)
		}
	}
	data := payloadOf(h.Payload)
	return func(ctx context.Context, worker int) error {
		c := conns[worker]
		c.id = (c.id + 1) & sink.MaxID
		c.offset++
		f, err := sink.AppendPublish(append(c.buf[:0], 0, 0), c.id, sink.Event{TypeID: 1, SchemaVersion: 1, Key: []byte("bench"),
			Offset: c.offset, Timestamp: uint64(time.Now().Unix()), Data: data})
		if err != nil {
			return err
		}
		c.buf = f
		f[0], f[1] = byte((len(f)-2)>>8), byte(len(f)-2)
		// the op's deadline (10 s from now) is applied when the one set on the socket has less
		// than 5 s left: every exchange stays bounded without re-arming socket timers per event
		if dl, ok := ctx.Deadline(); ok && dl.Sub(c.dl) > 5*time.Second {
			c.dl = dl
			_ = c.conn.SetDeadline(dl)
		}
		if _, err := c.conn.Write(f); err != nil {
			return err
		}
		rf, err := sink.ReadFrame(c.br, c.rbuf)
		if err != nil {
			return err
		}
		c.rbuf = rf[:0]
		m, err := sink.Decode(rf)
		if err != nil {
			return err
		}
		if m.Type != sink.TypeAck || m.ID != c.id {
			return fmt.Errorf("want ACK %d, got %s %d (%q %q)", c.id, m.Type, m.ID, m.Machine, m.Human)
		}
		return nil
	}, cleanup, nil
}

package sink

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// testPKI is a CA with a server certificate written to files for the adapter's flags.
type testPKI struct {
	ca                       *CA
	certFile, keyFile, caPEM string
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	ca, err := NewCA("sink test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue("localhost", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, false)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := &testPKI{ca: ca, certFile: filepath.Join(dir, "server.pem"), keyFile: filepath.Join(dir, "server-key.pem"),
		caPEM: filepath.Join(dir, "ca.pem")}
	for f, b := range map[string][]byte{p.certFile: srv.CertPEM, p.keyFile: srv.KeyPEM, p.caPEM: ca.CertPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func (p *testPKI) client(t testing.TB, cn string) Issued {
	t.Helper()
	c, err := p.ca.Issue(cn, nil, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (p *testPKI) args(extra ...string) []string {
	return append([]string{"--sink-tls-cert=" + p.certFile, "--sink-tls-key=" + p.keyFile, "--sink-client-ca=" + p.caPEM}, extra...)
}

// env is one NATS server with one or more pods.
type testEnv struct {
	t   testing.TB
	srv *jetstream.Embedded
	pki *testPKI
}

func newEnv(t testing.TB) *testEnv {
	return &testEnv{t: t, srv: jstest.Server(t), pki: newPKI(t)}
}

// pod starts one adapter with its own NATS connection; the connection is returned so that a
// test can kill the pod the way a dying process would (Kill, then close the connection).
func (e *testEnv) pod(extra ...string) (*bridgetest.Pod, *jetstream.Client) {
	e.t.Helper()
	js := jstest.Connect(e.t, e.srv)
	return bridgetest.Start(e.t, js, New(), e.pki.args(extra...)...), js
}

func apiDo(t testing.TB, method, url string, in, out any) int {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, url, data, err)
		}
	}
	if resp.StatusCode/100 != 2 {
		t.Logf("%s %s -> %d %s", method, url, resp.StatusCode, bytes.TrimSpace(data))
	}
	return resp.StatusCode
}

// register adds a client certificate under id through the admin API.
func register(t testing.TB, p *bridgetest.Pod, id string, c Issued) {
	t.Helper()
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients", AddClientRequest{ID: id, CertPEM: string(c.CertPEM)}, nil); code != 201 {
		t.Fatalf("register %s: %d", id, code)
	}
}

func serverID(t testing.TB, p *bridgetest.Pod) uint32 {
	t.Helper()
	var l ClientList
	if code := apiDo(t, "GET", p.AdminURL+"/api/v1/sink/clients", nil, &l); code != 200 {
		t.Fatalf("list: %d", code)
	}
	return l.ServerInstanceID
}

// tclient speaks the exact bytes of the original Sink client over TLS.
type tclient struct {
	t    testing.TB
	conn *tls.Conn
	br   *bufio.Reader
}

func dialErr(addr string, pki *testPKI, cert Issued) (*tclient, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki.ca.CertPEM)
	kp, err := cert.TLS()
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	return &tclient{conn: conn, br: bufio.NewReader(conn)}, nil
}

func dial(t testing.TB, addr string, pki *testPKI, cert Issued) *tclient {
	t.Helper()
	c, err := dialErr(addr, pki, cert)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.t = t
	t.Cleanup(func() { _ = c.conn.Close() })
	return c
}

func (c *tclient) sendRaw(f []byte) {
	c.t.Helper()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	w, err := AppendFrame(nil, f)
	if err == nil {
		_, err = c.conn.Write(w)
	}
	if err != nil {
		c.t.Fatalf("send %x: %v", f, err)
	}
}

// trySend sends a frame, ignoring a connection the server already closed.
func (c *tclient) trySend(f []byte) {
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = WriteFrame(c.conn, f)
}

func (c *tclient) read(within time.Duration) (Message, []byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(within))
	f, err := ReadFrame(c.br, nil)
	if err != nil {
		return Message{}, nil, err
	}
	m, err := Decode(f)
	if err != nil {
		return m, f, fmt.Errorf("server sent undecodable frame %x: %w", f, err)
	}
	return m, f, nil
}

func (c *tclient) expect(typ MsgType) Message {
	c.t.Helper()
	m, f, err := c.read(10 * time.Second)
	if err != nil {
		c.t.Fatalf("expecting %v: %v", typ, err)
	}
	if m.Type != typ {
		c.t.Fatalf("expecting %v, got %v (%x)", typ, m.Type, f)
	}
	return m
}

// expectClosed waits for the server to close the connection (after any frames it still sends).
func (c *tclient) expectClosed() {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		m, f, err := c.read(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			return
		}
		c.t.Fatalf("expecting close, got %v %x", m.Type, f)
	}
	c.t.Fatal("connection not closed within 10s")
}

func (c *tclient) request(app string, client uint32, server *uint32) {
	c.t.Helper()
	r := ConnectionRequest{AppVersion: app, ClientInstanceID: client}
	if server != nil {
		r.ServerInstanceID, r.HasServerID = *server, true
	}
	f, err := AppendConnectionRequest(nil, r)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(f)
}

func (c *tclient) handshake(app string, client uint32, server *uint32) ConnectionResponse {
	c.t.Helper()
	c.request(app, client, server)
	return c.expect(TypeConnectionResponse).Response
}

// connect dials and completes a handshake accepted with 10 or 11.
func connect(t testing.TB, addr string, pki *testPKI, cert Issued, client uint32, server *uint32) *tclient {
	t.Helper()
	c := dial(t, addr, pki, cert)
	r := c.handshake("1.0.0", client, server)
	if r.Code != RespConnected && r.Code != RespHelloNewClient {
		t.Fatalf("handshake refused with %d", r.Code)
	}
	return c
}

func (c *tclient) publish(id uint16, e Event) {
	c.t.Helper()
	f, err := AppendPublish(nil, id, e)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(f)
}

func (c *tclient) ack(id uint16) {
	c.t.Helper()
	f, _ := AppendAck(nil, id)
	c.sendRaw(f)
}

func (c *tclient) nackMsg(id uint16, machine, human string) {
	c.t.Helper()
	f, _ := AppendNack(nil, id, []byte(machine), []byte(human))
	c.sendRaw(f)
}

func u32(v uint32) *uint32 { return &v }

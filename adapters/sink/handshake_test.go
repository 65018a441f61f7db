package sink

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// TestInstanceIDTable runs every row of the instance-id table of spec §6.
func TestInstanceIDTable(t *testing.T) {
	e := newEnv(t)
	p, _ := e.pod()
	addr := p.Addrs["sink"]
	S := serverID(t, p)
	if S == 0 {
		t.Fatal("no server instance id")
	}

	// Row 2: server {S, nil}, client {any, nil} → 11+S, the client id is persisted.
	c1 := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", c1)
	c := dial(t, addr, e.pki, c1)
	if r := c.handshake("1.0.0", 77, nil); r.Code != RespHelloNewClient || r.ServerInstanceID != S {
		t.Fatalf("first handshake: %+v, want 11 with %d", r, S)
	}
	var rec ClientInfo
	apiDo(t, "GET", p.AdminURL+"/api/v1/sink/clients/meter-1", nil, &rec)
	if rec.InstanceID == nil || *rec.InstanceID != 77 {
		t.Fatalf("client instance id not persisted: %+v", rec.InstanceID)
	}
	c.conn.Close()

	// Row 1: server {S, C}, client {C, S} → 10.
	c = dial(t, addr, e.pki, c1)
	if r := c.handshake("1.0.0", 77, &S); r.Code != RespConnected {
		t.Fatalf("known ids: %+v, want 10", r)
	}
	c.conn.Close()

	// Row 3: server {S, C}, client {C, nil} → 11+S (client lost S).
	c = dial(t, addr, e.pki, c1)
	if r := c.handshake("1.0.0", 77, nil); r.Code != RespHelloNewClient || r.ServerInstanceID != S {
		t.Fatalf("client without S: %+v", r)
	}
	c.conn.Close()

	// Row 4: mismatches → 12 and close.
	mism := []struct {
		name   string
		client uint32
		server *uint32
	}{
		{"other client id with S", 78, &S},
		{"other client id without S", 78, nil},
		{"right client id, other server id", 77, u32(S + 1)},
	}
	for _, m := range mism {
		c = dial(t, addr, e.pki, c1)
		if r := c.handshake("1.0.0", m.client, m.server); r.Code != RespInstanceIDMismatch {
			t.Fatalf("%s: %+v, want 12", m.name, r)
		}
		c.expectClosed()
	}
	// server has no client id, client claims a server id (even the right one) → 12
	c2 := e.pki.client(t, "meter-2")
	register(t, p, "meter-2", c2)
	for _, sid := range []uint32{S, S + 1} {
		c = dial(t, addr, e.pki, c2)
		if r := c.handshake("1.0.0", 5, &sid); r.Code != RespInstanceIDMismatch {
			t.Fatalf("new client claiming server %d: %+v, want 12", sid, r)
		}
		c.expectClosed()
	}
	// the mismatch did not persist anything: a proper first handshake still works
	c = dial(t, addr, e.pki, c2)
	if r := c.handshake("1.0.0", 5, nil); r.Code != RespHelloNewClient {
		t.Fatalf("after mismatch: %+v", r)
	}
	// resetting the client's instance id (device re-flashed) lets a new one in
	c.conn.Close()
	if code := apiDo(t, "DELETE", p.AdminURL+"/api/v1/sink/clients/meter-2/instance-id", nil, nil); code != 200 {
		t.Fatalf("reset instance id: %d", code)
	}
	c = dial(t, addr, e.pki, c2)
	if r := c.handshake("1.0.0", 6, nil); r.Code != RespHelloNewClient {
		t.Fatalf("after reset: %+v", r)
	}
}

func TestServerInstanceIDKeptAcrossPods(t *testing.T) {
	e := newEnv(t)
	p1, _ := e.pod()
	p2, _ := e.pod()
	if a, b := serverID(t, p1), serverID(t, p2); a != b || a == 0 {
		t.Fatalf("server ids differ: %d %d", a, b)
	}
}

func TestVersionsRefused(t *testing.T) {
	e := newEnv(t)
	p, _ := e.pod()
	addr := p.Addrs["sink"]
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)

	// protocol version 15: golden frame 0f05312e302e3000000001 → 14, close
	c := dial(t, addr, e.pki, cert)
	c.sendRaw(unhex(t, "0f 05 312e302e30 00000001"))
	m, f, err := c.read(10 * time.Second)
	if err != nil || !bytes.Equal(f, []byte{0x14}) {
		t.Fatalf("v15: got %x %v %v", f, m.Type, err)
	}
	c.expectClosed()

	// minimum application version
	if code := apiDo(t, "PUT", p.AdminURL+"/api/v1/sink/policy", Policy{MinApplicationVersion: "1.2.0"}, nil); code != 200 {
		t.Fatalf("policy: %d", code)
	}
	if code := apiDo(t, "PUT", p.AdminURL+"/api/v1/sink/policy", Policy{MinApplicationVersion: "one"}, nil); code != 400 {
		t.Fatalf("bad policy accepted: %d", code)
	}
	for _, v := range []string{"1.0.0", "1.1.9", "1.2.0-rc1", "garbage", ""} {
		c = dial(t, addr, e.pki, cert)
		if r := c.handshake(v, 1, nil); r.Code != RespUnsupportedApplicationVersion {
			t.Fatalf("app %q: %+v, want 15", v, r)
		}
		c.expectClosed()
	}
	for i, v := range []string{"1.2.0", "1.10.0", "2.0"} {
		c = dial(t, addr, e.pki, cert)
		var sid *uint32
		if i > 0 {
			sid = u32(serverID(t, p))
		}
		if r := c.handshake(v, 1, sid); r.Code != RespHelloNewClient && r.Code != RespConnected {
			t.Fatalf("app %q: %+v", v, r)
		}
		c.conn.Close()
	}
	// the version check comes before the instance ids: a mismatching client with an old version gets 15
	c = dial(t, addr, e.pki, cert)
	if r := c.handshake("1.0.0", 999, nil); r.Code != RespUnsupportedApplicationVersion {
		t.Fatalf("order: %+v", r)
	}
}

func TestQuarantine(t *testing.T) {
	e := newEnv(t)
	p, _ := e.pod()
	addr := p.Addrs["sink"]
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)
	live := connect(t, addr, e.pki, cert, 1, nil)

	q := QuarantineRequest{Machine: "\x01\x01\x01", Human: "blocked"}
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients/meter-1/quarantine", q, nil); code != 200 {
		t.Fatalf("quarantine: %d", code)
	}
	live.expectClosed() // the live connection is closed so that the next handshake sees the quarantine

	c := dial(t, addr, e.pki, cert)
	c.request("1.0.0", 1, u32(serverID(t, p)))
	_, f, err := c.read(10 * time.Second)
	if err != nil || !bytes.Equal(f, unhex(t, "13 03 010101 626c6f636b6564")) {
		t.Fatalf("quarantined answer %x, %v", f, err)
	}
	c.expectClosed()

	if code := apiDo(t, "DELETE", p.AdminURL+"/api/v1/sink/clients/meter-1/quarantine", nil, nil); code != 200 {
		t.Fatalf("unquarantine: %d", code)
	}
	connect(t, addr, e.pki, cert, 1, u32(serverID(t, p)))
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients/nobody/quarantine", q, nil); code != 404 {
		t.Fatalf("quarantine unknown: %d", code)
	}
}

func TestUnknownCertificate(t *testing.T) {
	e := newEnv(t)
	p, _ := e.pod()
	addr := p.Addrs["sink"]
	// signed by the right CA, but not registered: TLS succeeds, then a silent close
	c := dial(t, addr, e.pki, e.pki.client(t, "stranger"))
	c.trySend(unhex(t, "00 05 312e302e30 00000001"))
	c.expectClosed()

	// signed by another CA: the TLS handshake itself fails
	other := newPKI(t)
	oc, err := dialErr(addr, e.pki, other.client(t, "meter-1"))
	if err == nil {
		oc.t = t
		oc.trySend(unhex(t, "00 05 312e302e30 00000001")) // TLS 1.3 reports the refusal on first read
		oc.expectClosed()
	}

	// registering the same certificate twice, or a bad PEM, is refused
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients", AddClientRequest{ID: "meter-x", CertPEM: string(cert.CertPEM)}, nil); code != 409 {
		t.Fatalf("duplicate cert: %d", code)
	}
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients", AddClientRequest{ID: "meter-1", CertPEM: string(e.pki.client(t, "x").CertPEM)}, nil); code != 409 {
		t.Fatalf("duplicate id: %d", code)
	}
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients", AddClientRequest{ID: "bad id", CertPEM: string(cert.CertPEM)}, nil); code != 400 {
		t.Fatalf("bad id: %d", code)
	}
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients", AddClientRequest{ID: "m2", CertPEM: "nope"}, nil); code != 400 {
		t.Fatalf("bad pem: %d", code)
	}
	// a deleted client is unknown again
	if code := apiDo(t, "DELETE", p.AdminURL+"/api/v1/sink/clients/meter-1", nil, nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	c = dial(t, addr, e.pki, cert)
	c.trySend(unhex(t, "00 05 312e302e30 00000001"))
	c.expectClosed()
}

func TestClientIDFromCN(t *testing.T) {
	e := newEnv(t)
	p, _ := e.pod("--sink-client-id-from-cn")
	c := dial(t, p.Addrs["sink"], e.pki, e.pki.client(t, "cn-meter"))
	if r := c.handshake("1.0.0", 3, nil); r.Code != RespHelloNewClient {
		t.Fatalf("cn mode: %+v", r)
	}
	var ci ClientInfo
	if code := apiDo(t, "GET", p.AdminURL+"/api/v1/sink/clients/cn-meter", nil, &ci); code != 200 || ci.CN != "cn-meter" {
		t.Fatalf("cn client: %d %+v", code, ci)
	}
	// a CN that cannot be a client id is refused
	c = dial(t, p.Addrs["sink"], e.pki, e.pki.client(t, "bad cn!"))
	c.trySend(unhex(t, "00 05 312e302e30 00000001"))
	c.expectClosed()
}

func TestTrafficBeforeHandshake(t *testing.T) {
	e := newEnv(t)
	p, js := e.pod()
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)
	c := dial(t, p.Addrs["sink"], e.pki, cert)
	c.publish(7, Event{TypeID: 1, SchemaVersion: 1, Key: []byte{1, 2, 3}, Offset: 300, Timestamp: 1618150125, Data: []byte("hi")})
	m := c.expect(TypeNack)
	if m.ID != 7 || string(m.Machine) != "401" {
		t.Fatalf("nack before handshake: %+v", m)
	}
	c.sendRaw(AppendPing(nil))
	c.expect(TypePong)
	c.ack(5) // unknown id: ignored
	if r := c.handshake("1.0.0", 1, nil); r.Code != RespHelloNewClient {
		t.Fatalf("handshake after refused traffic: %+v", r)
	}
	// a second connection request closes the connection (the original crashes)
	c.request("1.0.0", 1, nil)
	c.expectClosed()
	info, err := js.StreamInfo(t.Context(), StreamIn)
	if err != nil || info.Messages != 0 {
		t.Fatalf("refused publish was stored: %+v %v", info, err)
	}
}

func TestDevCertificates(t *testing.T) {
	srv := jstest.Server(t)
	js := jstest.Connect(t, srv)
	p := bridgetest.Start(t, js, New())
	dir := filepath.Join(p.Env.DataDir, "sink-dev")
	d, err := EnsureDevCerts(dir) // idempotent: the same files
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := os.ReadFile(d.Client)
	fp, _, _ := FingerprintPEM(pemBytes)
	if fp != d.ClientFingerprint {
		t.Fatal("fingerprint changed")
	}
	caPEM, _ := os.ReadFile(d.CA)
	keyPEM, _ := os.ReadFile(d.ClientKey)
	pki := &testPKI{ca: &CA{CertPEM: caPEM}}
	c := dial(t, p.Addrs["sink"], pki, Issued{CertPEM: pemBytes, KeyPEM: keyPEM})
	if r := c.handshake("1.0.0", 1, nil); r.Code != RespHelloNewClient {
		t.Fatalf("dev client: %+v", r)
	}
	// without --sink-client-ca any certificate is accepted by TLS; the fingerprint registry decides
	other := newPKI(t)
	oc := other.client(t, "meter-9")
	register(t, p, "meter-9", oc)
	c2 := dial(t, p.Addrs["sink"], pki, oc)
	if r := c2.handshake("1.0.0", 1, nil); r.Code != RespHelloNewClient {
		t.Fatalf("fingerprint-only client: %+v", r)
	}
	c3 := dial(t, p.Addrs["sink"], pki, other.client(t, "meter-10"))
	c3.trySend(unhex(t, "00 05 312e302e30 00000001"))
	c3.expectClosed()

	// a restart with the same data folder reuses the files
	before, _ := os.ReadFile(d.Server)
	if _, err := EnsureDevCerts(dir); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(d.Server)
	if !bytes.Equal(before, after) {
		t.Fatal("server certificate regenerated")
	}
}

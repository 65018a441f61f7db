package sink

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/adapters/conformance"
	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// Conformance flags: a 1 s outbound lease (the adapter's minimum) and a short keepalive (the
// test devices ping at a third of it, as the original client does).
const (
	confLease     = time.Second
	confKeepalive = 3 * time.Second
	confEventType = 1
)

// TestConformanceOutbound runs the shared suite on the outbound direction (cloud → device): a
// cloud client submits an event through the admin API with the suite's key as the Sink key
// (offset 1), a real device connected to a pod receives the PUBLISH, ACKs (done) or NACKs (the
// Decisions park a NACKed event in the dead-letter stream at once: one attempt).
func TestConformanceOutbound(t *testing.T) {
	d := &confDriver{pki: newPKI(t), client: "conf-out"}
	conformance.Run(t, d, conformance.Options{
		Lease:       confLease,
		MaxAttempts: 1,
		DeadLetter:  "dlq.sink.out.>",
	})
}

// TestConformanceOutboundNATS is the outbound direction with a cloud client that publishes to
// the client's cloud subject itself (Sink fields in headers, Nats-Msg-Id = OutboundMsgID).
func TestConformanceOutboundNATS(t *testing.T) {
	d := &confDriver{pki: newPKI(t), client: "conf-nats", viaNATS: true}
	conformance.Run(t, d, conformance.Options{
		Lease:       confLease,
		MaxAttempts: 1,
		DeadLetter:  "dlq.sink.out.>",
	})
}

// TestConformanceInbound runs the shared suite on the inbound direction (device → cloud): a
// device PUBLISHes (ACKed only after the JetStream ack, re-sent with the same offset = the retry),
// a plain JetStream consumer of the client's inbound subjects on the pod's NATS connection is the
// worker.
func TestConformanceInbound(t *testing.T) {
	d := &confDriver{pki: newPKI(t), client: "conf-in", inbound: true}
	conformance.Run(t, d, conformance.Options{
		Lease: confLease,
		SkipDeadLetter: "inbound events are stored in SINK_IN (a limits stream read by any consumer); " +
			"what the cloud's consumers do with a failing event is theirs, the adapter has no dead-letter step",
	})
}

// confDriver is the conformance driver; one client identity, at most one device connection at
// a time (moving to another pod connects there first: the last connection wins).
type confDriver struct {
	pki     *testPKI
	client  string
	inbound bool
	viaNATS bool // outbound submitted by a NATS publish instead of the admin API
	cert    Issued

	mu       sync.Mutex
	serverID *uint32 // learnt from hello_new_client, per NATS server (reset in Setup)
	dev      *confDevice
	stamp    map[string]uint64 // the timestamp a key was first submitted with (a retry resends the same event)
}

const confInConsumer = "CONF_SINK_IN"

func (d *confDriver) NewAdapter() (bridge.Adapter, []string) {
	return New(), d.pki.args("--sink-out-ack-wait="+confLease.String(), "--sink-keepalive="+confKeepalive.String(),
		"--sink-freshness-flush=100ms")
}

func (d *confDriver) Setup(t *testing.T, p *bridgetest.Pod) {
	t.Helper()
	d.mu.Lock()
	d.serverID, d.dev, d.stamp = nil, nil, map[string]uint64{}
	d.mu.Unlock()
	if d.cert.CertPEM == nil {
		d.cert = d.pki.client(t, d.client)
	}
	register(t, p, d.client, d.cert)
	if d.inbound {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := p.Env.JS.EnsureConsumer(ctx, jetstream.ConsumerSpec{Stream: StreamIn, Durable: confInConsumer,
			FilterSubjects: []string{p.Env.JS.Subject("sink", "in", d.client, ">")}, AckWait: confLease}); err != nil {
			t.Fatalf("inbound consumer: %v", err)
		}
	}
}

func (d *confDriver) event(key string, payload []byte) Event {
	d.mu.Lock()
	ts, ok := d.stamp[key]
	if !ok {
		ts = uint64(time.Now().Unix())
		d.stamp[key] = ts
	}
	d.mu.Unlock()
	return Event{TypeID: confEventType, SchemaVersion: 1, Key: []byte(key), Offset: 1, Timestamp: ts, Data: payload}
}

func (d *confDriver) Submit(t *testing.T, p *bridgetest.Pod, key string, payload []byte) {
	t.Helper()
	ev := d.event(key, payload)
	if d.inbound {
		d.publish(t, p, ev)
		return
	}
	if d.viaNATS {
		h := jetstream.Header{}
		h.Set(HdrEventType, strconv.FormatUint(ev.TypeID, 10))
		h.Set(HdrKey, base64.StdEncoding.EncodeToString(ev.Key))
		h.Set(HdrOffset, strconv.FormatUint(ev.Offset, 10))
		h.Set(HdrTimestamp, strconv.FormatUint(ev.Timestamp, 10))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := p.Env.JS.Publish(ctx, p.Env.JS.Subject("sink", "out", d.client), payload,
			jetstream.PubOpts{MsgID: OutboundMsgID(d.client, ev.TypeID, ev.Key, ev.Offset), Header: h}); err != nil {
			t.Fatalf("submit %s: %v", key, err)
		}
		return
	}
	typ, off, ts := ev.TypeID, ev.Offset, ev.Timestamp
	var resp EventResponse
	code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients/"+d.client+"/events", EventRequest{EventTypeID: &typ,
		Key: base64.StdEncoding.EncodeToString(ev.Key), Offset: &off, Timestamp: &ts, Data: base64.StdEncoding.EncodeToString(payload)}, &resp)
	if code != 201 {
		t.Fatalf("submit %s: HTTP %d", key, code)
	}
	if resp.Offset != off {
		t.Fatalf("submit %s: offset %d, want %d", key, resp.Offset, off)
	}
}

// publish sends an inbound event from a device on p and waits for its ACK; a connection lost
// before the ACK is redialled and the event re-sent (the device's at-least-once).
func (d *confDriver) publish(t *testing.T, p *bridgetest.Pod, ev Event) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		dev := d.device(t, p)
		id := dev.publish(ev)
		for id >= 0 {
			select {
			case m := <-dev.in:
				switch {
				case m.Type == TypeAck && int(m.ID) == id:
					return
				case m.Type == TypeNack && int(m.ID) == id:
					t.Fatalf("publish %q: NACK machine=%q human=%q", ev.Key, m.Machine, m.Human)
				}
			case <-dev.done:
				id = -1
			case <-time.After(time.Until(deadline)):
				t.Fatalf("publish %q: no ACK", ev.Key)
			}
		}
	}
	t.Fatalf("publish %q: no ACK within 20s", ev.Key)
}

func (d *confDriver) Receive(t *testing.T, p *bridgetest.Pod, within time.Duration) conformance.Delivery {
	t.Helper()
	if d.inbound {
		return d.fetch(t, p, within)
	}
	deadline := time.Now().Add(within)
	dev := d.device(t, p)
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case m := <-dev.in:
			if m.Type == TypePublish {
				return &confDelivery{dev: dev, id: m.ID, ev: m.Event}
			}
		case <-dev.done:
			// dropped (a device reconnects, as the original client does after 50 ms)
			select {
			case <-timer.C:
				return nil
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return nil
			}
			dev = d.device(t, p)
		case <-timer.C:
			return nil
		}
	}
}

func (d *confDriver) fetch(t *testing.T, p *bridgetest.Pod, within time.Duration) conformance.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within+5*time.Second)
	defer cancel()
	cons, err := p.Env.JS.Consumer(ctx, StreamIn, confInConsumer)
	if err != nil {
		t.Fatalf("inbound consumer: %v", err)
	}
	jobs, err := cons.Fetch(ctx, 1, within)
	if err != nil {
		t.Fatalf("inbound fetch: %v", err)
	}
	if len(jobs) == 0 {
		return nil
	}
	j := jobs[0]
	if got, want := j.Header.Get(HdrClient), d.client; got != want {
		t.Fatalf("inbound event of client %q, want %q", got, want)
	}
	return &confJob{j: j}
}

// device returns the device connection on p, dialling it (and closing the one on another pod
// after the new one is accepted) when needed.
func (d *confDriver) device(t *testing.T, p *bridgetest.Pod) *confDevice {
	t.Helper()
	d.mu.Lock()
	old := d.dev
	d.mu.Unlock()
	if old != nil && old.pod == p {
		select {
		case <-old.done:
		default:
			return old
		}
	}
	d.mu.Lock()
	sid := d.serverID
	d.mu.Unlock()
	dev, resp, err := dialDevice(p, d.pki, d.cert, sid)
	if err != nil {
		t.Fatalf("device on %s: %v", p.Env.PodID, err)
	}
	t.Cleanup(dev.close)
	if resp.Code == RespHelloNewClient {
		s := resp.ServerInstanceID
		d.mu.Lock()
		d.serverID = &s
		d.mu.Unlock()
	}
	d.mu.Lock()
	d.dev = dev
	d.mu.Unlock()
	if old != nil {
		old.close()
	}
	return dev
}

// confDevice is one device connection speaking the original client's frames: a reader goroutine
// hands every frame to in, a pinger keeps the connection alive.
type confDevice struct {
	pod  *bridgetest.Pod
	conn *tls.Conn
	in   chan Message
	done chan struct{} // closed when the connection is gone
	stop chan struct{}
	wg   sync.WaitGroup

	wmu    sync.Mutex
	nextID uint16
	once   sync.Once
}

const confInstanceID = 7

func dialDevice(p *bridgetest.Pod, pki *testPKI, cert Issued, serverID *uint32) (*confDevice, ConnectionResponse, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pki.ca.CertPEM)
	kp, err := cert.TLS()
	if err != nil {
		return nil, ConnectionResponse{}, err
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", p.Addrs["sink"],
		&tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, ConnectionResponse{}, err
	}
	req := ConnectionRequest{AppVersion: "1.0.0", ClientInstanceID: confInstanceID}
	if serverID != nil {
		req.ServerInstanceID, req.HasServerID = *serverID, true
	}
	f, err := AppendConnectionRequest(nil, req)
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		err = WriteFrame(conn, f)
	}
	br := bufio.NewReader(conn)
	var m Message
	if err == nil {
		if f, err = ReadFrame(br, nil); err == nil {
			m, err = Decode(f)
		}
	}
	if err == nil && (m.Type != TypeConnectionResponse || m.Response.Code != RespConnected && m.Response.Code != RespHelloNewClient) {
		err = fmt.Errorf("handshake answered %v %+v", m.Type, m.Response)
	}
	if err != nil {
		_ = conn.Close()
		return nil, ConnectionResponse{}, fmt.Errorf("handshake: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	dev := &confDevice{pod: p, conn: conn, in: make(chan Message, 64), done: make(chan struct{}), stop: make(chan struct{}),
		nextID: uint16(time.Now().UnixNano()) & MaxID}
	dev.wg.Add(2)
	go dev.read(br)
	go dev.ping()
	return dev, m.Response, nil
}

func (dev *confDevice) read(br *bufio.Reader) {
	defer dev.wg.Done()
	defer close(dev.done)
	for {
		f, err := ReadFrame(br, nil)
		if err != nil {
			return
		}
		m, err := Decode(f)
		if err != nil {
			return // the original client crashes on a frame it cannot decode
		}
		select {
		case dev.in <- m:
		case <-dev.stop:
			return
		}
	}
}

func (dev *confDevice) ping() {
	defer dev.wg.Done()
	tk := time.NewTicker(confKeepalive / 3)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
			_ = dev.send(AppendPing(nil))
		case <-dev.done:
			return
		case <-dev.stop:
			return
		}
	}
}

func (dev *confDevice) send(f []byte) error {
	dev.wmu.Lock()
	defer dev.wmu.Unlock()
	_ = dev.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return WriteFrame(dev.conn, f)
}

// publish sends ev and returns its message id (-1 when the connection is gone).
func (dev *confDevice) publish(ev Event) int {
	dev.wmu.Lock()
	id := dev.nextID
	dev.nextID = (id + 1) & MaxID
	dev.wmu.Unlock()
	f, err := AppendPublish(nil, id, ev)
	if err != nil {
		panic(err)
	}
	if dev.send(f) != nil {
		return -1
	}
	return int(id)
}

// close ends the connection the way a device shuts down (TLS close_notify, socket closed).
func (dev *confDevice) close() {
	dev.once.Do(func() {
		close(dev.stop)
		_ = dev.conn.Close()
		dev.wg.Wait()
	})
}

// confDelivery is an outbound event a device holds.
type confDelivery struct {
	dev *confDevice
	id  uint16
	ev  Event
}

func (c *confDelivery) Payload() []byte { return c.ev.Data }

func (c *confDelivery) Complete(t *testing.T) {
	t.Helper()
	f, _ := AppendAck(nil, c.id)
	if err := c.dev.send(f); err != nil {
		t.Fatalf("ack %d: %v", c.id, err)
	}
}

func (c *confDelivery) Fail(t *testing.T) {
	t.Helper()
	f, _ := AppendNack(nil, c.id, []byte("500"), []byte("conformance: attempt failed"))
	if err := c.dev.send(f); err != nil {
		t.Fatalf("nack %d: %v", c.id, err)
	}
}

// confJob is an inbound event a JetStream consumer holds.
type confJob struct{ j *jetstream.Job }

func (c *confJob) Payload() []byte { return c.j.Data }

func (c *confJob) Complete(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.j.Ack(ctx); err != nil {
		t.Fatalf("inbound ack: %v", err)
	}
}

func (c *confJob) Fail(t *testing.T) {
	t.Helper()
	if err := c.j.Retry(0); err != nil {
		t.Fatalf("inbound retry: %v", err)
	}
}

// TestOutboundLeaseAfterHardCrash is RedeliveryAfterPodDies without the goodbye: the holding
// pod loses NATS before it can hand the event back, so only the lease brings it back.
func TestOutboundLeaseAfterHardCrash(t *testing.T) {
	e := newEnv(t)
	d := &confDriver{pki: e.pki, client: "conf-crash"}
	_, args := d.NewAdapter()
	jsA, jsB := jstest.Connect(t, e.srv), jstest.Connect(t, e.srv)
	pa := bridgetest.Start(t, jsA, New(), args...)
	d.Setup(t, pa)
	pb := bridgetest.Start(t, jsB, New(), args...)
	d.Submit(t, pa, "crash-1", []byte("held by a"))
	if got := d.Receive(t, pa, 10*time.Second); got == nil || string(got.Payload()) != "held by a" {
		t.Fatalf("first delivery: %v", got)
	}
	jsA.Close() // the pod is cut off: no hand-back, no lease renewal
	start := time.Now()
	got := d.Receive(t, pb, 3*confLease+10*time.Second)
	if got == nil || string(got.Payload()) != "held by a" {
		t.Fatalf("redelivery after the lease: %v", got)
	}
	took := time.Since(start)
	got.Complete(t)
	pa.Kill(t)
	if d.Receive(t, pb, 500*time.Millisecond) != nil {
		t.Fatal("completed event delivered again")
	}
	t.Logf("redelivered %v after the holding pod was cut off (lease %v)", took.Round(10*time.Millisecond), confLease)
}

// TestOutboundSlowAckNotResent: while the JetStream ack of a device ACK is slow (longer than the
// lease), the event is still held by the pod (lease renewed) and not sent to the device again.
func TestOutboundSlowAckNotResent(t *testing.T) {
	testSettleDelay.Store(int64(3 * confLease))
	t.Cleanup(func() { testSettleDelay.Store(0) })
	e := newEnv(t)
	d := &confDriver{pki: e.pki, client: "conf-slow"}
	_, args := d.NewAdapter()
	p := bridgetest.Start(t, jstest.Connect(t, e.srv), New(), args...)
	d.Setup(t, p)
	for _, k := range []string{"ack", "nack"} {
		d.Submit(t, p, "slow-"+k, []byte("once "+k))
		got := d.Receive(t, p, 10*time.Second)
		if got == nil || string(got.Payload()) != "once "+k {
			t.Fatalf("%s: first delivery: %v", k, got)
		}
		if k == "ack" {
			got.Complete(t)
		} else {
			got.Fail(t)
		}
		if again := d.Receive(t, p, 4*confLease); again != nil {
			t.Fatalf("%s: sent again while its %s was being written: %q", k, k, again.Payload())
		}
	}
	jstest.Eventually(t, 10*time.Second, func() error {
		info, err := p.Env.JS.StreamInfo(context.Background(), StreamOut)
		if err != nil {
			return err
		}
		if info.Messages != 0 {
			return fmt.Errorf("%d outbound left", info.Messages)
		}
		return nil
	})
}

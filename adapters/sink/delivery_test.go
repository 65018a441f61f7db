package sink

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

func ev(typ uint64, key string, off uint64, data string) Event {
	return Event{TypeID: typ, SchemaVersion: 1, Key: []byte(key), Offset: off, Timestamp: 1618150000 + off, Data: []byte(data)}
}

func inCount(t testing.TB, js *jetstream.Client) uint64 {
	t.Helper()
	info, err := js.StreamInfo(context.Background(), StreamIn)
	if err != nil {
		t.Fatal(err)
	}
	return info.Messages
}

func TestInboundAckDuplicateMismatch(t *testing.T) {
	e := newEnv(t)
	p, js := e.pod("--sink-freshness-flush=50ms")
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)
	c := connect(t, p.Addrs["sink"], e.pki, cert, 1, nil)

	// golden PUBLISH frame of §5
	c.sendRaw(unhex(t, "4007 01 01 03010203 ac02 ed85cc8306 026869"))
	if m := c.expect(TypeAck); m.ID != 7 {
		t.Fatalf("ack id %d", m.ID)
	}
	if n := inCount(t, js); n != 1 {
		t.Fatalf("stored %d", n)
	}
	// stored with the Sink fields in headers (ACK came after the JetStream ack)
	m, err := js.LastMsg(context.Background(), StreamIn, js.Subject("sink", "in", "meter-1", "1"))
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != "hi" || m.Header.Get(HdrKey) != base64.StdEncoding.EncodeToString([]byte{1, 2, 3}) ||
		m.Header.Get(HdrOffset) != "300" || m.Header.Get(HdrTimestamp) != "1618150125" || m.Header.Get(HdrClient) != "meter-1" ||
		m.Header.Get(HdrSchemaVersion) != "1" || m.Header.Get(HdrEventType) != "1" {
		t.Fatalf("stored message: %q %v", m.Data, m.Header)
	}

	// re-sent duplicate (another message id, as after a reconnect): ACKed, not stored twice
	c.sendRaw(unhex(t, "4123 01 01 03010203 ac02 ed85cc8306 026869"))
	if m := c.expect(TypeAck); m.ID != 0x123 {
		t.Fatalf("dup ack id %d", m.ID)
	}
	if n := inCount(t, js); n != 1 {
		t.Fatalf("duplicate stored: %d", n)
	}
	// same offset, different data → NACK 409 data mismatch
	c.publish(8, Event{TypeID: 1, SchemaVersion: 1, Key: []byte{1, 2, 3}, Offset: 300, Timestamp: 1618150125, Data: []byte("ho")})
	nk := c.expect(TypeNack)
	if nk.ID != 8 || string(nk.Machine) != "409" || string(nk.Human) != "data mismatch" {
		t.Fatalf("mismatch nack: %+v", nk)
	}
	if n := inCount(t, js); n != 1 {
		t.Fatalf("mismatch stored: %d", n)
	}
	// same data under another key or type is a different event
	c.publish(9, Event{TypeID: 2, SchemaVersion: 1, Key: []byte{1, 2, 3}, Offset: 300, Timestamp: 1618150200, Data: []byte("ho")})
	c.expect(TypeAck)
	// malformed PUBLISH: NACK 400, the connection survives
	c.sendRaw(unhex(t, "400a 01 01 09 0102"))
	if nk := c.expect(TypeNack); nk.ID != 10 || string(nk.Machine) != "400" {
		t.Fatalf("malformed nack: %+v", nk)
	}
	c.sendRaw(unhex(t, "4007 01 01 03010203 ac02 ed85cc8306 026869 00")) // trailing byte
	if nk := c.expect(TypeNack); string(nk.Machine) != "400" {
		t.Fatalf("trailing nack: %+v", nk)
	}
	// forgiving: ACK/NACK for unknown ids, an ACK with a trailing byte, an empty frame
	c.ack(4000)
	c.nackMsg(4001, "x", "y")
	c.sendRaw(unhex(t, "300100"))
	c.sendRaw(nil)
	c.sendRaw(AppendPing(nil))
	c.expect(TypePong)

	// freshness per (client, event type)
	jstest.Eventually(t, 5*time.Second, func() error {
		var ci ClientInfo
		apiDo(t, "GET", p.AdminURL+"/api/v1/sink/clients/meter-1", nil, &ci)
		if ci.Freshness["1"] != 1618150125 || ci.Freshness["2"] != 1618150200 {
			return fmt.Errorf("freshness %v", ci.Freshness)
		}
		if ci.Connected == nil || ci.Connected.Pod != p.Env.PodID {
			return fmt.Errorf("connected %+v", ci.Connected)
		}
		return nil
	})
	// an older timestamp does not lower the freshness
	c.publish(11, Event{TypeID: 1, SchemaVersion: 1, Key: []byte{9}, Offset: 1, Timestamp: 5, Data: []byte("old")})
	c.expect(TypeAck)
	time.Sleep(0) // freshness is flushed asynchronously; the check below polls
	jstest.Eventually(t, 5*time.Second, func() error {
		var ci ClientInfo
		apiDo(t, "GET", p.AdminURL+"/api/v1/sink/clients/meter-1", nil, &ci)
		if ci.Freshness["1"] != 1618150125 {
			return fmt.Errorf("freshness %v", ci.Freshness)
		}
		return nil
	})

	// unknown message type closes the connection (as the original)
	c.sendRaw([]byte{0x20, 0x00})
	c.expectClosed()
}

func TestInboundWriteFailureNack(t *testing.T) {
	e := newEnv(t)
	p, js := e.pod()
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)
	c := connect(t, p.Addrs["sink"], e.pki, cert, 1, nil)
	// make the stream refuse new messages beyond the first
	spec := New().Assets(js.Names()).Streams[0]
	spec.MaxMsgs, spec.DiscardNew = 1, true
	if _, err := js.Provision(context.Background(), jetstream.Assets{Streams: []jetstream.StreamSpec{spec}}); err != nil {
		t.Fatal(err)
	}
	c.publish(1, ev(1, "k", 1, "a"))
	c.expect(TypeAck)
	c.publish(2, ev(1, "k", 2, "b"))
	nk := c.expect(TypeNack)
	if nk.ID != 2 || string(nk.Machine) != "503" {
		t.Fatalf("write failure: %+v", nk)
	}
	c.sendRaw(AppendPing(nil)) // still connected
	c.expect(TypePong)
}

func postEvent(t testing.TB, url, client string, req map[string]any) EventResponse {
	t.Helper()
	var r EventResponse
	if code := apiDo(t, "POST", url+"/api/v1/sink/clients/"+client+"/events", req, &r); code != 201 {
		t.Fatalf("post event: %d", code)
	}
	return r
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestOutboundDelivery(t *testing.T) {
	e := newEnv(t)
	p, js := e.pod()
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)

	// queued while offline
	r1 := postEvent(t, p.AdminURL, "meter-1", map[string]any{"event_type_id": 1, "schema_version": 2, "key": b64("k1"), "timestamp": 1618150125, "data": b64("a")})
	r2 := postEvent(t, p.AdminURL, "meter-1", map[string]any{"event_type_id": 1, "key": b64("k1"), "data": b64("b")})
	if r1.Offset != 1 || r2.Offset != 2 {
		t.Fatalf("assigned offsets %d %d", r1.Offset, r2.Offset)
	}
	// a plain NATS publish with the Sink headers (another key) and one without an offset
	h := jetstream.Header{}
	h.Set(HdrEventType, "1")
	h.Set(HdrKey, b64("k2"))
	h.Set(HdrOffset, "41")
	h.Set(HdrTimestamp, "7")
	if _, err := js.Publish(context.Background(), js.Subject("sink", "out", "meter-1"), []byte("n"), jetstream.PubOpts{Header: h}); err != nil {
		t.Fatal(err)
	}
	h2 := jetstream.Header{}
	h2.Set(HdrEventType, "3")
	h2.Set(HdrKey, b64("k3"))
	if _, err := js.Publish(context.Background(), js.Subject("sink", "out", "meter-1"), []byte("auto"), jetstream.PubOpts{Header: h2}); err != nil {
		t.Fatal(err)
	}
	// invalid: no event type → dead-lettered, never sent
	if _, err := js.Publish(context.Background(), js.Subject("sink", "out", "meter-1"), []byte("bad"), jetstream.PubOpts{}); err != nil {
		t.Fatal(err)
	}
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients/meter-1/events", map[string]any{"key": b64("x")}, nil); code != 400 {
		t.Fatalf("event without type: %d", code)
	}
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients/nobody/events", map[string]any{"event_type_id": 1}, nil); code != 404 {
		t.Fatalf("event for unknown client: %d", code)
	}

	c := connect(t, p.Addrs["sink"], e.pki, cert, 1, nil)
	got := map[string]Message{}
	for range 3 { // k1 offset 1, k2, k3 — but not k1 offset 2 (one in flight per key)
		m := c.expect(TypePublish)
		got[string(m.Event.Key)] = m
	}
	if m := got["k1"]; m.Event.Offset != 1 || string(m.Event.Data) != "a" || m.Event.SchemaVersion != 2 || m.Event.Timestamp != 1618150125 {
		t.Fatalf("k1: %+v", m.Event)
	}
	if m := got["k2"]; m.Event.Offset != 41 || m.Event.Timestamp != 7 || m.Event.SchemaVersion != 1 {
		t.Fatalf("k2: %+v", m.Event)
	}
	if m := got["k3"]; m.Event.Offset != 1 || m.Event.TypeID != 3 || string(m.Event.Data) != "auto" {
		t.Fatalf("k3: %+v", m.Event)
	}
	if m, f, err := c.read(300 * time.Millisecond); err == nil {
		t.Fatalf("second event of k1 sent while the first is in flight: %v %x", m.Type, f)
	}
	// ACK k1 → JetStream ack, then k1 offset 2 comes
	c.ack(got["k1"].ID)
	m := c.expect(TypePublish)
	if string(m.Event.Key) != "k1" || m.Event.Offset != 2 || string(m.Event.Data) != "b" {
		t.Fatalf("k1 second: %+v", m.Event)
	}
	// NACK k2 → dead-letter stream with the NACK messages
	c.nackMsg(got["k2"].ID, "422", "cannot apply")
	c.ack(got["k3"].ID)
	c.ack(m.ID)
	c.ack(m.ID) // ACK for an id no longer in flight: ignored
	jstest.Eventually(t, 5*time.Second, func() error {
		info, err := js.StreamInfo(context.Background(), StreamOut)
		if err != nil {
			return err
		}
		if info.Messages != 0 {
			return fmt.Errorf("%d outbound left", info.Messages)
		}
		return nil
	})
	dl, err := js.LastMsg(context.Background(), jetstream.DeadLetterStream, js.Subject("dlq", "sink", "out", "meter-1"))
	if err != nil {
		t.Fatal(err)
	}
	if string(dl.Data) != "n" || dl.Header.Get(HdrNackMachine) != "422" || dl.Header.Get(HdrNackHuman) != "cannot apply" {
		t.Fatalf("dead letter: %q %v", dl.Data, dl.Header)
	}
	counts, _ := js.SubjectCounts(context.Background(), jetstream.DeadLetterStream, ">")
	var n uint64
	for _, v := range counts {
		n += v
	}
	if n != 2 { // the NACKed one and the invalid one
		t.Fatalf("dead letters %v", counts)
	}
	// explicit offsets raise the counter: the next assigned one follows
	postEvent(t, p.AdminURL, "meter-1", map[string]any{"event_type_id": 9, "key": b64("z"), "offset": 10, "data": b64("x")})
	if r := postEvent(t, p.AdminURL, "meter-1", map[string]any{"event_type_id": 9, "key": b64("z"), "data": b64("y")}); r.Offset != 11 {
		t.Fatalf("offset after explicit 10: %d", r.Offset)
	}
	// posting the same explicit offset again is de-duplicated
	if r := postEvent(t, p.AdminURL, "meter-1", map[string]any{"event_type_id": 9, "key": b64("z"), "offset": 10, "data": b64("x")}); !r.Duplicate {
		t.Fatalf("re-post not de-duplicated: %+v", r)
	}
	// the same offset with other data is refused (not silently reported as a duplicate)
	if code := apiDo(t, "POST", p.AdminURL+"/api/v1/sink/clients/meter-1/events", map[string]any{"event_type_id": 9, "key": b64("z"), "offset": 10, "data": b64("other")}, nil); code != 409 {
		t.Fatalf("re-post with other data: %d, want 409", code)
	}
}

func TestReconnectResumesOutbound(t *testing.T) {
	e := newEnv(t)
	p, js := e.pod()
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)
	for i := 1; i <= 3; i++ {
		postEvent(t, p.AdminURL, "meter-1", map[string]any{"event_type_id": 1, "key": b64("k"), "data": b64(strconv.Itoa(i))})
	}
	c := connect(t, p.Addrs["sink"], e.pki, cert, 1, nil)
	m := c.expect(TypePublish)
	if m.Event.Offset != 1 {
		t.Fatalf("first %+v", m.Event)
	}
	c.ack(m.ID)
	m = c.expect(TypePublish)
	if m.Event.Offset != 2 {
		t.Fatalf("second %+v", m.Event)
	}
	c.conn.Close() // gone without ACKing offset 2

	S := serverID(t, p)
	c = connect(t, p.Addrs["sink"], e.pki, cert, 1, &S)
	m = c.expect(TypePublish)
	if m.Event.Offset != 2 || string(m.Event.Data) != "2" {
		t.Fatalf("resumed with %+v, want offset 2", m.Event)
	}
	c.ack(m.ID)
	m = c.expect(TypePublish)
	if m.Event.Offset != 3 {
		t.Fatalf("then %+v", m.Event)
	}
	c.ack(m.ID)
	jstest.Eventually(t, 5*time.Second, func() error {
		info, _ := js.StreamInfo(context.Background(), StreamOut)
		if info.Messages != 0 {
			return fmt.Errorf("%d left", info.Messages)
		}
		return nil
	})
}

// A pod killed with inbound events in flight loses none: the client re-sends everything not
// ACKed to another pod, which de-duplicates. Outbound events held by the dead pod are delivered
// by the new one.
func TestPodKilledLosesNothing(t *testing.T) {
	e := newEnv(t)
	pa, jsA := e.pod("--sink-out-ack-wait=1s")
	pb, jsB := e.pod("--sink-out-ack-wait=1s")
	cert := e.pki.client(t, "meter-1")
	register(t, pa, "meter-1", cert)
	postEvent(t, pa.AdminURL, "meter-1", map[string]any{"event_type_id": 5, "key": b64("cfg"), "data": b64("v1")})

	const n = 200
	c := connect(t, pa.Addrs["sink"], e.pki, cert, 1, nil)
	out := c.expect(TypePublish) // held by pod A, never ACKed
	for i := 1; i <= n; i++ {
		c.publish(uint16(i), ev(1, fmt.Sprintf("k%d", i%7), uint64(i), fmt.Sprint("d", i)))
	}
	acked := map[uint16]bool{}
	for len(acked) < n/4 {
		m := c.expect(TypeAck)
		acked[m.ID] = true
	}
	pa.Kill(t)
	jsA.Close()

	S := serverID(t, pb)
	c2 := connect(t, pb.Addrs["sink"], e.pki, cert, 1, &S)
	for i := 1; i <= n; i++ { // the client re-sends whatever it has no ACK for; here: everything
		c2.publish(uint16(1000+i), ev(1, fmt.Sprintf("k%d", i%7), uint64(i), fmt.Sprint("d", i)))
	}
	got := 0
	var out2 Message
	for got < n {
		m, f, err := c2.read(10 * time.Second)
		if err != nil {
			t.Fatalf("after %d acks: %v", got, err)
		}
		switch m.Type {
		case TypeAck:
			got++
		case TypePublish:
			out2 = m
		default:
			t.Fatalf("unexpected %x", f)
		}
	}
	if out2.Type != TypePublish {
		out2 = c2.expect(TypePublish)
	}
	if string(out2.Event.Data) != "v1" || out2.Event.Offset != out.Event.Offset {
		t.Fatalf("outbound after failover: %+v", out2.Event)
	}
	if got := inCount(t, jsB); got != n {
		t.Fatalf("stored %d events, want exactly %d", got, n)
	}
}

func TestLastConnectionWins(t *testing.T) {
	e := newEnv(t)
	pa, _ := e.pod()
	pb, _ := e.pod()
	cert := e.pki.client(t, "meter-1")
	register(t, pa, "meter-1", cert)
	S := serverID(t, pa)
	ca := connect(t, pa.Addrs["sink"], e.pki, cert, 1, nil)
	cb := connect(t, pb.Addrs["sink"], e.pki, cert, 1, &S)
	ca.expectClosed()
	cb.sendRaw(AppendPing(nil))
	cb.expect(TypePong)
	var ci ClientInfo
	jstest.Eventually(t, 5*time.Second, func() error {
		apiDo(t, "GET", pa.AdminURL+"/api/v1/sink/clients/meter-1", nil, &ci)
		if ci.Connected == nil || ci.Connected.Pod != pb.Env.PodID {
			return fmt.Errorf("owner %+v", ci.Connected)
		}
		return nil
	})
	// and back on the same pod: the newer local connection wins too
	cb2 := connect(t, pb.Addrs["sink"], e.pki, cert, 1, &S)
	cb.expectClosed()
	// outbound goes to the surviving connection
	postEvent(t, pa.AdminURL, "meter-1", map[string]any{"event_type_id": 1, "key": b64("k"), "data": b64("x")})
	if m := cb2.expect(TypePublish); string(m.Event.Data) != "x" {
		t.Fatalf("delivered %+v", m.Event)
	}
}

func TestSilentClientDropped(t *testing.T) {
	e := newEnv(t)
	p, _ := e.pod("--sink-keepalive=400ms")
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)

	// a client that pings every interval/2 stays connected well past 1.5 intervals
	c := connect(t, p.Addrs["sink"], e.pki, cert, 1, nil)
	var start time.Time
	for i := range 6 {
		if i > 0 {
			time.Sleep(200 * time.Millisecond) // the client's own pacing, not synchronisation
		}
		start = time.Now()
		c.sendRaw(AppendPing(nil))
		c.expect(TypePong)
	}
	// silent from now on: dropped after 1.5 x 400ms
	c.expectClosed()
	if d := time.Since(start); d < 550*time.Millisecond || d > 3*time.Second {
		t.Fatalf("silent client dropped after %v, want about 600ms", d)
	}
	// a connection that never sends anything is dropped too (no handshake needed)
	c2 := dial(t, p.Addrs["sink"], e.pki, cert)
	start = time.Now()
	c2.expectClosed()
	if d := time.Since(start); d < 550*time.Millisecond {
		t.Fatalf("dropped after %v", d)
	}
}

// Drain (SIGTERM) finishes the inbound events being written (ACKed) and hands held outbound
// events back at once, then closes.
func TestDrain(t *testing.T) {
	e := newEnv(t)
	p, js := e.pod()
	cert := e.pki.client(t, "meter-1")
	register(t, p, "meter-1", cert)
	postEvent(t, p.AdminURL, "meter-1", map[string]any{"event_type_id": 1, "key": b64("k"), "data": b64("x")})
	c := connect(t, p.Addrs["sink"], e.pki, cert, 1, nil)
	c.expect(TypePublish) // held, not ACKed
	for i := 1; i <= 20; i++ {
		c.publish(uint16(i), ev(1, "k", uint64(i), "d"))
	}
	p.Shutdown(t)
	acks := 0
	for {
		m, _, err := c.read(10 * time.Second)
		if err != nil {
			break
		}
		if m.Type == TypeAck {
			acks++
		}
	}
	if got := inCount(t, js); got != uint64(acks) {
		t.Fatalf("ACKed %d, stored %d", acks, got)
	}
	// the held outbound event is available again right away
	cons, err := js.Consumer(context.Background(), StreamOut, ConsumerName("meter-1"))
	if err != nil {
		t.Fatal(err)
	}
	jstest.Eventually(t, 5*time.Second, func() error {
		jobs, err := cons.FetchNoWait(1)
		if err != nil {
			return err
		}
		if len(jobs) != 1 {
			return fmt.Errorf("outbound event not handed back")
		}
		return nil
	})
}

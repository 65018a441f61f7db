package gilmour_test

// conformance_test.go: the shared guarantees of adapters/conformance, spoken the way Gilmour's own
// clients speak. Gilmour's durable unit of work is a signal delivered to a slot:
//
//   - Submit  = POST /signal/:id {"topic","message"} through a pod, as a Gilmour HTTP client does;
//     {"status":"ok"} means the signal is stored in JetStream (Decisions 2).
//   - Receive = a real HTTP node (httptest server) whose slot was registered through the first pod
//     gets POST <path> {topic, sender, data, timeout}; Payload is the data it got.
//   - Complete = the node answers 200; Fail = the node answers 500, which the proxy retries with
//     backoff and dead-letters after --gilmour-slot-max-deliver attempts.
//
// The node registry lives in KV and every pod pulls from the same slot consumer, so whichever pod
// delivers, the same node receives: Receive waits on the node, and its pod argument is unused.
// A node that holds a signal without answering keeps it for the slot's timeout (then the proxy
// retries); a pod that dies while delivering loses the JetStream lease (--gilmour-slot-ack-wait)
// and another pod delivers again.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/adapters/conformance"
	"github.com/jetbridge/jetbridge/adapters/gilmour"
	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
)

const (
	confTopic = "conformance.work"
	confGroup = "conformance"
	confPath  = "/work"
	// confSlotTimeout is the slot's handler timeout in seconds: how long a node may hold a signal
	// without answering before the proxy counts a failed attempt and retries.
	confSlotTimeout = 3
	confMaxDeliver  = 3
)

func TestConformance(t *testing.T) {
	conformance.Run(t, &confDriver{}, conformance.Options{
		// a dead pod's delivery comes back after the ack wait (1s); a silent node's after the
		// slot timeout (3s) — the longer of the two is the lease
		Lease:       confSlotTimeout * time.Second,
		MaxAttempts: confMaxDeliver,
		// jetstream.(*Job).DeadLetterFor stores "dlq.<subject without prefix>"
		DeadLetter: "dlq.gilmour.slot.>",
		SkipDeDup: "Gilmour clients send no idempotency key: POST /signal/:id carries only {topic, message} " +
			"and the envelope's sender is minted by the proxy per publish, so a retried POST is a second " +
			"signal (at least once)",
	})
}

// confDriver drives one conformance.Run; Setup (once per subtest, on its first pod) starts the
// node and registers it.
type confDriver struct {
	node *confNode
	id   string
	hc   *http.Client
}

var _ conformance.Driver = (*confDriver)(nil)

func (d *confDriver) NewAdapter() (bridge.Adapter, []string) {
	return gilmour.New(), []string{
		"--gilmour-health-interval=500ms", "--gilmour-dirty-after=30s",
		"--gilmour-slot-ack-wait=1s", "--gilmour-slot-retry=50ms",
		"--gilmour-slot-max-deliver=" + strconv.Itoa(confMaxDeliver),
	}
}

func (d *confDriver) Setup(t *testing.T, p *bridgetest.Pod) {
	t.Helper()
	d.hc = &http.Client{Timeout: 30 * time.Second}
	d.node = newConfNode(t)
	body := fmt.Sprintf(`{"port":%d,"health_check":"/health","slots":[{"topic":%q,"group":%q,"path":%q,"timeout":%d}]}`,
		d.node.port, confTopic, confGroup, confPath, confSlotTimeout)
	code, b := d.post(t, "http://"+p.Addrs["gilmour"]+"/nodes", body)
	var cr struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal(b, &cr); err != nil || code != http.StatusOK || cr.ID == "" || cr.Status != "ok" {
		t.Fatalf("register node: %d %s (%v)", code, b, err)
	}
	d.id = cr.ID
}

// Submit publishes a signal. key is not sent: Gilmour signals have no idempotency key (SkipDeDup).
// It also checks that the signal is in the stream by the time the proxy answered ok.
func (d *confDriver) Submit(t *testing.T, p *bridgetest.Pod, _ string, payload []byte) {
	t.Helper()
	before := d.lastSeq(t, p)
	msg, err := json.Marshal(map[string]any{"topic": confTopic, "message": string(payload)})
	if err != nil {
		t.Fatal(err)
	}
	code, b := d.post(t, "http://"+p.Addrs["gilmour"]+"/signal/"+d.id, string(msg))
	if code != http.StatusOK || !bytes.Equal(bytes.TrimSpace(b), []byte(`{"status":"ok"}`)) {
		t.Fatalf("signal: %d %s", code, b)
	}
	if after := d.lastSeq(t, p); after <= before {
		t.Fatalf("signal answered ok but not stored: %s last sequence %d, was %d", gilmour.SlotStream, after, before)
	}
}

// Receive waits for the node to be called. p is unused: any pod may deliver (they share the slot
// consumer and read the node registry from KV), and the node is the worker.
func (d *confDriver) Receive(t *testing.T, _ *bridgetest.Pod, within time.Duration) conformance.Delivery {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case dl := <-d.node.work:
			if dl.ctx.Err() != nil {
				continue // the proxy gave up on this call during the hand-over: it comes back
			}
			if dl.call.Topic != confTopic || dl.call.Sender == "" {
				t.Fatalf("handler call: topic %q sender %q, want topic %q and a sender", dl.call.Topic, dl.call.Sender, confTopic)
			}
			return dl
		case <-timer.C:
			return nil
		}
	}
}

func (d *confDriver) post(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	resp, err := d.hc.Post(url, "application/json", bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: read answer: %v", url, err)
	}
	return resp.StatusCode, b
}

func (d *confDriver) lastSeq(t *testing.T, p *bridgetest.Pod) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	si, err := p.Env.JS.StreamInfo(ctx, gilmour.SlotStream)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return si.LastSeq
}

// confNode is a Gilmour HTTP node: GET /health answers OK, POST /work hands the call to Receive
// and answers what Complete or Fail say.
type confNode struct {
	port    int
	work    chan *confDelivery // unbuffered: a call is handed over only while the proxy waits for it
	closing chan struct{}
}

func newConfNode(t *testing.T) *confNode {
	n := &confNode{work: make(chan *confDelivery), closing: make(chan struct{})}
	srv := httptest.NewServer(n)
	t.Cleanup(srv.Close)
	// runs before srv.Close (cleanups are LIFO): held calls end so Close does not wait for them
	t.Cleanup(func() { close(n.closing) })
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n.port, _ = strconv.Atoi(port)
	return n
}

type handlerCall struct {
	Topic   string          `json:"topic"`
	Sender  string          `json:"sender"`
	Data    json.RawMessage `json:"data"`
	Timeout int             `json:"timeout"`
}

func (n *confNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/health":
		_, _ = io.WriteString(w, "OK")
		return
	case r.Method == http.MethodPost && r.URL.Path == confPath:
	default:
		http.NotFound(w, r)
		return
	}
	var call handlerCall
	var data string
	if err := json.NewDecoder(r.Body).Decode(&call); err != nil {
		http.Error(w, "handler call: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := json.Unmarshal(call.Data, &data); err != nil {
		http.Error(w, "data is not the string a client sent: "+err.Error(), http.StatusBadRequest)
		return
	}
	dl := &confDelivery{ctx: r.Context(), call: call, payload: []byte(data),
		answer: make(chan int, 1), done: make(chan struct{})}
	select {
	case n.work <- dl:
	case <-r.Context().Done():
		return
	case <-n.closing:
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	defer close(dl.done)
	select {
	case code := <-dl.answer:
		w.WriteHeader(code)
		_, _ = io.WriteString(w, http.StatusText(code))
		dl.answered = r.Context().Err() == nil
	case <-r.Context().Done():
	case <-n.closing:
		w.WriteHeader(http.StatusServiceUnavailable)
	}
}

// confDelivery is one slot call the node holds.
type confDelivery struct {
	ctx     context.Context // the proxy's call: done when the proxy gave up on it
	call    handlerCall
	payload []byte

	once     sync.Once
	answer   chan int
	done     chan struct{}
	answered bool // set before done is closed
}

func (dl *confDelivery) Payload() []byte { return dl.payload }

func (dl *confDelivery) Complete(t *testing.T) { dl.finish(t, http.StatusOK) }

func (dl *confDelivery) Fail(t *testing.T) { dl.finish(t, http.StatusInternalServerError) }

// finish answers the proxy's call and waits until the answer is written.
func (dl *confDelivery) finish(t *testing.T, code int) {
	t.Helper()
	dl.once.Do(func() { dl.answer <- code })
	select {
	case <-dl.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("node did not answer %d within 10s", code)
	}
	if !dl.answered {
		t.Logf("the proxy gave up on this call before the node answered %d: the signal comes back", code)
	}
}

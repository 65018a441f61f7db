package tracker

import (
	"sync"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/adapters/conformance"
	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
)

// Conformance settings: a 1 s claim lease swept every 100 ms, three tries.
const (
	confLease    = time.Second
	confMaxTries = 3
	confPipeline = "conf"
	confType     = "conformance"
)

// TestConformance runs the shared suite the way the tracker's users work:
//   - Submit: an operator queues the item with POST /api/v1/tracker/items, the suite's key as the
//     item id (ids are the idempotency key: a retried POST of the same item answers 201 with the
//     same id, through any pod);
//   - Receive on pod p: a pipeline connected to pod p over a real WebSocket (hello first, golden
//     frames, one request in flight) sends Item:claim until an item comes; Payload is the item URL;
//   - Complete: Item:finish. Fail: Item:fail (not fatal) with the current attempt; after
//     --tracker-max-tries failed attempts the item is error and copied to dlq.tracker.items.<type>.
//
// A claim outlives its connection and pod: the item comes back when the lease runs out (every pod
// sweeps expired leases).
func TestConformance(t *testing.T) {
	conformance.Run(t, &confDriver{}, conformance.Options{
		Lease:       confLease,
		MaxAttempts: confMaxTries,
		DeadLetter:  "dlq.tracker.items.>",
	})
}

type confDriver struct {
	mu      sync.Mutex
	secret  string
	clients map[*bridgetest.Pod]*wsClient // one pipeline connection per pod
}

func (d *confDriver) NewAdapter() (bridge.Adapter, []string) {
	return New(), []string{"--tracker-lease=" + confLease.String(), "--tracker-sweep-interval=100ms",
		"--tracker-max-tries=3", "--tracker-argon2-memory=64", "--tracker-command-timeout=5s"}
}

// Setup creates the pipeline on a fresh NATS server (once per subtest).
func (d *confDriver) Setup(t *testing.T, p *bridgetest.Pod) {
	t.Helper()
	secret := addPipeline(t, p, confPipeline)
	d.mu.Lock()
	d.secret, d.clients = secret, map[*bridgetest.Pod]*wsClient{}
	d.mu.Unlock()
}

func (d *confDriver) Submit(t *testing.T, p *bridgetest.Pod, key string, payload []byte) {
	t.Helper()
	var out struct {
		IDs   []string `json:"ids"`
		Error string   `json:"error"`
	}
	st := admin(t, p, "POST", "/items", map[string]any{"id": key, "item": string(payload), "pipeline_type": confType,
		"priority": 0, "run_on": "", "queued_by": "conformance", "metadata": map[string]any{}}, &out)
	if st != 201 || len(out.IDs) != 1 || out.IDs[0] != key {
		t.Fatalf("submit %s: HTTP %d %+v", key, st, out)
	}
}

func (d *confDriver) client(t *testing.T, p *bridgetest.Pod) *wsClient {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.clients[p]
	if c == nil {
		c = connect(t, p.Addrs["tracker"], confPipeline, d.secret, true)
		d.clients[p] = c
	}
	c.t = t
	return c
}

func (d *confDriver) Receive(t *testing.T, p *bridgetest.Pod, within time.Duration) conformance.Delivery {
	t.Helper()
	c := d.client(t, p)
	deadline := time.Now().Add(within)
	for {
		cl := c.claim(confType)
		if cl.Item.ID != "" {
			return &confDelivery{c: c, id: cl.Item.ID, attempt: cl.Item.CurrentAttempt, payload: []byte(cl.Item.Item)}
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(20 * time.Millisecond) // the reference client polls an empty queue too (every 10–30 s)
	}
}

type confDelivery struct {
	c       *wsClient
	id      string
	attempt int
	payload []byte
}

func (d *confDelivery) Payload() []byte { return d.payload }

func (d *confDelivery) Complete(t *testing.T) {
	t.Helper()
	d.c.t = t
	d.c.expect(d.c.call("Item:finish", map[string]any{"id": d.id}), 204)
}

func (d *confDelivery) Fail(t *testing.T) {
	t.Helper()
	d.c.t = t
	d.c.expect(d.c.call("Item:fail", map[string]any{"id": d.id, "message": "conformance failure",
		"attempt": d.attempt, "fatal": false}), 204)
}

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

var trackerRun atomic.Int64

// trackerConn is one pipeline's WebSocket, speaking like the reference client: hello first, one
// request in flight, frames with seq null are advisories.
type trackerConn struct {
	c   *websocket.Conn
	seq int64
	buf []byte
}

// trackerReply is a response or advisory frame; the payload is decoded in the same pass (only
// the claimed item's id is read).
type trackerReply struct {
	Status  int    `json:"status"`
	Seq     *int64 `json:"seq"`
	Payload *struct {
		Item *struct {
			ID      string `json:"id"`
			Attempt int    `json:"_current_attempt"`
		} `json:"item"`
	} `json:"payload"`
}

// call sends {"type":typ,"request":req,"seq":n} (req is the request object's JSON) and reads
// frames until the response with that seq; it returns the claimed item's id, if any.
func (t *trackerConn) call(ctx context.Context, typ string, req []byte) (string, error) {
	id, _, err := t.claimCall(ctx, typ, req)
	return id, err
}

// claimCall is call that also returns the claimed item's _current_attempt.
func (t *trackerConn) claimCall(ctx context.Context, typ string, req []byte) (string, int, error) {
	t.seq++
	if dl, ok := ctx.Deadline(); ok {
		_ = t.c.SetReadDeadline(dl)
	}
	t.buf = append(t.buf[:0], `{"type":"`...)
	t.buf = append(t.buf, typ...)
	t.buf = append(t.buf, `","request":`...)
	t.buf = append(t.buf, req...)
	t.buf = append(t.buf, `,"seq":`...)
	t.buf = strconv.AppendInt(t.buf, t.seq, 10)
	t.buf = append(t.buf, '}')
	if err := t.c.WriteMessage(websocket.TextMessage, t.buf); err != nil {
		return "", 0, err
	}
	for {
		_, data, err := t.c.ReadMessage()
		if err != nil {
			return "", 0, err
		}
		var r trackerReply
		if err := json.Unmarshal(data, &r); err != nil {
			return "", 0, err
		}
		if r.Seq == nil {
			continue // advisory
		}
		if *r.Seq != t.seq {
			return "", 0, fmt.Errorf("desync: sent %d, got %s", t.seq, data)
		}
		if r.Status >= 400 {
			return "", 0, fmt.Errorf("%s: %s", typ, data)
		}
		if r.Payload != nil && r.Payload.Item != nil {
			return r.Payload.Item.ID, r.Payload.Item.Attempt, nil
		}
		return "", 0, nil
	}
}

// claimNext claims until an item comes (every 200 µs while the queue is empty) and returns its
// id and _current_attempt.
func (t *trackerConn) claimNext(ctx context.Context, claimReq []byte) (string, int, error) {
	for {
		id, attempt, err := t.claimCall(ctx, "Item:claim", claimReq)
		if err != nil || id != "" {
			return id, attempt, err
		}
		select {
		case <-ctx.Done():
			return "", 0, ctx.Err()
		case <-time.After(200 * time.Microsecond):
		}
	}
}

func trackerAdmin(ctx context.Context, base, path string, in, out any) error {
	b, ok := in.([]byte)
	if !ok {
		b, _ = json.Marshal(in)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := gilmourHTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, data)
	}
	return json.Unmarshal(data, out)
}

// trackerSetup creates one pipeline per worker, connects each over WebSocket (hello first) and
// returns the connections, the admin API base and a fresh pipeline type.
func trackerSetup(ctx context.Context, h *harness) (conns []*trackerConn, base, ptype string, cleanup func(), err error) {
	base = "http://" + h.Addr("admin") + "/api/v1/tracker"
	run := trackerRun.Add(1)
	ptype = fmt.Sprintf("bench%d", run)
	conns = make([]*trackerConn, h.Concurrency)
	cleanup = func() {
		for _, c := range conns {
			if c != nil {
				_ = c.c.Close()
			}
		}
	}
	for w := range conns {
		var p struct{ Name, Secret string }
		if err := trackerAdmin(ctx, base, "/pipelines", map[string]any{"name": fmt.Sprintf("bench-%d-%d", run, w)}, &p); err != nil {
			cleanup()
			return nil, "", "", nil, err
		}
		hdr := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(p.Name+":"+p.Secret))}}
		c, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+h.Addr("tracker")+"/", hdr)
		if err != nil {
			cleanup()
			return nil, "", "", nil, fmt.Errorf("tracker dial: %w", err)
		}
		_ = c.WriteMessage(websocket.TextMessage, []byte(`{"v": "jetbridge-bench"}`))
		conns[w] = &trackerConn{c: c}
	}
	return conns, base, ptype, cleanup, nil
}

// trackerFeeder keeps a pipeline type's backlog between low and low+batch items, queueing them
// in batches through the admin API as a crawl's producer does, until stop.
type trackerFeeder struct {
	queued, claimed atomic.Int64
	low             int64
	need            chan struct{}
	stop            context.CancelFunc
	done            chan error
}

func startTrackerFeeder(base string, item map[string]any, low, batch int) (*trackerFeeder, error) {
	ctx, cancel := context.WithCancel(context.Background())
	f := &trackerFeeder{low: int64(low), need: make(chan struct{}, 1), stop: cancel, done: make(chan error, 1)}
	items := make([]map[string]any, batch)
	for i := range items {
		items[i] = item
	}
	body, _ := json.Marshal(map[string]any{"items": items})
	fill := func() error {
		for f.queued.Load()-f.claimed.Load() < f.low+int64(batch) {
			var q struct{ IDs []string }
			if err := trackerAdmin(ctx, base, "/items", body, &q); err != nil {
				return err
			}
			f.queued.Add(int64(len(q.IDs)))
		}
		return nil
	}
	if err := fill(); err != nil {
		cancel()
		return nil, err
	}
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				f.done <- nil
				return
			case <-f.need:
			case <-t.C:
			}
			if err := fill(); err != nil && ctx.Err() == nil {
				f.done <- err
				return
			}
		}
	}()
	return f, nil
}

// took counts a claimed item and wakes the feeder when the backlog runs low.
func (f *trackerFeeder) took() {
	if f.queued.Load()-f.claimed.Add(1) < f.low {
		select {
		case f.need <- struct{}{}:
		default:
		}
	}
}

// close stops the feeder and returns what stopped it early, if anything did.
func (f *trackerFeeder) close() error {
	f.stop()
	return <-f.done
}

func init() {
	register(&scenario{
		name:     "tracker",
		about:    "tracker: Item:claim → Item:store → Item:finish over WebSocket, one pipeline per worker, claiming from a backlog a producer keeps filled through the admin API",
		baseline: "raw-workqueue",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			conns, base, ptype, closeConns, err := trackerSetup(ctx, h)
			if err != nil {
				return nil, nil, err
			}
			item := map[string]any{"item": "https://example.com/" + string(payloadOf(max(h.Payload-20, 1))), "pipeline_type": ptype, "queued_by": "bench"}
			feeder, err := startTrackerFeeder(base, item, 16*h.Concurrency, 256)
			if err != nil {
				closeConns()
				return nil, nil, err
			}
			cleanup := func() {
				_ = feeder.close()
				closeConns()
			}
			claimReq, _ := json.Marshal(map[string]any{"pipeline_type": ptype})
			return func(ctx context.Context, w int) error {
				c := conns[w]
				id, attempt, err := c.claimNext(ctx, claimReq) // the producer may be behind
				if err != nil {
					return err
				}
				feeder.took()
				storeReq, _ := json.Marshal(map[string]any{"result_type": "status_code", "attempt": attempt, "result": 200, "id": id})
				if _, err := c.call(ctx, "Item:store", storeReq); err != nil {
					return err
				}
				finishReq, _ := json.Marshal(map[string]any{"id": id})
				_, err = c.call(ctx, "Item:finish", finishReq)
				return err
			}, cleanup, nil
		},
	})
	register(&scenario{
		name:     "tracker-floor",
		about:    "tracker floor: three System:ping round trips per op over the same kind of WebSocket connections: the round trips of claim → store → finish with no JetStream work, the ceiling of the tracker scenario",
		baseline: "raw-workqueue",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			conns, _, _, cleanup, err := trackerSetup(ctx, h)
			if err != nil {
				return nil, nil, err
			}
			// a pipeline without open claims: System:ping renews nothing, so nothing reaches NATS
			return func(ctx context.Context, w int) error {
				for range 3 {
					if _, err := conns[w].call(ctx, "System:ping", []byte("null")); err != nil {
						return err
					}
				}
				return nil
			}, cleanup, nil
		},
	})
	register(&scenario{
		name:     "tracker-e2e",
		about:    "tracker end to end: per op one item queued (admin API) → Item:claim → Item:finish over WebSocket, one pipeline per worker",
		baseline: "raw-workqueue",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			conns, base, ptype, cleanup, err := trackerSetup(ctx, h)
			if err != nil {
				return nil, nil, err
			}
			item := map[string]any{"item": "https://example.com/" + string(payloadOf(max(h.Payload-20, 1))), "pipeline_type": ptype, "queued_by": "bench"}
			// pipelines claim from a backlog, as in production: keep 4 items per worker waiting
			backlog := make([]map[string]any, 4*h.Concurrency)
			for i := range backlog {
				backlog[i] = item
			}
			var q struct{ IDs []string }
			if err := trackerAdmin(ctx, base, "/items", map[string]any{"items": backlog}, &q); err != nil {
				cleanup()
				return nil, nil, err
			}
			// the per-op bodies are encoded once (the same bytes every time)
			itemBody, _ := json.Marshal(item)
			claimReq, _ := json.Marshal(map[string]any{"pipeline_type": ptype})
			return func(ctx context.Context, w int) error {
				c := conns[w]
				var q struct{ IDs []string }
				if err := trackerAdmin(ctx, base, "/items", itemBody, &q); err != nil {
					return err
				}
				// another worker may take the item this one queued; one will come
				id, _, err := c.claimNext(ctx, claimReq)
				if err != nil {
					return err
				}
				finishReq, _ := json.Marshal(map[string]any{"id": id})
				_, err = c.call(ctx, "Item:finish", finishReq)
				return err
			}, cleanup, nil
		},
	})
}

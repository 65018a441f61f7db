package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
}

func (t *trackerConn) call(ctx context.Context, typ string, req any) (int, json.RawMessage, error) {
	t.seq++
	b, _ := json.Marshal(req)
	if dl, ok := ctx.Deadline(); ok {
		_ = t.c.SetReadDeadline(dl)
	}
	if err := t.c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"type":%q,"request":%s,"seq":%d}`, typ, b, t.seq))); err != nil {
		return 0, nil, err
	}
	for {
		_, data, err := t.c.ReadMessage()
		if err != nil {
			return 0, nil, err
		}
		var r struct {
			Status  int             `json:"status"`
			Payload json.RawMessage `json:"payload"`
			Seq     *int64          `json:"seq"`
		}
		if err := json.Unmarshal(data, &r); err != nil {
			return 0, nil, err
		}
		if r.Seq == nil {
			continue // advisory
		}
		if *r.Seq != t.seq {
			return 0, nil, fmt.Errorf("desync: sent %d, got %s", t.seq, data)
		}
		if r.Status >= 400 {
			return r.Status, r.Payload, fmt.Errorf("%s: %s", typ, data)
		}
		return r.Status, r.Payload, nil
	}
}

func trackerAdmin(ctx context.Context, base, path string, in, out any) error {
	b, _ := json.Marshal(in)
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

func init() {
	register(&scenario{
		name:     "tracker",
		about:    "tracker: per op one item queued (admin API) → Item:claim → Item:finish over WebSocket, one pipeline per worker",
		baseline: "raw-workqueue",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			base := "http://" + h.Addr("admin") + "/api/v1/tracker"
			run := trackerRun.Add(1)
			ptype := fmt.Sprintf("bench%d", run)
			conns := make([]*trackerConn, h.Concurrency)
			cleanup := func() {
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
					return nil, nil, err
				}
				hdr := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(p.Name+":"+p.Secret))}}
				c, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+h.Addr("tracker")+"/", hdr)
				if err != nil {
					cleanup()
					return nil, nil, fmt.Errorf("tracker dial: %w", err)
				}
				_ = c.WriteMessage(websocket.TextMessage, []byte(`{"v": "jetbridge-bench"}`))
				conns[w] = &trackerConn{c: c}
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
			return func(ctx context.Context, w int) error {
				c := conns[w]
				var q struct{ IDs []string }
				if err := trackerAdmin(ctx, base, "/items", item, &q); err != nil {
					return err
				}
				for {
					_, payload, err := c.call(ctx, "Item:claim", map[string]any{"pipeline_type": ptype})
					if err != nil {
						return err
					}
					var cl struct {
						Item *struct {
							ID string `json:"id"`
						} `json:"item"`
					}
					if err := json.Unmarshal(payload, &cl); err != nil {
						return err
					}
					if cl.Item == nil {
						// another worker took the item this one queued; one will come
						select {
						case <-ctx.Done():
							return ctx.Err()
						case <-time.After(200 * time.Microsecond):
						}
						continue
					}
					_, _, err = c.call(ctx, "Item:finish", map[string]any{"id": cl.Item.ID})
					return err
				}
			}, cleanup, nil
		},
	})
}

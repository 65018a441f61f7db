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
			ID string `json:"id"`
		} `json:"item"`
	} `json:"payload"`
}

// call sends {"type":typ,"request":req,"seq":n} (req is the request object's JSON) and reads
// frames until the response with that seq; it returns the claimed item's id, if any.
func (t *trackerConn) call(ctx context.Context, typ string, req []byte) (string, error) {
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
		return "", err
	}
	for {
		_, data, err := t.c.ReadMessage()
		if err != nil {
			return "", err
		}
		var r trackerReply
		if err := json.Unmarshal(data, &r); err != nil {
			return "", err
		}
		if r.Seq == nil {
			continue // advisory
		}
		if *r.Seq != t.seq {
			return "", fmt.Errorf("desync: sent %d, got %s", t.seq, data)
		}
		if r.Status >= 400 {
			return "", fmt.Errorf("%s: %s", typ, data)
		}
		if r.Payload != nil && r.Payload.Item != nil {
			return r.Payload.Item.ID, nil
		}
		return "", nil
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
			// the per-op bodies are encoded once (the same bytes every time)
			itemBody, _ := json.Marshal(item)
			claimReq, _ := json.Marshal(map[string]any{"pipeline_type": ptype})
			return func(ctx context.Context, w int) error {
				c := conns[w]
				var q struct{ IDs []string }
				if err := trackerAdmin(ctx, base, "/items", itemBody, &q); err != nil {
					return err
				}
				for {
					id, err := c.call(ctx, "Item:claim", claimReq)
					if err != nil {
						return err
					}
					if id == "" {
						// another worker took the item this one queued; one will come
						select {
						case <-ctx.Done():
							return ctx.Err()
						case <-time.After(200 * time.Microsecond):
						}
						continue
					}
					finishReq, _ := json.Marshal(map[string]any{"id": id})
					_, err = c.call(ctx, "Item:finish", finishReq)
					return err
				}
			}, cleanup, nil
		},
	})
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// gilmourNode is an HTTP Gilmour node served in this process (net/http, keep-alive): /health, a
// service at /svc that answers the call it got (like the raw responder, which answers the
// envelope it got, without decoding it), a slot at /slot that counts deliveries.
type gilmourNode struct {
	srv   *http.Server
	port  int
	slots atomic.Int64
}

func startGilmourNode() (*gilmourNode, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	n := &gilmourNode{port: ln.Addr().(*net.TCPAddr).Port}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "OK") })
	mux.HandleFunc("POST /svc", func(w http.ResponseWriter, r *http.Request) {
		call, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(call)
	})
	mux.HandleFunc("POST /slot", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		n.slots.Add(1)
	})
	n.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = n.srv.Serve(ln) }()
	return n, nil
}

var gilmourHTTP = &http.Client{Timeout: 30 * time.Second,
	Transport: &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512}}

func gilmourPost(ctx context.Context, url string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := gilmourHTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// gilmourSetup starts a node, registers it through the pod with the given subscriptions and
// returns the proxy's base URL and the node id.
func gilmourSetup(ctx context.Context, h *harness, subs string) (*gilmourNode, string, string, func(), error) {
	n, err := startGilmourNode()
	if err != nil {
		return nil, "", "", nil, err
	}
	base := "http://" + h.Addr("gilmour")
	code, body, err := gilmourPost(ctx, base+"/nodes", []byte(`{"port":`+strconv.Itoa(n.port)+`,`+subs+`}`))
	if err != nil || code != 200 {
		_ = n.srv.Close()
		return nil, "", "", nil, fmt.Errorf("register node: %d %s %v", code, body, err)
	}
	var cr struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &cr); err != nil {
		_ = n.srv.Close()
		return nil, "", "", nil, err
	}
	cleanup := func() {
		req, _ := http.NewRequest(http.MethodDelete, base+"/nodes/"+cr.ID, nil)
		if resp, err := gilmourHTTP.Do(req); err == nil {
			resp.Body.Close()
		}
		_ = n.srv.Close()
	}
	return n, base, cr.ID, cleanup, nil
}

var rawReqSeq atomic.Int64

func init() {
	register(&scenario{
		name:     "gilmour-request",
		about:    "Gilmour: HTTP POST /request → proxy → service node over HTTP → reply",
		baseline: "raw-nats-request",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			_, base, id, cleanup, err := gilmourSetup(ctx, h, `"services":[{"topic":"bench.echo","group":"bench","path":"/svc","timeout":10}]`)
			if err != nil {
				return nil, nil, err
			}
			msg, _ := json.Marshal(string(payloadOf(h.Payload)))
			req := []byte(`{"topic":"bench.echo","message":` + string(msg) + `,"timeout":10}`)
			url := base + "/request/" + id
			// subscriptions are set up asynchronously after registration
			deadline := time.Now().Add(10 * time.Second)
			for {
				code, body, err := gilmourPost(ctx, url, req)
				if err == nil && code == 200 {
					break
				}
				if time.Now().After(deadline) {
					cleanup()
					return nil, nil, fmt.Errorf("service not reachable: %d %s %v", code, body, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			return func(ctx context.Context, _ int) error {
				code, body, err := gilmourPost(ctx, url, req)
				if err != nil {
					return err
				}
				if code != 200 {
					return fmt.Errorf("request: %d %s", code, body)
				}
				return nil
			}, cleanup, nil
		},
	})
	register(&scenario{
		name:  "raw-nats-request",
		about: "raw NATS request-reply: a NATS requester and a queue-subscribed NATS responder (Gilmour envelope)",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			subj := fmt.Sprintf("bench.rawreq%d", rawReqSeq.Add(1))
			msg, _ := json.Marshal(string(payloadOf(h.Payload)))
			env := []byte(`{"data":` + string(msg) + `,"code":200,"sender":"bench"}`)
			sub, err := h.JS.Subscribe(subj, "bench", func(m *jetstream.Msg) { _ = m.Respond(m.Data, nil) })
			if err != nil {
				return nil, nil, err
			}
			fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := h.JS.Flush(fctx); err != nil {
				_ = sub.Unsubscribe()
				return nil, nil, err
			}
			return func(ctx context.Context, _ int) error {
				_, err := h.JS.Request(ctx, subj, env, nil)
				return err
			}, func() { _ = sub.Unsubscribe() }, nil
		},
	})
	register(&scenario{
		name:     "gilmour-signal",
		about:    "Gilmour: HTTP POST /signal stored in JetStream (answered after the ack), delivered to a slot node over HTTP",
		baseline: "raw-publish",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			n, base, id, cleanup, err := gilmourSetup(ctx, h, `"slots":[{"topic":"bench.sig.*","group":"bench","path":"/slot"}]`)
			if err != nil {
				return nil, nil, err
			}
			msg, _ := json.Marshal(string(payloadOf(h.Payload)))
			req := []byte(`{"topic":"bench.sig.x","message":` + string(msg) + `}`)
			url := base + "/signal/" + id
			var sent atomic.Int64
			op := func(ctx context.Context, _ int) error {
				code, body, err := gilmourPost(ctx, url, req)
				if err != nil {
					return err
				}
				if code != 200 {
					return fmt.Errorf("signal: %d %s", code, body)
				}
				sent.Add(1)
				return nil
			}
			// cleanup waits (bounded) until the node got every signal, so a run that stores
			// signals faster than it delivers them shows up as a setup error next time
			return op, func() {
				deadline := time.Now().Add(30 * time.Second)
				for n.slots.Load() < sent.Load() && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if n.slots.Load() < sent.Load() {
					fmt.Fprintf(os.Stderr, "gilmour-signal: %d of %d signals delivered within 30s of the end\n", n.slots.Load(), sent.Load())
				}
				cleanup()
			}, nil
		},
	})
}

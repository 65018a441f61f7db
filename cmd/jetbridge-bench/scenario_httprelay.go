package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// The http-relay scenario is the ceiling of any HTTP-to-HTTP proxy on this machine: the same
// client and service node as gilmour-request, with a plain net/http relay in between that
// forwards the body to the node and its answer back, and no NATS at all. gilmour-request divided
// by http-relay is what the proxy's own work (NATS request-reply, registry, envelopes) costs;
// http-relay divided by raw-nats-request is what the two HTTP hops cost.
func init() {
	register(&scenario{
		name:     "http-relay",
		about:    "ceiling for an HTTP proxy: HTTP POST → plain net/http relay → HTTP service node → reply (no NATS)",
		baseline: "raw-nats-request",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			n, err := startGilmourNode()
			if err != nil {
				return nil, nil, err
			}
			nodeURL := fmt.Sprintf("http://127.0.0.1:%d/svc", n.port)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				_ = n.srv.Close()
				return nil, nil, err
			}
			relay := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, err := io.ReadAll(r.Body)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				code, out, err := gilmourPost(r.Context(), nodeURL, body)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadGateway)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				_, _ = w.Write(out)
			})}
			go func() { _ = relay.Serve(ln) }()
			msg, _ := json.Marshal(string(payloadOf(h.Payload)))
			req := []byte(`{"topic":"bench.echo","message":` + string(msg) + `,"timeout":10}`)
			url := "http://" + ln.Addr().String() + "/request"
			return func(ctx context.Context, _ int) error {
					code, body, err := gilmourPost(ctx, url, req)
					if err != nil {
						return err
					}
					if code != 200 || !bytes.Equal(body, req) {
						return fmt.Errorf("relay: %d %s", code, body)
					}
					return nil
				}, func() {
					_ = relay.Close()
					_ = n.srv.Close()
				}, nil
		},
	})
}

package gilmour

// nodeclient.go: the proxy's HTTP calls to nodes (the "Port Protocol": health ping, service and
// slot handlers, lambda steps).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// maxNodeAnswer bounds what the proxy reads from a node.
const maxNodeAnswer = 64 << 20

type nodeClient struct {
	hc   *http.Client
	pool *connPool // handler and lambda calls to http:// URLs (anything else: hc)
}

// health outcomes.
const (
	healthOK          = "ok"
	healthFailed      = "failed"      // answered non-2xx, or timed out
	healthUnreachable = "unreachable" // port could not be reached
)

// ping calls GET health_check; any 2xx is healthy.
func (n *nodeClient) ping(ctx context.Context, r nodeRecord) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.baseURL()+r.HealthCheck, nil)
	if err != nil {
		return healthUnreachable, err
	}
	resp, err := n.hc.Do(req)
	if err != nil {
		if isDialError(err) {
			return healthUnreachable, err
		}
		return healthFailed, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return healthFailed, fmt.Errorf("health check %s answered %d", r.HealthCheck, resp.StatusCode)
	}
	return healthOK, nil
}

// post sends body to the node's path and returns the status and the answer.
func (n *nodeClient) post(ctx context.Context, r nodeRecord, path string, body any) (int, []byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, nil, err
	}
	return n.postRaw(ctx, parsedEndpoint(r, path), b)
}

// endpoint is a node's handler URL; u is set when it was parsed ahead (once per subscription).
type endpoint struct {
	raw, path string
	u         *url.URL
	uri       string // u's request URI
}

// parsedEndpoint parses the handler URL once, as http.NewRequest would for every call.
func parsedEndpoint(r nodeRecord, path string) endpoint {
	ep := endpoint{raw: r.baseURL() + path, path: path}
	if u, err := url.Parse(ep.raw); err == nil && !strings.HasSuffix(u.Host, ":") {
		ep.u, ep.uri = u, u.RequestURI()
	}
	return ep
}

var contentTypeJSON = []string{"application/json"}

// postRaw sends the JSON body b to the node's handler.
func (n *nodeClient) postRaw(ctx context.Context, ep endpoint, b []byte) (int, []byte, error) {
	if ep.u != nil && ep.u.Scheme == "http" && ep.u.User == nil {
		status, data, err := n.pool.post(ctx, ep.u.Host, ep.uri, b)
		if err != nil {
			return status, data, fmt.Errorf("POST %s: %w", ep.path, err)
		}
		return status, data, nil
	}
	target := ep.raw
	if ep.u != nil {
		target = ""
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	if ep.u != nil {
		u := *ep.u
		req.URL, req.Host = &u, u.Host
	}
	req.Header["Content-Type"] = contentTypeJSON
	resp, err := n.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxNodeAnswer))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read answer of %s: %w", ep.path, err)
	}
	return resp.StatusCode, data, nil
}

// call runs a service handler: its body is returned unmodified as data. A handler that does not
// answer within its timeout gets its connection closed and gives 504; non-2xx or a failed call
// gives 500.
func (n *nodeClient) call(ctx context.Context, ep endpoint, hcall HandlerCall) Message {
	b, err := encodeHandlerCall(hcall)
	var status int
	var body []byte
	if err == nil {
		status, body, err = n.postRaw(ctx, ep, b)
	}
	switch {
	case err != nil && (errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)):
		return Message{Data: StringData("Execution timed out"), Code: 504}
	case err != nil:
		return Message{Data: StringData(err.Error()), Code: 500}
	case status/100 != 2:
		return Message{Data: RawData(body), Code: 500}
	}
	return Message{Data: RawData(body), Code: 200}
}

// isDialError reports a node whose port could not be reached at all.
func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

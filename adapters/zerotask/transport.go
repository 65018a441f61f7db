package zerotask

import (
	"context"
	"fmt"
	"net"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
)

// serveRouter and servePub put the ZMTP sockets on the listeners the pod bound (they own them
// from then on).
func serveRouter(ctx context.Context, ln net.Listener, opts zmtp.Options) (*zmtp.Router, error) {
	r, err := zmtp.Serve(ctx, ln, opts)
	if err != nil {
		return nil, fmt.Errorf("zerotask router on %s: %w", ln.Addr(), err)
	}
	return r, nil
}

func servePub(ctx context.Context, ln net.Listener, opts zmtp.Options) (*zmtp.Pub, error) {
	p, err := zmtp.ServePub(ctx, ln, opts)
	if err != nil {
		return nil, fmt.Errorf("zerotask pub on %s: %w", ln.Addr(), err)
	}
	return p, nil
}

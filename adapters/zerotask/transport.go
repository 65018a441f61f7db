package zerotask

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
)

// serveRouter and servePub put the ZMTP sockets on the listeners the pod bound.
//
// TODO(zmtp.Serve): the zmtp package does not take a bound net.Listener yet; until it does, the
// listener is closed and its address bound again by zmtp.Listen (retried briefly should another
// process grab the port in between).
func serveRouter(ctx context.Context, ln net.Listener, opts zmtp.Options) (*zmtp.Router, error) {
	addr := ln.Addr().String()
	_ = ln.Close()
	var err error
	for i := 0; i < 20; i++ {
		var r *zmtp.Router
		if r, err = zmtp.Listen(ctx, addr, opts); err == nil {
			return r, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, fmt.Errorf("zerotask router on %s: %w", addr, err)
}

func servePub(ctx context.Context, ln net.Listener, opts zmtp.Options) (*zmtp.Pub, error) {
	addr := ln.Addr().String()
	_ = ln.Close()
	var err error
	for i := 0; i < 20; i++ {
		var p *zmtp.Pub
		if p, err = zmtp.ListenPub(ctx, addr, opts); err == nil {
			return p, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, fmt.Errorf("zerotask pub on %s: %w", addr, err)
}

package eventmq

import (
	"context"
	"net"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
)

// serveRouter and servePub run the zmtp sockets on the listeners the pod bound.
//
// TODO(zmtp.Serve): the zmtp package does not take a bound net.Listener yet; until it does, the
// listener is closed and its address bound again by zmtp.Listen.
func serveRouter(ctx context.Context, ln net.Listener, o zmtp.Options) (*zmtp.Router, error) {
	addr := ln.Addr().String()
	_ = ln.Close()
	return zmtp.Listen(ctx, addr, o)
}

func servePub(ctx context.Context, ln net.Listener, o zmtp.Options) (*zmtp.Pub, error) {
	addr := ln.Addr().String()
	_ = ln.Close()
	return zmtp.ListenPub(ctx, addr, o)
}

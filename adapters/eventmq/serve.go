package eventmq

import (
	"context"
	"net"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
)

// serveRouter and servePub run the zmtp sockets on the listeners the pod bound.
func serveRouter(ctx context.Context, ln net.Listener, o zmtp.Options) (*zmtp.Router, error) {
	return zmtp.Serve(ctx, ln, o)
}

func servePub(ctx context.Context, ln net.Listener, o zmtp.Options) (*zmtp.Pub, error) {
	return zmtp.ServePub(ctx, ln, o)
}

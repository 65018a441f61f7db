package zmtp

import (
	"context"
	"errors"
	"net"
)

// Serve starts a ROUTER on a listener that is already bound (the pod binds every listener
// itself so that start-up reports bind errors and real addresses). The Router owns ln from now
// on and closes it on Close or when ctx is done.
func Serve(ctx context.Context, ln net.Listener, opts Options) (*Router, error) {
	if ln == nil {
		return nil, errors.New("zmtp serve: nil listener")
	}
	o, err := opts.withDefaults(ln.Addr().String())
	if err != nil {
		return nil, err
	}
	r := &Router{peers: map[string]*peer{}, in: make(chan Message, o.RecvHWM)}
	r.l = wrapListener(ln, o, r)
	r.l.start(ctx)
	return r, nil
}

// ServePub starts a PUB socket on a listener that is already bound; see Serve.
func ServePub(ctx context.Context, ln net.Listener, opts Options) (*Pub, error) {
	if ln == nil {
		return nil, errors.New("zmtp serve pub: nil listener")
	}
	o, err := opts.withDefaults(ln.Addr().String())
	if err != nil {
		return nil, err
	}
	p := &Pub{peers: map[string]*peer{}}
	p.l = wrapListener(ln, o, p)
	p.l.start(ctx)
	return p, nil
}

package zmtp_test

import (
	"context"
	"errors"
	"log"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
)

// A REP-style service on a ROUTER: REQ clients send ["", request] and get
// [reply] back; DEALER clients get their envelope back as they sent it.
func ExampleListen() {
	ctx := context.Background()
	r, err := zmtp.Listen(ctx, "tcp://*:5555", zmtp.Options{Name: "zerotask"})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	go func() {
		for ev := range r.Events() { // closed by Close
			log.Printf("%s %x (%s)", ev.Kind, ev.Peer, ev.SocketType)
		}
	}()
	for {
		req, err := r.Recv(ctx)
		if err != nil {
			return // zmtp.ErrClosed or ctx done
		}
		body := req.Body() // frames after the empty delimiter
		if err := r.Reply(ctx, req, body...); err != nil && !errors.Is(err, zmtp.ErrUnknownPeer) {
			log.Print(err) // e.g. ErrWouldBlock: the peer is not reading
		}
	}
}

// A PUB socket: subscribers filter on the first frame.
func ExampleListenPub() {
	p, err := zmtp.ListenPub(context.Background(), "tcp://*:5556", zmtp.Options{Name: "zerotask-pub"})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Publish([]byte(`{"jsonrpc":"2.0","method":"zerotask.node.task_ready"}`)); err != nil {
		log.Print(err)
	}
}

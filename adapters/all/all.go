// Package all lists every protocol adapter, for the binaries.
package all

import (
	"github.com/jetbridge/jetbridge/adapters/gilmour"
	"github.com/jetbridge/jetbridge/adapters/sink"
	"github.com/jetbridge/jetbridge/adapters/tracker"
	"github.com/jetbridge/jetbridge/bridge"
)

// Adapters returns a fresh instance of every protocol adapter, in start-up order.
func Adapters() []bridge.Adapter {
	return []bridge.Adapter{
		tracker.New(),
		gilmour.New(),
		sink.New(),
		placeholder("zerotask",
			bridge.ListenerSpec{Name: "zerotask", Flag: "zerotask-listen", Default: ":5555", Usage: "ZeroTask ROUTER listener"},
			bridge.ListenerSpec{Name: "zerotask-pub", Flag: "zerotask-pub-listen", Default: ":5556", Usage: "ZeroTask PUB listener"}),
		placeholder("eventmq",
			bridge.ListenerSpec{Name: "eventmq-frontend", Flag: "eventmq-frontend", Default: ":47291", Usage: "EventMQ frontend (clients) ROUTER listener"},
			bridge.ListenerSpec{Name: "eventmq-backend", Flag: "eventmq-backend", Default: ":47290", Usage: "EventMQ backend (workers) ROUTER listener"},
			bridge.ListenerSpec{Name: "eventmq-admin", Flag: "eventmq-admin", Default: ":47293", Usage: "EventMQ admin ROUTER listener"},
			bridge.ListenerSpec{Name: "eventmq-pub-in", Flag: "eventmq-pub-in", Default: ":47298", Usage: "EventMQ publisher input listener"},
			bridge.ListenerSpec{Name: "eventmq-pub-out", Flag: "eventmq-pub-out", Default: ":47299", Usage: "EventMQ publisher output (PUB) listener"}),
	}
}

// Package all lists every protocol adapter, for the binaries.
package all

import (
	"github.com/jetbridge/jetbridge/adapters/eventmq"
	"github.com/jetbridge/jetbridge/adapters/gilmour"
	"github.com/jetbridge/jetbridge/adapters/sink"
	"github.com/jetbridge/jetbridge/adapters/tracker"
	"github.com/jetbridge/jetbridge/adapters/zerotask"
	"github.com/jetbridge/jetbridge/bridge"
)

// Adapters returns a fresh instance of every protocol adapter, in start-up order.
func Adapters() []bridge.Adapter {
	return []bridge.Adapter{
		tracker.New(),
		gilmour.New(),
		sink.New(),
		zerotask.New(),
		eventmq.New(),
	}
}

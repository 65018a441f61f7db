// Package bridge is the jetbridge pod: process lifecycle, listeners, the admin HTTP server
// (health, readiness, metrics, admin API, dashboard), configuration, and the one small interface
// every protocol adapter plugs into.
package bridge

import (
	"context"
	"log/slog"
	"net"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/jetstream"
)

// ListenerSpec declares one listener of an adapter. The pod binds it before the adapter starts,
// prints a startup line with its real address, and hands the net.Listener over in Env.Listeners.
type ListenerSpec struct {
	// Name identifies the listener in Env.Listeners, startup lines and /api/v1/status
	// (e.g. "tracker", "zerotask-pub").
	Name string
	// Flag is the command-line flag ("tracker-listen"); its env variable is JETBRIDGE_TRACKER_LISTEN.
	Flag string
	// Default is the default address (":8897"); the value "off" disables the listener.
	Default string
	// Usage is the flag's help text.
	Usage string
}

// Adapter is one protocol. The pod calls, in order: Flags (before parsing the command line),
// Assets (provisioned before Start), Start, then on shutdown Drain and Stop.
type Adapter interface {
	// Name is the protocol's short name ("tracker"), used as the metrics label.
	Name() string
	// Listeners declares the adapter's listeners.
	Listeners() []ListenerSpec
	// Flags registers the adapter's own flags (e.g. "tracker-info-url").
	Flags(fs *pflag.FlagSet)
	// Assets declares the streams, consumers and KV buckets the adapter needs.
	Assets(n jetstream.Names) jetstream.Assets
	// Start begins serving. It must not block: goroutines it starts are owned by the adapter and
	// stopped by Drain/Stop. A listener that is "off" is absent from env.Listeners.
	Start(ctx context.Context, env *Env) error
	// Drain stops accepting new work and lets in-flight commands finish until ctx ends.
	Drain(ctx context.Context) error
	// Stop closes every connection and releases everything; it is called once after Drain.
	Stop() error
}

// Env is what the pod gives an adapter at Start.
type Env struct {
	// JS is the pod's NATS/JetStream client (the only way to talk to NATS).
	JS *jetstream.Client
	// Log is the adapter's logger (with the "protocol" attribute set).
	Log *slog.Logger
	// Metrics holds the metric families every adapter shares (label protocol = adapter name).
	Metrics *Metrics
	// Registry is where an adapter registers its own extra metrics (names prefixed jetbridge_).
	Registry prometheus.Registerer
	// Admin is the admin API group mounted at /api/v1 (auth already applied).
	Admin *echo.Group
	// Listeners are the bound listeners by ListenerSpec.Name.
	Listeners map[string]net.Listener
	// DataDir is the pod's data folder (for generated development certificates and the like).
	DataDir string
	// PodID identifies this pod uniquely among all pods sharing the NATS account (stable for the
	// life of the process).
	PodID string
	// MaxMessage is the pod-wide default maximum message size in bytes (--max-message).
	MaxMessage int
	// ZMQMaxMessage is the maximum ZeroMQ message size in bytes (--zmq-max-message, default 1 MiB).
	ZMQMaxMessage int
}

package jetstream

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures the in-process nats-server.
type EmbeddedConfig struct {
	// StoreDir is the JetStream file store folder.
	StoreDir string
	// Listen is the client listener "host:port"; "" or "off" means no TCP listener at all
	// (the pod then connects in-process).
	Listen string
	// MonitorListen is the HTTP monitoring listener "host:port"; "" or "off" disables it.
	MonitorListen string
	// SyncAlways makes the file store fsync every write (durability "strict").
	SyncAlways bool
	// ServerName names the server; required and unique inside a cluster.
	ServerName string
	// ClusterName, ClusterListen and Routes make the server a member of a NATS cluster.
	ClusterName   string
	ClusterListen string
	Routes        []string
	// MaxPayload overrides the server's max_payload (bytes) when > 0.
	MaxPayload int32
}

// Embedded is a running in-process nats-server.
type Embedded struct {
	ns *server.Server
}

// off reports whether a listen value disables a listener.
func off(v string) bool { return v == "" || v == "off" }

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	if port == 0 {
		port = -1 // nats-server's "pick a random port"
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// StartEmbedded starts a JetStream-enabled nats-server in this process and waits until it accepts
// connections.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("embedded nats: store dir is required")
	}
	opts := &server.Options{
		ServerName:             cfg.ServerName,
		JetStream:              true,
		StoreDir:               cfg.StoreDir,
		NoLog:                  true,
		NoSigs:                 true,
		DisableJetStreamBanner: true,
		SyncAlways:             cfg.SyncAlways,
	}
	if cfg.MaxPayload > 0 {
		opts.MaxPayload = cfg.MaxPayload
	}
	if off(cfg.Listen) {
		opts.DontListen = true
	} else {
		host, port, err := splitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: client listen %q: %w", cfg.Listen, err)
		}
		opts.Host, opts.Port = host, port
	}
	if !off(cfg.MonitorListen) {
		host, port, err := splitHostPort(cfg.MonitorListen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: monitor listen %q: %w", cfg.MonitorListen, err)
		}
		opts.HTTPHost, opts.HTTPPort = host, port
	}
	if cfg.ClusterName != "" {
		host, port, err := splitHostPort(cfg.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: cluster listen %q: %w", cfg.ClusterListen, err)
		}
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: host, Port: port}
		for _, r := range cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("embedded nats: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go ns.Start() // Start is non-blocking apart from listener setup; ReadyForConnections waits.
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready within 30s (is %s or the monitor port in use?)", cfg.Listen)
	}
	return &Embedded{ns: ns}, nil
}

// Server exposes the underlying server (tests and in-process connections).
func (e *Embedded) Server() *server.Server { return e.ns }

// ClientURL is the nats:// URL of the client listener, or "" without one.
func (e *Embedded) ClientURL() string {
	if e.ns.Addr() == nil {
		return ""
	}
	return e.ns.ClientURL()
}

// ClientAddr is the client listener's address, or "" without one.
func (e *Embedded) ClientAddr() string {
	if a := e.ns.Addr(); a != nil {
		return a.String()
	}
	return ""
}

// MonitorAddr is the monitoring listener's address, or "".
func (e *Embedded) MonitorAddr() string {
	if a := e.ns.MonitorAddr(); a != nil {
		return a.String()
	}
	return ""
}

// ClusterAddr is the route listener's address, or "".
func (e *Embedded) ClusterAddr() string {
	if a := e.ns.ClusterAddr(); a != nil {
		return a.String()
	}
	return ""
}

// Shutdown stops the server and waits for it to finish flushing its stores.
func (e *Embedded) Shutdown() {
	e.ns.Shutdown()
	e.ns.WaitForShutdown()
}

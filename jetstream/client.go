package jetstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header is a NATS message header (a map of canonical names to values).
type Header = nats.Header

// ConnConfig says how a pod reaches NATS: in-process (Embedded set) or over the network (URLs).
type ConnConfig struct {
	// Embedded, when set, is used through an in-process connection (no TCP).
	Embedded *Embedded
	// URLs is the comma-separated list of servers of an external cluster.
	URLs string
	// Authentication for external servers (all optional).
	CredsFile string
	NkeyFile  string
	User      string
	Password  string
	// TLS for external servers (all optional).
	TLSCA   string
	TLSCert string
	TLSKey  string
	// Name is the connection name shown by NATS monitoring.
	Name string
	// Prefix is the subject prefix (see Names).
	Prefix string
	// Replicas applies to every stream and bucket this pod provisions (default 1).
	Replicas int
	// Logger receives connection state changes.
	Logger *slog.Logger
	// OnStateChange is called with every connection state change (metrics hook).
	OnStateChange func(State)
}

// State is the connection's state as /readyz and metrics see it.
type State struct {
	Connected  bool
	Reconnects uint64
	Server     string // URL of the server currently connected to
	LastError  string
}

// Client is the pod's single handle on NATS and JetStream. It is safe for concurrent use.
type Client struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	names    Names
	replicas int
	log      *slog.Logger
	embedded bool

	conn       atomic.Pointer[nats.Conn] // for State from connection callbacks (which may run before Connect returns)
	reconnects atomic.Uint64
	lastErr    atomic.Value // string
	onState    func(State)

	kvMu sync.Mutex
	kvs  map[string]jetstream.KeyValue

	// streams caches bound stream handles by logical name: binding one is itself a STREAM.INFO
	// round trip, so hot paths would otherwise pay two.
	streams sync.Map // string → jetstream.Stream
}

// stream returns the (cached) handle of a logical stream.
func (c *Client) stream(ctx context.Context, stream string) (jetstream.Stream, error) {
	if s, ok := c.streams.Load(stream); ok {
		return s.(jetstream.Stream), nil
	}
	s, err := c.js.Stream(ctx, c.names.Asset(stream))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	c.streams.Store(stream, s)
	return s, nil
}

// forget drops a cached handle when the stream is gone (it may be recreated).
func (c *Client) forget(stream string, err error) {
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		c.streams.Delete(stream)
	}
}

// Connect dials NATS. Against external servers it retries forever with backoff, both on the first
// connection and after a disconnect, so a pod outlives a NATS outage.
func Connect(ctx context.Context, cfg ConnConfig) (*Client, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Client{names: NewNames(cfg.Prefix), replicas: max(cfg.Replicas, 1), log: log, onState: cfg.OnStateChange,
		kvs: map[string]jetstream.KeyValue{}}
	c.lastErr.Store("")
	name := cfg.Name
	if name == "" {
		name = "jetbridge"
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.CustomReconnectDelay(func(attempts int) time.Duration {
			d := time.Duration(min(attempts, 20)) * 250 * time.Millisecond
			return min(d, 5*time.Second)
		}),
		nats.ReconnectBufSize(8 << 20),
		nats.RetryOnFailedConnect(true),
		nats.ConnectHandler(func(nc *nats.Conn) { c.conn.Store(nc); c.notify("connected") }),
		nats.ReconnectHandler(func(nc *nats.Conn) { c.conn.Store(nc); c.reconnects.Add(1); c.notify("reconnected") }),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			c.conn.Store(nc)
			if err != nil {
				c.lastErr.Store(err.Error())
			}
			c.notify("disconnected")
		}),
		nats.ClosedHandler(func(nc *nats.Conn) { c.conn.Store(nc); c.notify("closed") }),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Warn("nats async error", "subject", subj, "err", err)
		}),
	}
	url := cfg.URLs
	if cfg.Embedded != nil {
		c.embedded = true
		opts = append(opts, nats.InProcessServer(cfg.Embedded.ns))
		url = ""
	} else {
		if url == "" {
			return nil, errors.New("nats: no URL and no embedded server")
		}
		if cfg.CredsFile != "" {
			opts = append(opts, nats.UserCredentials(cfg.CredsFile))
		}
		if cfg.NkeyFile != "" {
			o, err := nats.NkeyOptionFromSeed(cfg.NkeyFile)
			if err != nil {
				return nil, fmt.Errorf("nats nkey %s: %w", cfg.NkeyFile, err)
			}
			opts = append(opts, o)
		}
		if cfg.User != "" {
			opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
		}
		if cfg.TLSCA != "" {
			opts = append(opts, nats.RootCAs(cfg.TLSCA))
		}
		if cfg.TLSCert != "" {
			opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
		}
		if cfg.TLSCA != "" || cfg.TLSCert != "" {
			opts = append(opts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12}))
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect %s: %w", redactURLs(url), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c.nc, c.js = nc, js
	c.conn.Store(nc)
	return c, nil
}

// redactURLs drops user info from URLs before they are logged.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			if s := strings.Index(p, "://"); s >= 0 && s < at {
				parts[i] = p[:s+3] + "***@" + p[at+1:]
			}
		}
	}
	return strings.Join(parts, ",")
}

func (c *Client) notify(what string) {
	st := c.State()
	c.log.Info("nats "+what, "server", st.Server, "reconnects", st.Reconnects)
	if c.onState != nil {
		c.onState(st)
	}
}

// State reports the connection's current state.
func (c *Client) State() State {
	st := State{Reconnects: c.reconnects.Load(), LastError: c.lastErr.Load().(string)}
	if nc := c.conn.Load(); nc != nil {
		st.Connected = nc.IsConnected()
		st.Server = nc.ConnectedUrlRedacted()
	}
	if c.embedded && st.Connected {
		st.Server = "in-process"
	}
	return st
}

// Names is the pod's name mapping.
func (c *Client) Names() Names { return c.names }

// Subject builds a full subject from parts, with the prefix.
func (c *Client) Subject(parts ...string) string { return c.names.Subject(parts...) }

// Replicas is the replication factor used for provisioned assets.
func (c *Client) Replicas() int { return c.replicas }

// Ping checks that JetStream answers (used by /readyz).
func (c *Client) Ping(ctx context.Context) error {
	if !c.nc.IsConnected() {
		return errors.New("nats not connected")
	}
	if _, err := c.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("jetstream account info: %w", err)
	}
	return nil
}

// Flush waits until the server has processed everything sent so far.
func (c *Client) Flush(ctx context.Context) error { return c.nc.FlushWithContext(ctx) }

// Drain flushes pending publishes and closes the connection once subscriptions are drained.
func (c *Client) Drain(timeout time.Duration) {
	if c.nc == nil || c.nc.IsClosed() {
		return
	}
	done := make(chan struct{})
	c.nc.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := c.nc.Drain(); err != nil {
		c.nc.Close()
		return
	}
	select {
	case <-done:
	case <-time.After(timeout):
		c.nc.Close()
	}
}

// Close closes the connection immediately.
func (c *Client) Close() {
	if c.nc != nil {
		c.nc.Close()
	}
}

package sink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

// Config is the adapter's configuration (from its flags).
type Config struct {
	TLSCert, TLSKey, ClientCA string
	ClientIDFromCN            bool
	Keepalive                 time.Duration
	HandshakeTimeout          time.Duration
	MaxInflight               int
	MaxConnections            int
	OutMaxPending             int
	OutAckWait                time.Duration
	DedupeWindow              time.Duration
	InMaxAge                  time.Duration
	FreshnessFlush            time.Duration
}

// Adapter serves the Sink protocol.
type Adapter struct {
	cfg Config

	env      *bridge.Env
	log      *slog.Logger
	reg      registry
	tlsCfg   *tls.Config
	ln       net.Listener
	serverID uint32
	m        *metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loop, watcher, flusher
	connWG sync.WaitGroup // one per connection

	mu        sync.Mutex
	conns     map[*session]struct{}
	byClient  map[string]*session
	lastOwner map[string]ownerSeen
	fresh     map[freshID]freshEntry
	draining  bool

	connSeq atomic.Uint64
	devID   string
}

type ownerSeen struct {
	rev  uint64
	conn string
}

// freshID is (client, event type): a struct key, so that noting an event allocates nothing.
type freshID struct {
	client string
	typ    uint64
}

type freshEntry struct {
	client string
	typ    uint64
	ts     uint64
}

// New returns the Sink adapter; its configuration comes from the flags it registers.
func New() *Adapter {
	return &Adapter{conns: map[*session]struct{}{}, byClient: map[string]*session{}, lastOwner: map[string]ownerSeen{},
		fresh: map[freshID]freshEntry{}}
}

// Name is the protocol name.
func (a *Adapter) Name() string { return "sink" }

// Listeners declares the TLS listener.
func (a *Adapter) Listeners() []bridge.ListenerSpec {
	return []bridge.ListenerSpec{{Name: "sink", Flag: "sink-listen", Default: ":2020",
		Usage: "Sink protocol listener (TLS with client certificates)"}}
}

// Flags registers the adapter's flags.
func (a *Adapter) Flags(fs *pflag.FlagSet) {
	fs.StringVar(&a.cfg.TLSCert, "sink-tls-cert", "", "Sink server certificate (PEM); empty: generated development PKI under <data>/sink-dev")
	fs.StringVar(&a.cfg.TLSKey, "sink-tls-key", "", "Sink server key (PEM)")
	fs.StringVar(&a.cfg.ClientCA, "sink-client-ca", "", "CA (PEM) that client certificates must chain to; empty: any certificate, the fingerprint registry decides")
	fs.BoolVar(&a.cfg.ClientIDFromCN, "sink-client-id-from-cn", false, "take the client id from the certificate CN when its fingerprint is not registered (needs --sink-client-ca)")
	fs.DurationVar(&a.cfg.Keepalive, "sink-keepalive", 60*time.Second, "keepalive interval; a connection silent for 1.5x this is dropped")
	fs.DurationVar(&a.cfg.HandshakeTimeout, "sink-handshake-timeout", 10*time.Second, "TLS handshake timeout")
	fs.IntVar(&a.cfg.MaxInflight, "sink-max-inflight", 256, "inbound PUBLISH frames being written to JetStream at once per connection")
	fs.IntVar(&a.cfg.MaxConnections, "sink-max-connections", 10000, "open Sink connections per pod")
	fs.IntVar(&a.cfg.OutMaxPending, "sink-out-max-pending", 1024, "outbound events held per client (queued behind their key or in flight), at most 4000")
	fs.DurationVar(&a.cfg.OutAckWait, "sink-out-ack-wait", time.Minute, "lease of an outbound event held by a pod (renewed while the pod lives)")
	fs.DurationVar(&a.cfg.DedupeWindow, "sink-dedupe-window", time.Hour, "window in which a re-sent inbound event (same client, type, key, offset) is recognised")
	fs.DurationVar(&a.cfg.InMaxAge, "sink-in-max-age", 0, "how long inbound events are kept in SINK_IN (0: forever)")
	fs.DurationVar(&a.cfg.FreshnessFlush, "sink-freshness-flush", time.Second, "how often freshness (latest timestamp per client and event type) is written to KV")
}

// Assets declares streams and buckets.
func (a *Adapter) Assets(n jetstream.Names) jetstream.Assets {
	dd := a.cfg.DedupeWindow
	if dd <= 0 {
		dd = time.Hour
	}
	if a.cfg.InMaxAge > 0 && dd > a.cfg.InMaxAge {
		dd = a.cfg.InMaxAge
	}
	return jetstream.Assets{
		Streams: []jetstream.StreamSpec{
			{Name: StreamIn, Description: "Sink events received from devices (payload event_data, fields in Sink-* headers)",
				Subjects: []string{n.Subject("sink", "in", ">")}, MaxAge: a.cfg.InMaxAge, Duplicates: dd, MaxMsgSize: MaxFrame},
			{Name: StreamOut, Description: "Sink events waiting for delivery to a device (one durable consumer per client)",
				Subjects: []string{n.Subject("sink", "out", "*")}, Retention: jetstream.WorkQueue, Duplicates: 10 * time.Minute, MaxMsgSize: MaxFrame},
		},
		Buckets: []jetstream.BucketSpec{
			{Name: BucketClients, Description: "Sink client registry, server instance id, policy"},
			{Name: BucketState, Description: "Sink connection owners, freshness, outbound offset counters"},
		},
	}
}

// Start binds the TLS listener and starts serving.
func (a *Adapter) Start(ctx context.Context, env *bridge.Env) error {
	a.env, a.log = env, env.Log
	if a.cfg.Keepalive <= 0 {
		a.cfg.Keepalive = 60 * time.Second
	}
	if a.cfg.MaxInflight <= 0 {
		a.cfg.MaxInflight = 1
	}
	if a.cfg.OutMaxPending <= 0 || a.cfg.OutMaxPending > 4000 {
		return fmt.Errorf("sink: --sink-out-max-pending must be 1..4000 (12-bit message ids), got %d", a.cfg.OutMaxPending)
	}
	if a.cfg.OutAckWait < time.Second {
		a.cfg.OutAckWait = time.Second
	}
	if a.cfg.FreshnessFlush <= 0 {
		a.cfg.FreshnessFlush = time.Second
	}
	a.m = newMetrics(env.Registry)
	a.m.resolve(env.Metrics)
	a.ctx, a.cancel = context.WithCancel(context.Background())
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	clients, err := env.JS.KV(sctx, BucketClients)
	if err != nil {
		return fmt.Errorf("sink: %w", err)
	}
	state, err := env.JS.KV(sctx, BucketState)
	if err != nil {
		return fmt.Errorf("sink: %w", err)
	}
	a.reg = registry{clients: clients, state: state}
	if a.serverID, err = a.reg.serverInstanceID(sctx); err != nil {
		return fmt.Errorf("sink: server instance id: %w", err)
	}

	certFile, keyFile, clientCA := a.cfg.TLSCert, a.cfg.TLSKey, a.cfg.ClientCA
	if certFile == "" && keyFile == "" {
		dir := filepath.Join(env.DataDir, "sink-dev")
		d, err := EnsureDevCerts(dir)
		if err != nil {
			return fmt.Errorf("sink: development certificates: %w", err)
		}
		// The development CA only issues the development certificates: client certificates are
		// not chain-verified (none is configured), the fingerprint registry alone decides.
		certFile, keyFile = d.Server, d.ServerKey
		if err := a.reg.addClient(sctx, ClientRecord{ID: DevClientID, Fingerprint: d.ClientFingerprint, CN: d.CN}); err != nil && !errors.Is(err, jetstream.ErrExists) {
			return fmt.Errorf("sink: register development client: %w", err)
		}
		a.devID = DevClientID
		a.log.Warn("sink: no --sink-tls-cert given, using a generated development PKI (not for production)",
			"ca", d.CA, "server_cert", d.Server, "server_key", d.ServerKey,
			"client_cert", d.Client, "client_key", d.ClientKey, "client_id", DevClientID)
	} else if certFile == "" || keyFile == "" {
		return errors.New("sink: --sink-tls-cert and --sink-tls-key go together")
	}
	if a.cfg.ClientIDFromCN && clientCA == "" {
		return errors.New("sink: --sink-client-id-from-cn needs --sink-client-ca (a CN is only trustworthy from a verified chain)")
	}
	if a.tlsCfg, err = serverTLS(certFile, keyFile, clientCA); err != nil {
		return err
	}

	a.registerAdmin(env.Admin)

	owners, err := state.Watch(a.ctx, "conn.*", false)
	if err != nil {
		return fmt.Errorf("sink: watch owners: %w", err)
	}
	a.wg.Add(2)
	go a.watchOwners(owners)
	go a.flushLoop()

	ln := env.Listeners["sink"]
	if ln == nil {
		a.log.Info("sink: listener off")
		return nil
	}
	a.ln = ln
	a.wg.Add(1)
	go a.acceptLoop(ln)
	a.log.Info("sink: serving", "addr", ln.Addr().String(), "server_instance_id", a.serverID)
	return nil
}

func (a *Adapter) acceptLoop(ln net.Listener) {
	defer a.wg.Done()
	delay := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if a.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			a.log.Warn("sink: accept", "err", err)
			select {
			case <-time.After(delay):
			case <-a.ctx.Done():
				return
			}
			delay = min(delay*2, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		a.mu.Lock()
		full := len(a.conns) >= a.cfg.MaxConnections || a.draining
		a.mu.Unlock()
		if full {
			a.m.handshakes.WithLabelValues("connection_limit").Inc()
			_ = c.Close()
			continue
		}
		a.connWG.Add(1)
		go a.serve(c)
	}
}

// watchOwners closes local connections that lost their client to a newer connection (here or on
// another pod).
func (a *Adapter) watchOwners(ch <-chan jetstream.Entry) {
	defer a.wg.Done()
	delay := 100 * time.Millisecond
	for {
		a.ownerUpdates(ch)
		if a.ctx.Err() != nil {
			return
		}
		// the watch ended without us asking (NATS trouble): watch again
		a.log.Warn("sink: connection-owner watch ended, restarting")
		select {
		case <-time.After(delay):
		case <-a.ctx.Done():
			return
		}
		delay = min(delay*2, 5*time.Second)
		next, err := a.reg.state.Watch(a.ctx, "conn.*", false)
		if err != nil {
			a.log.Warn("sink: connection-owner watch", "err", err)
			ch = closedEntries
			continue
		}
		ch, delay = next, 100*time.Millisecond
	}
}

var closedEntries = func() chan jetstream.Entry { c := make(chan jetstream.Entry); close(c); return c }()

func (a *Adapter) ownerUpdates(ch <-chan jetstream.Entry) {
	for e := range ch {
		if e.Key == "" || e.Deleted {
			continue
		}
		client := e.Key[len("conn."):]
		var o Owner
		if err := jsonUnmarshal(e.Value, &o); err != nil {
			continue
		}
		a.mu.Lock()
		if prev, ok := a.lastOwner[client]; !ok || e.Revision > prev.rev {
			a.lastOwner[client] = ownerSeen{rev: e.Revision, conn: o.Conn}
		}
		s := a.byClient[client]
		a.mu.Unlock()
		if s != nil {
			if rev := s.ownerRev.Load(); rev != 0 && e.Revision > rev && o.Conn != s.connID {
				s.closeGraceful("replaced by a newer connection on pod " + o.Pod)
			}
		}
	}
}

// claim makes s the client's connection: an older local one is closed at once, the KV owner
// record tells the other pods.
func (a *Adapter) claim(s *session) error {
	a.mu.Lock()
	old := a.byClient[s.clientID]
	a.byClient[s.clientID] = s
	a.mu.Unlock()
	if old != nil {
		old.closeGraceful("replaced by a newer connection")
	}
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	b, _ := jsonMarshal(Owner{Pod: a.env.PodID, Conn: s.connID, Remote: s.remote, Since: time.Now().UTC()})
	rev, err := a.reg.state.Put(ctx, ownerKey(s.clientID), b)
	if err != nil {
		return fmt.Errorf("claim %s: %w", s.clientID, err)
	}
	s.ownerRev.Store(rev)
	a.mu.Lock()
	seen := a.lastOwner[s.clientID]
	a.mu.Unlock()
	if seen.rev > rev && seen.conn != s.connID {
		return fmt.Errorf("claim %s: a newer connection won", s.clientID)
	}
	return nil
}

func (a *Adapter) release(s *session) {
	a.mu.Lock()
	if a.byClient[s.clientID] == s {
		delete(a.byClient, s.clientID)
	}
	delete(a.conns, s)
	a.mu.Unlock()
	if rev := s.ownerRev.Load(); rev != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = a.reg.state.Delete(ctx, ownerKey(s.clientID), rev) // conflict: someone newer owns it
	}
}

func (a *Adapter) noteFreshness(client string, typ, ts uint64) {
	k := freshID{client, typ}
	a.mu.Lock()
	if cur, ok := a.fresh[k]; !ok || ts > cur.ts {
		a.fresh[k] = freshEntry{client: client, typ: typ, ts: ts}
	}
	a.mu.Unlock()
}

func (a *Adapter) flushFreshness(ctx context.Context) {
	a.mu.Lock()
	batch := a.fresh
	a.fresh = map[freshID]freshEntry{}
	a.mu.Unlock()
	for k, f := range batch {
		if err := a.reg.raiseFreshness(ctx, f.client, f.typ, f.ts); err != nil {
			a.log.Warn("sink: freshness", "client", f.client, "type", f.typ, "err", err)
			a.mu.Lock()
			if cur, ok := a.fresh[k]; !ok || f.ts > cur.ts {
				a.fresh[k] = f
			}
			a.mu.Unlock()
		}
	}
}

func (a *Adapter) flushLoop() {
	defer a.wg.Done()
	t := time.NewTicker(a.cfg.FreshnessFlush)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
			a.flushFreshness(ctx)
			cancel()
		case <-a.ctx.Done():
			return
		}
	}
}

// Drain stops accepting connections and closes the open ones gracefully: inbound events being
// written are finished and ACKed, outbound events held are handed back to JetStream.
func (a *Adapter) Drain(ctx context.Context) error {
	a.mu.Lock()
	a.draining = true
	sessions := make([]*session, 0, len(a.conns))
	for s := range a.conns {
		sessions = append(sessions, s)
	}
	a.mu.Unlock()
	if a.ln != nil {
		_ = a.ln.Close()
	}
	for _, s := range sessions {
		s.closeGraceful("pod draining")
	}
	done := make(chan struct{})
	go func() { a.connWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("sink drain: %w", ctx.Err())
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	a.flushFreshness(fctx)
	cancel()
	return nil
}

// Stop closes everything at once.
func (a *Adapter) Stop() error {
	if a.cancel == nil {
		return nil
	}
	if a.ln != nil {
		_ = a.ln.Close()
	}
	a.mu.Lock()
	a.draining = true
	for s := range a.conns {
		s.kill()
	}
	a.mu.Unlock()
	a.cancel()
	a.connWG.Wait()
	a.wg.Wait()
	return nil
}

type metrics struct {
	handshakes *prometheus.CounterVec
	acks       *prometheus.CounterVec
	inflight   *prometheus.GaugeVec
	unknownIDs prometheus.Counter

	// resolved children of the hot paths
	inflightIn, inflightOut  prometheus.Gauge
	ackIn, nackIn            prometheus.Counter
	ackOut, nackOut          prometheus.Counter
	msgIn                    [16]prometheus.Counter
	outAck, outNack, outPong prometheus.Counter
	outPublish, outResponse  prometheus.Counter
	latPublish               prometheus.Observer
}

func (m *metrics) resolve(shared *bridge.Metrics) {
	m.inflightIn, m.inflightOut = m.inflight.WithLabelValues("in"), m.inflight.WithLabelValues("out")
	m.ackIn, m.nackIn = m.acks.WithLabelValues("in", "ack"), m.acks.WithLabelValues("in", "nack")
	m.ackOut, m.nackOut = m.acks.WithLabelValues("out", "ack"), m.acks.WithLabelValues("out", "nack")
	for i := range m.msgIn {
		m.msgIn[i] = shared.MessagesIn.WithLabelValues("sink", MsgType(i).String())
	}
	m.outAck = shared.MessagesOut.WithLabelValues("sink", "ack")
	m.outNack = shared.MessagesOut.WithLabelValues("sink", "nack")
	m.outPong = shared.MessagesOut.WithLabelValues("sink", "pong")
	m.outPublish = shared.MessagesOut.WithLabelValues("sink", "publish")
	m.outResponse = shared.MessagesOut.WithLabelValues("sink", "connection_response")
	m.latPublish = shared.Latency.WithLabelValues("sink", "publish")
}

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_sink_handshakes_total",
			Help: "Sink connection attempts by result (connected, hello_new_client, mismatch, quarantined, unsupported_*, unknown_certificate, ...)."}, []string{"result"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_sink_acks_total",
			Help: "ACK/NACK frames by direction (in: from devices, out: to devices) and kind."}, []string{"direction", "kind"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetbridge_sink_inflight",
			Help: "Sink events in flight (in: being written to JetStream, out: sent and not yet ACKed)."}, []string{"direction"}),
		unknownIDs: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetbridge_sink_unknown_ack_ids_total",
			Help: "ACK/NACK frames received for a message id that is not in flight (ignored)."}),
	}
	for _, c := range []prometheus.Collector{m.handshakes, m.acks, m.inflight, m.unknownIDs} {
		if r == nil {
			continue
		}
		if err := r.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				panic(err)
			}
		}
	}
	return m
}

// Package tracker serves the Tracker protocol (mnbot's work-item protocol for crawler pipelines,
// v1) over WebSocket, on JetStream: items are KV records with CAS, claimable items are tokens on a
// work-queue stream, results go to a results stream and every change is an event on a subject.
//
// Layout: codec.go (frames ↔ structs, no I/O), session.go (one connection: hello, one request at a
// time), queue.go/index.go/stash.go (the mapping onto JetStream), auth.go (pipelines, argon2id),
// admin.go (admin API under /api/v1/tracker), adapter.go (bridge.Adapter, listener, sweeper).
//
// Behaviour worth knowing (the spec's Decisions settle the rest):
//   - A claim is the item record's state (status claimed, claim{pipeline, attempt, lease_until,
//     pod}); any pod can finish/fail/store it. Leases are renewed by System:ping (rewritten once a
//     tenth of the lease has passed); every pod sweeps expired leases, the record's CAS picks one
//     winner, which requeues (or errors out after max tries) and publishes Item:revoked on
//     tracker.advisory.<pipeline>; every pod writes it to its connections of that pipeline.
//   - Claim order: pipeline-specific before general, ascending priority + attempts, FIFO. The
//     per-subject counts of the ready stream are reused for --tracker-order-refresh (50 ms) and
//     then re-read in the background while claims go on with the previous ones, so an item
//     queued through another pod may take that long (plus one read) to get its place in the
//     order; a claim that finds nothing with the cached order reads it at once.
//   - Hot path: a claim is one pull request (jetstream.Taker, pooled standing subscriptions) and
//     one CAS write of the record, whose decoded value this pod keeps from its own writes; an
//     enqueue sends the ready token and the record create together and answers after both acks.
//   - The claimed item's attempts are objects {pipeline, pipeline_version, time, error} (the
//     reference server sends nulls there through a bug; the reference client does not read them).
//   - The claim rate limit (claims_per_minute) is per pod; the budget (open claims) is global.
//   - Item events always go to core subjects tracker.events.<type>.<event>; storing them in the
//     TRACKER_EVENTS stream is opt-in (--tracker-events-stream) because it costs throughput.
package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

const protocolName = "tracker"

// Adapter is the tracker protocol adapter.
type Adapter struct {
	// configuration (flags)
	infoURL        string
	lease          time.Duration
	maxTries       int
	sweepEvery     time.Duration
	idleTimeout    time.Duration
	authTTL        time.Duration
	cmdTimeout     time.Duration
	minVersion     string
	maxFrame       int
	maxConns       int
	dripEvery      time.Duration
	resultsMaxAge  time.Duration
	eventsMaxAge   time.Duration
	resultsDupeWin time.Duration
	argonMemory    int
	orderTTL       time.Duration
	eventsStream   bool
	keepFinished   time.Duration

	env  *bridge.Env
	q    *Queue
	auth *authenticator
	rate rateLimiter
	m    *trackerMetrics
	up   websocket.Upgrader
	srv  *http.Server

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	sessions map[*session]struct{}
	byPipe   map[string]map[*session]struct{}
	nconns   atomic.Int64
	draining atomic.Bool

	advSub *jetstream.Subscription

	limMu    sync.Mutex
	limCache map[string]cachedAuth

	cmdMetrics map[string]*cmdMetrics // per command type; read-only after Start
}

// New returns the tracker adapter; its configuration comes from the flags it registers.
func New() *Adapter { return &Adapter{} }

// Name is the protocol name.
func (a *Adapter) Name() string { return protocolName }

// Listeners declares the WebSocket listener.
func (a *Adapter) Listeners() []bridge.ListenerSpec {
	return []bridge.ListenerSpec{{Name: "tracker", Flag: "tracker-listen", Default: ":8897",
		Usage: "Tracker protocol WebSocket listener (any path, HTTP Basic auth)"}}
}

// Flags registers the adapter's flags.
func (a *Adapter) Flags(fs *pflag.FlagSet) {
	fs.StringVar(&a.infoURL, "tracker-info-url", "", "info_url sent with every claimed item")
	fs.DurationVar(&a.lease, "tracker-lease", 24*time.Hour, "default claim lease (per pipeline type setting overrides it); System:ping renews it")
	fs.IntVar(&a.maxTries, "tracker-max-tries", 3, "default attempts before an item becomes error (per pipeline type setting overrides it)")
	fs.DurationVar(&a.sweepEvery, "tracker-sweep-interval", time.Second, "how often expired leases are looked for")
	fs.DurationVar(&a.idleTimeout, "tracker-idle-timeout", 5*time.Minute, "close a connection that sends nothing for this long (0 = never)")
	fs.DurationVar(&a.authTTL, "tracker-auth-cache", 30*time.Second, "how long a verified pipeline secret is remembered")
	fs.DurationVar(&a.cmdTimeout, "tracker-command-timeout", 10*time.Second, "deadline of one command against JetStream")
	fs.StringVar(&a.minVersion, "tracker-min-version", "", "minimum client version (hello v); older clients get 426")
	fs.IntVar(&a.maxFrame, "tracker-max-frame", 0, "maximum frame size in bytes (0 = the pod's --max-message)")
	fs.IntVar(&a.maxConns, "tracker-max-connections", 50000, "maximum WebSocket connections per pod")
	fs.DurationVar(&a.dripEvery, "tracker-dripfeed-interval", time.Second, "how often stashes are drip-fed into the queue")
	fs.DurationVar(&a.resultsMaxAge, "tracker-results-max-age", 30*24*time.Hour, "how long stored results are kept")
	fs.DurationVar(&a.eventsMaxAge, "tracker-events-max-age", 7*24*time.Hour, "how long item events are kept")
	fs.DurationVar(&a.orderTTL, "tracker-order-refresh", 50*time.Millisecond, "how long claims on this pod reuse the ready queues' per-subject counts (0 = read them on every claim); items queued through another pod may wait this long for their place in the order")
	fs.BoolVar(&a.eventsStream, "tracker-events-stream", false, "also keep item events in the TRACKER_EVENTS stream (they are always published on core subjects tracker.events.>; storing them costs about a quarter of the per-item throughput)")
	fs.Var((*keepFinishedFlag)(&a.keepFinished), "tracker-keep-finished", "how long the records of done and error items are kept after they got there (0 = for ever, as the original tracker does; at least 1s otherwise); an expired item reads as unknown (404, also to a finish or fail retried after that) and its id can be queued again")
	fs.IntVar(&a.argonMemory, "tracker-argon2-memory", 19*1024, "argon2id memory cost in KiB for new pipeline secrets")
	fs.DurationVar(&a.resultsDupeWin, "tracker-results-dedup-window", 20*time.Minute, "window in which a retried Item:store is not stored twice")
}

// Assets declares the tracker's streams, consumers and buckets.
func (a *Adapter) Assets(n jetstream.Names) jetstream.Assets {
	dupe := a.resultsDupeWin
	if dupe == 0 {
		dupe = 20 * time.Minute
	}
	assets := jetstream.Assets{
		Streams: []jetstream.StreamSpec{
			{Name: streamReady, Description: "tracker: ready tokens of claimable items (work queue)",
				Subjects: []string{n.Subject("tracker", "ready", ">")}, Retention: jetstream.WorkQueue, AllowDirect: true},
			{Name: streamStash, Description: "tracker: stashed items waiting to be drip-fed (work queue)",
				Subjects: []string{n.Subject("tracker", "stash", ">")}, Retention: jetstream.WorkQueue, Duplicates: time.Hour},
			{Name: streamResults, Description: "tracker: Item:store results",
				Subjects: []string{n.Subject("tracker", "results", ">")}, MaxAge: a.resultsMaxAge, Duplicates: dupe},
			{Name: streamEvents, Description: "tracker: item events",
				Subjects: []string{n.Subject("tracker", "events", ">")}, MaxAge: a.eventsMaxAge},
			{Name: streamRejects, Description: "tracker: rejected submissions with the reason",
				Subjects: []string{n.Subject("tracker", "rejects")}, MaxAge: a.eventsMaxAge},
			{Name: streamSubmit, Description: "tracker: items submitted by NATS clients (work queue)",
				Subjects: []string{n.Subject("tracker", "submit")}, Retention: jetstream.WorkQueue, Duplicates: 10 * time.Minute},
		},
		Consumers: []jetstream.ConsumerSpec{
			{Stream: streamSubmit, Durable: consSubmit, Description: "tracker pods enqueue submitted items",
				AckWait: 30 * time.Second, MaxDeliver: 10},
		},
		Buckets: []jetstream.BucketSpec{
			{Name: bucketItems, Description: "tracker: item records (status, attempts, claim)", LimitMarkerTTL: a.itemsMarkerTTL()},
			{Name: bucketPipes, Description: "tracker: pipelines (argon2id secret hashes, limits)"},
			{Name: bucketConfig, Description: "tracker: pipeline type settings and stashes"},
		},
	}
	if !a.eventsStream {
		assets.Streams = slices.DeleteFunc(assets.Streams, func(s jetstream.StreamSpec) bool { return s.Name == streamEvents })
	}
	return assets
}

type trackerMetrics struct {
	claims, finishes, fails, stores, revocations prometheus.Counter
}

func (a *Adapter) metrics() *bridge.Metrics { return a.env.Metrics }

// keepFinishedFlag is --tracker-keep-finished: a duration checked when the flag is parsed, so
// that a refused value never reaches provisioning (which would switch the items bucket's
// per-record TTLs on for good).
type keepFinishedFlag time.Duration

func (f *keepFinishedFlag) String() string { return time.Duration(*f).String() }
func (f *keepFinishedFlag) Type() string   { return "duration" }
func (f *keepFinishedFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if err := checkKeepFinished(d); err != nil {
		return err
	}
	*f = keepFinishedFlag(d)
	return nil
}

func checkKeepFinished(d time.Duration) error {
	if d < 0 || (d > 0 && d < time.Second) {
		return fmt.Errorf("%s: want 0 (for ever) or at least 1s", d)
	}
	return nil
}

// itemsMarkerTTL is the items bucket's LimitMarkerTTL: per-record TTLs are only switched on for
// --tracker-keep-finished, since a bucket cannot switch them off again (versions of jetbridge
// before the flag could then no longer start against it). Provisioning keeps them on for pods
// without the flag once any pod switched them on.
func (a *Adapter) itemsMarkerTTL() time.Duration {
	if a.keepFinished > 0 {
		return itemMarkerTTL
	}
	return 0
}

// Start serves the WebSocket listener and starts the lease sweeper, the submit consumer and the
// drip-feeder.
func (a *Adapter) Start(ctx context.Context, env *bridge.Env) error {
	if err := checkKeepFinished(a.keepFinished); err != nil {
		return fmt.Errorf("tracker: --tracker-keep-finished %w", err)
	}
	a.env = env
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.sessions = map[*session]struct{}{}
	a.byPipe = map[string]map[*session]struct{}{}
	a.limCache = map[string]cachedAuth{}
	if a.lease <= 0 {
		a.lease = 24 * time.Hour
	}
	if a.maxTries <= 0 {
		a.maxTries = 3
	}
	if a.cmdTimeout <= 0 {
		a.cmdTimeout = 10 * time.Second
	}
	if a.sweepEvery <= 0 {
		a.sweepEvery = time.Second
	}
	if a.dripEvery <= 0 {
		a.dripEvery = time.Second
	}
	if a.argonMemory < 8 {
		a.argonMemory = 19 * 1024
	}
	if a.maxFrame <= 0 {
		a.maxFrame = env.MaxMessage
	}
	if a.maxFrame <= 0 {
		a.maxFrame = 1 << 20
	}
	a.m = &trackerMetrics{
		claims:      prometheus.NewCounter(prometheus.CounterOpts{Name: "jetbridge_tracker_claims_total", Help: "Items claimed."}),
		finishes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "jetbridge_tracker_finishes_total", Help: "Items finished."}),
		fails:       prometheus.NewCounter(prometheus.CounterOpts{Name: "jetbridge_tracker_fails_total", Help: "Item:fail commands accepted."}),
		stores:      prometheus.NewCounter(prometheus.CounterOpts{Name: "jetbridge_tracker_stores_total", Help: "Results stored."}),
		revocations: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetbridge_tracker_revocations_total", Help: "Claims revoked (lease expired, operator)."}),
	}
	a.initTypeMetrics()
	q, err := newQueue(ctx, env.JS, env.PodID, env.Log, a.lease, a.maxTries, a.m)
	if err != nil {
		return fmt.Errorf("tracker: %w", err)
	}
	a.q = q
	q.orderTTL = a.orderTTL
	q.keepFinished = a.keepFinished
	for _, c := range []prometheus.Collector{a.m.claims, a.m.finishes, a.m.fails, a.m.stores, a.m.revocations, &depthCollector{a: a}} {
		if err := env.Registry.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return fmt.Errorf("tracker metrics: %w", err)
			}
		}
	}
	a.auth = newAuthenticator(q.pipes, a.authTTL)
	a.up = websocket.Upgrader{ReadBufferSize: 256, WriteBufferPool: &sync.Pool{},
		HandshakeTimeout: 10 * time.Second, CheckOrigin: func(*http.Request) bool { return true }}

	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		q.index.watch(a.ctx, q.items, func(err error) { env.Log.Warn("tracker: items watch", "err", err) })
	}()
	select {
	case <-q.index.ready:
	case <-time.After(10 * time.Second):
		env.Log.Warn("tracker: claim index not loaded after 10s; continuing")
	}
	a.advSub, err = env.JS.Subscribe(env.JS.Subject("tracker", "advisory", "*"), "", a.deliverAdvisory)
	if err != nil {
		return fmt.Errorf("tracker: %w", err)
	}
	a.wg.Add(3)
	go func() { defer a.wg.Done(); a.sweepLoop() }()
	go func() { defer a.wg.Done(); a.submitLoop() }()
	go func() { defer a.wg.Done(); a.dripLoop() }()

	a.registerAdmin(env)

	if ln, ok := env.Listeners["tracker"]; ok {
		a.srv = &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10,
			ErrorLog: nil}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				env.Log.Error("tracker listener", "err", err)
			}
		}()
	}
	return nil
}

// ServeHTTP authenticates and upgrades a connection, then runs its session.
func (a *Adapter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.draining.Load() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	user, pass, ok := r.BasicAuth()
	var p Pipeline
	if ok {
		ctx, cancel := context.WithTimeout(r.Context(), a.cmdTimeout)
		var err error
		p, err = a.auth.check(ctx, user, pass)
		cancel()
		if err != nil && !errors.Is(err, errBadCredentials) {
			a.env.Log.Warn("tracker auth", "pipeline", user, "err", err)
			http.Error(w, "service unavailable", http.StatusServiceUnavailable)
			return
		}
		ok = err == nil
	}
	if !ok {
		a.metrics().Errors.WithLabelValues(protocolName, "auth").Inc()
		w.Header().Set("WWW-Authenticate", `Basic realm="jetbridge tracker"`)
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	if a.maxConns > 0 && a.nconns.Load() >= int64(a.maxConns) {
		http.Error(w, "too many connections", http.StatusServiceUnavailable)
		return
	}
	conn, err := a.up.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	conn.SetReadLimit(int64(a.maxFrame))
	s := &session{a: a, conn: conn, pipeline: p.Name, limits: p}
	if !a.register(s) {
		s.closeWith(websocket.CloseGoingAway, "server shutting down")
		return
	}
	// The session runs on its own goroutine (owned by a.wg) so that this handler returns and
	// net/http's per-connection state (request, 4 KiB reader and writer) is released: an idle
	// connection then costs one goroutine, gorilla's Conn and a 256-byte read buffer.
	go func() {
		defer a.wg.Done()
		defer a.unregister(s)
		s.serve()
	}()
}

func (a *Adapter) register(s *session) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining.Load() || a.ctx.Err() != nil {
		return false
	}
	a.wg.Add(1) // released when the session's goroutine ends
	a.sessions[s] = struct{}{}
	set := a.byPipe[s.pipeline]
	if set == nil {
		set = map[*session]struct{}{}
		a.byPipe[s.pipeline] = set
	}
	set[s] = struct{}{}
	a.nconns.Add(1)
	a.metrics().Connections.WithLabelValues(protocolName).Inc()
	return true
}

func (a *Adapter) unregister(s *session) {
	s.wmu.Lock()
	s.done = true
	s.wmu.Unlock()
	_ = s.conn.Close()
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.sessions[s]; !ok {
		return
	}
	delete(a.sessions, s)
	if set := a.byPipe[s.pipeline]; set != nil {
		delete(set, s)
		if len(set) == 0 {
			delete(a.byPipe, s.pipeline)
		}
	}
	a.nconns.Add(-1)
	a.metrics().Connections.WithLabelValues(protocolName).Dec()
}

// deliverAdvisory writes an advisory published on tracker.advisory.<pipeline> to this pod's
// connections of that pipeline.
func (a *Adapter) deliverAdvisory(m *jetstream.Msg) {
	pipeline := m.Subject[len(a.env.JS.Subject("tracker", "advisory", "")):]
	a.mu.Lock()
	var targets []*session
	for s := range a.byPipe[pipeline] {
		targets = append(targets, s)
	}
	a.mu.Unlock()
	for _, s := range targets {
		// advisories are written from the NATS subscription: a slow client must not hold it up
		if err := s.writeWithin(m.Data, time.Second); err == nil {
			a.metrics().MessagesOut.WithLabelValues(protocolName, "Item:revoked").Inc()
		}
	}
}

// limits returns the pipeline's current budget and rate (re-read every few seconds so that
// operator changes apply to open connections).
func (a *Adapter) limits(ctx context.Context, name string, fallback Pipeline) Pipeline {
	a.limMu.Lock()
	c, ok := a.limCache[name]
	a.limMu.Unlock()
	if ok && time.Since(c.at) < 5*time.Second {
		return c.p
	}
	p := fallback
	if e, err := a.q.pipes.Get(ctx, name); err == nil {
		var fresh Pipeline
		if json.Unmarshal(e.Value, &fresh) == nil {
			p = fresh
		}
	}
	a.limMu.Lock()
	a.limCache[name] = cachedAuth{p: p, at: time.Now()}
	a.limMu.Unlock()
	return p
}

func (a *Adapter) forgetLimits(name string) {
	a.limMu.Lock()
	delete(a.limCache, name)
	a.limMu.Unlock()
}

// sweepLoop requeues items whose lease ran out. Every pod sweeps; the record's CAS makes sure one
// of them wins and only the winner sends the advisory.
func (a *Adapter) sweepLoop() {
	t := time.NewTicker(a.sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		for _, c := range a.q.index.expired(epoch(time.Now())) {
			if a.ctx.Err() != nil {
				return
			}
			ctx, cancel := context.WithTimeout(a.ctx, a.cmdTimeout)
			if err := a.q.expire(ctx, c.id, c.attempt); err != nil {
				var se *statusError
				if !errors.As(err, &se) {
					a.env.Log.Warn("tracker: lease expiry", "id", c.id, "err", err)
				}
			}
			cancel()
		}
	}
}

// Drain stops accepting connections and closes the open ones once their command in flight is
// answered.
func (a *Adapter) Drain(ctx context.Context) error {
	a.draining.Store(true)
	if a.srv != nil {
		_ = a.srv.Shutdown(ctx)
	}
	a.mu.Lock()
	var all []*session
	for s := range a.sessions {
		all = append(all, s)
	}
	a.mu.Unlock()
	// each connection is closed as soon as its command in flight (if any) is answered; the
	// goroutines doing it end within the command timeout and Stop waits for them
	closed := make(chan struct{}, len(all))
	for _, s := range all {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			s.cmdMu.Lock()
			s.closeWith(websocket.CloseGoingAway, "server shutting down")
			s.cmdMu.Unlock()
			closed <- struct{}{}
		}()
	}
	for range all {
		select {
		case <-closed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Stop closes every connection and stops the background work.
func (a *Adapter) Stop() error {
	a.mu.Lock()
	a.draining.Store(true) // under a.mu: no session registers (wg.Add) after this
	a.mu.Unlock()
	if a.cancel != nil {
		a.cancel()
	}
	if a.srv != nil {
		_ = a.srv.Close()
	}
	a.mu.Lock()
	for s := range a.sessions {
		_ = s.conn.Close()
	}
	a.mu.Unlock()
	if a.advSub != nil {
		_ = a.advSub.Unsubscribe()
	}
	a.wg.Wait()
	if a.q != nil {
		a.q.close()
	}
	return nil
}

// depthCollector reports the claimable items (ready tokens) and the open claims per pipeline
// type when metrics are scraped.
type depthCollector struct{ a *Adapter }

var depthDesc = prometheus.NewDesc("jetbridge_tracker_queue_depth", "Ready tokens per pipeline type (claimable items, may include a few stale tokens), of the whole tracker: every pod reports the same figure (aggregate with max, not sum).", []string{"pipeline_type"}, nil)

var claimsDesc = prometheus.NewDesc("jetbridge_tracker_open_claims", "Claimed items not yet finished or failed, per pipeline type, of the whole tracker: every pod reports the same figure (aggregate with max, not sum).", []string{"pipeline_type"}, nil)

func (d *depthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- depthDesc; ch <- claimsDesc }

func (d *depthCollector) Collect(ch chan<- prometheus.Metric) {
	open := map[string]float64{}
	for _, c := range d.a.q.index.all() {
		open[c.ptype]++
	}
	for pt, n := range d.readyPerType() {
		ch <- prometheus.MustNewConstMetric(depthDesc, prometheus.GaugeValue, n, pt)
		if _, ok := open[pt]; !ok {
			open[pt] = 0 // a type with claimable items and no claims
		}
	}
	for pt, n := range open {
		ch <- prometheus.MustNewConstMetric(claimsDesc, prometheus.GaugeValue, n, pt)
	}
}

// readyPerType counts the ready tokens per pipeline type (nil when NATS does not answer).
func (d *depthCollector) readyPerType() map[string]float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := d.a.env.JS.SubjectCounts(ctx, streamReady, d.a.env.JS.Subject("tracker", "ready", ">"))
	if err != nil {
		return nil
	}
	prefix := d.a.env.JS.Subject("tracker", "ready", "")
	per := map[string]float64{}
	for subj, n := range counts {
		ptype, _, _ := strings.Cut(subj[len(prefix):], ".")
		per[ptype] += float64(n)
	}
	return per
}

package eventmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

// Logical asset names.
const (
	StreamJobs       = "EVENTMQ_JOBS"
	StreamResults    = "EVENTMQ_RESULTS"
	BucketSchedules  = "EVENTMQ_SCHEDULES"
	BucketQueues     = "EVENTMQ_QUEUES"
	BucketPods       = "EVENTMQ_PODS"
	consumerPrefix   = "EVENTMQ_Q_"
	protocolName     = "eventmq"
	podSnapshotMaxAg = time.Minute
)

// NATS headers of a stored job.
const (
	HeaderMsgID   = "Eventmq-Msgid"
	HeaderQueue   = "Eventmq-Queue"
	HeaderHeaders = "Eventmq-Headers"
	HeaderTopic   = "Eventmq-Topic"
)

// Listener names (as in the product contract).
const (
	ListenFrontend = "eventmq-frontend"
	ListenBackend  = "eventmq-backend"
	ListenAdmin    = "eventmq-admin"
	ListenPubIn    = "eventmq-pub-in"
	ListenPubOut   = "eventmq-pub-out"
)

type config struct {
	heartbeat    time.Duration
	hbTimeout    time.Duration
	lease        time.Duration
	pollWait     time.Duration
	attempts     int
	maxDeliver   int
	resultTTL    time.Duration
	scheduleTick time.Duration
	queueTTL     time.Duration
	lanes        int
	// exactCompletion adds reply-requested to the jobs forwarded to workers.
	exactCompletion bool
}

// Adapter is the EventMQ broker.
type Adapter struct {
	cfg config

	env *bridge.Env
	js  *jetstream.Client
	log *slog.Logger
	m   *metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	front, back, admin, pubIn *zmtp.Router
	pubOut                    *zmtp.Pub
	pubSub, ctlSub            *jetstream.Subscription
	backLoop                  *orderedLoop // the backend's messages and disconnections, in order

	b      *broker
	sched  *scheduler
	queues *queueRegistry

	lanes    []chan func()
	stopping atomic.Bool
	draining atomic.Bool
	flushNow chan struct{}
	stopOnce sync.Once
}

// New returns the EventMQ adapter; its configuration comes from the flags it registers.
func New() *Adapter {
	return &Adapter{cfg: config{heartbeat: 3 * time.Second, hbTimeout: 5 * time.Second, lease: 30 * time.Second,
		pollWait: 2 * time.Second, attempts: 5, maxDeliver: 100, resultTTL: 24 * time.Hour,
		scheduleTick: 250 * time.Millisecond, queueTTL: 24 * time.Hour, lanes: 64}}
}

// Name is the protocol name.
func (a *Adapter) Name() string { return protocolName }

// Listeners declares the five sockets of the broker.
func (a *Adapter) Listeners() []bridge.ListenerSpec {
	return []bridge.ListenerSpec{
		{Name: ListenFrontend, Flag: "eventmq-frontend", Default: ":47291", Usage: "EventMQ frontend (clients and schedulers) ROUTER listener"},
		{Name: ListenBackend, Flag: "eventmq-backend", Default: ":47290", Usage: "EventMQ backend (job managers) ROUTER listener"},
		{Name: ListenAdmin, Flag: "eventmq-admin", Default: ":47293", Usage: "EventMQ administrative ROUTER listener"},
		{Name: ListenPubIn, Flag: "eventmq-pub-in", Default: ":47298", Usage: "EventMQ publisher input (PUBLISH) ROUTER listener"},
		{Name: ListenPubOut, Flag: "eventmq-pub-out", Default: ":47299", Usage: "EventMQ publisher output (PUB) listener"},
	}
}

// Flags registers the broker's tunables.
func (a *Adapter) Flags(fs *pflag.FlagSet) {
	fs.DurationVar(&a.cfg.heartbeat, "eventmq-heartbeat-interval", a.cfg.heartbeat, "EventMQ: HEARTBEAT interval to workers and schedulers (HEARTBEAT_INTERVAL)")
	fs.DurationVar(&a.cfg.hbTimeout, "eventmq-heartbeat-timeout", a.cfg.hbTimeout, "EventMQ: a worker or scheduler silent this long is dead (HEARTBEAT_TIMEOUT)")
	fs.DurationVar(&a.cfg.lease, "eventmq-lease", a.cfg.lease, "EventMQ: lease of a dispatched job, renewed while its worker lives; a job of a dead pod is redelivered after it")
	fs.DurationVar(&a.cfg.pollWait, "eventmq-poll-wait", a.cfg.pollWait, "EventMQ: how long a free worker slot waits on JetStream per pull")
	fs.IntVar(&a.cfg.attempts, "eventmq-attempts", a.cfg.attempts, "EventMQ: attempts of a job without a retry-count:N header (with it: N+1)")
	fs.IntVar(&a.cfg.maxDeliver, "eventmq-max-deliver", a.cfg.maxDeliver, "EventMQ: hard cap of deliveries per job (consumer MaxDeliver)")
	fs.DurationVar(&a.cfg.resultTTL, "eventmq-result-ttl", a.cfg.resultTTL, "EventMQ: how long job results are kept")
	fs.DurationVar(&a.cfg.scheduleTick, "eventmq-schedule-tick", a.cfg.scheduleTick, "EventMQ: how often each pod checks for due schedules")
	fs.DurationVar(&a.cfg.queueTTL, "eventmq-queue-ttl", a.cfg.queueTTL, "EventMQ: a queue no worker declared for this long becomes unknown (its REQUESTs go to default)")
	fs.BoolVar(&a.cfg.exactCompletion, "eventmq-exact-completion", a.cfg.exactCompletion,
		"EventMQ: forward jobs without reply-requested with reply-requested added, so that each completion names its job "+
			"(otherwise a READY completes the oldest such job of the worker: a worker dying after finishing jobs out of order may leave one unfinished job acknowledged)")
	fs.IntVar(&a.cfg.lanes, "eventmq-submit-lanes", a.cfg.lanes, "EventMQ: REQUESTs/SCHEDULEs stored at once per pod (one client's are stored in order, in one lane)")
}

// Assets declares the job work queue, the results stream and the KV buckets.
func (a *Adapter) Assets(n jetstream.Names) jetstream.Assets {
	return jetstream.Assets{
		Streams: []jetstream.StreamSpec{
			{Name: StreamJobs, Description: "EventMQ jobs: one subject per queue and msgid, removed when done",
				Subjects: []string{n.Subject("eventmq", "jobs", ">")}, Retention: jetstream.WorkQueue, Duplicates: 10 * time.Minute},
			{Name: StreamResults, Description: "EventMQ job results and dead-letter notes, keyed by msgid",
				Subjects: []string{n.Subject("eventmq", "results", ">")}, MaxAge: a.cfg.resultTTL, MaxMsgsPerSubject: 1},
		},
		Buckets: []jetstream.BucketSpec{
			{Name: BucketSchedules, Description: "EventMQ schedules by job hash"},
			{Name: BucketQueues, Description: "EventMQ queues declared by workers", TTL: a.cfg.queueTTL},
			{Name: BucketPods, Description: "EventMQ per-pod state (workers, schedulers, counters)", TTL: podSnapshotMaxAg},
		},
	}
}

func (a *Adapter) jobSubject(queue, msgid string) string {
	return a.js.Subject("eventmq", "jobs", jetstream.Token(queue), jetstream.Token(msgid))
}

func (a *Adapter) resultSubject(msgid string) string {
	return a.js.Subject("eventmq", "results", jetstream.Token(msgid))
}

// Start opens the sockets and starts the broker.
func (a *Adapter) Start(ctx context.Context, env *bridge.Env) error {
	if a.cfg.heartbeat <= 0 || a.cfg.hbTimeout <= 0 || a.cfg.lease < 100*time.Millisecond || a.cfg.pollWait <= 0 {
		return errors.New("eventmq: heartbeat interval/timeout, lease (>= 100ms) and poll wait must be positive")
	}
	if a.cfg.attempts < 1 || a.cfg.maxDeliver < 1 || a.cfg.scheduleTick <= 0 || a.cfg.queueTTL <= 0 || a.cfg.resultTTL <= 0 {
		return errors.New("eventmq: --eventmq-attempts and --eventmq-max-deliver must be >= 1, schedule tick and TTLs positive")
	}
	a.env, a.js, a.log = env, env.JS, env.Log
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.m = newMetrics(env.Registry)
	a.lanes = make([]chan func(), max(a.cfg.lanes, 1))
	for i := range a.lanes {
		a.lanes[i] = make(chan func(), 256)
		a.wg.Add(1)
		go func(ch chan func()) {
			defer a.wg.Done()
			for {
				select {
				case <-a.ctx.Done():
					return
				case fn := <-ch:
					fn()
				}
			}
		}(a.lanes[i])
	}
	a.flushNow = make(chan struct{}, 1)
	a.b = newBroker(a)
	a.queues = newQueueRegistry(a)
	a.sched = newScheduler(a)

	opts := func(name string) zmtp.Options {
		o := zmtp.Options{Name: name, Logger: env.Log, Registerer: env.Registry}
		setSize(&o.MaxMessageSize, env.ZMQMaxMessage)
		return o
	}
	var err error
	open := func(name string) (*zmtp.Router, error) {
		ln, ok := env.Listeners[name]
		if !ok {
			return nil, nil
		}
		r, err := serveRouter(a.ctx, ln, opts(name))
		if err != nil {
			return nil, fmt.Errorf("eventmq %s: %w", name, err)
		}
		return r, nil
	}
	if a.front, err = open(ListenFrontend); err != nil {
		return a.failStart(err)
	}
	if a.back, err = open(ListenBackend); err != nil {
		return a.failStart(err)
	}
	if a.admin, err = open(ListenAdmin); err != nil {
		return a.failStart(err)
	}
	if a.pubIn, err = open(ListenPubIn); err != nil {
		return a.failStart(err)
	}
	if ln, ok := env.Listeners[ListenPubOut]; ok {
		if a.pubOut, err = servePub(a.ctx, ln, opts(ListenPubOut)); err != nil {
			return a.failStart(fmt.Errorf("eventmq %s: %w", ListenPubOut, err))
		}
	}
	if err := a.queues.start(); err != nil {
		return a.failStart(err)
	}
	if err := a.sched.start(); err != nil {
		return a.failStart(err)
	}
	if a.pubOut != nil {
		a.pubSub, err = a.js.Subscribe(a.js.Subject("eventmq", "pub", ">"), "", a.onNATSPublish)
		if err != nil {
			return a.failStart(err)
		}
	}
	if a.ctlSub, err = a.js.Subscribe(a.js.Subject("eventmq", "control", "disconnect"), "", func(*jetstream.Msg) {
		a.b.kbyeAll()
	}); err != nil {
		return a.failStart(err)
	}
	a.registerAdminRoutes(env)
	a.loop(a.front, a.onFrontend)
	if a.back != nil {
		a.backLoop = a.newOrderedLoop(a.back, a.onBackend)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.backLoop.run()
		}()
	}
	a.loop(a.admin, a.onAdmin)
	a.loop(a.pubIn, a.onPubIn)
	a.events(a.front, a.onFrontendGone)
	a.events(a.back, a.onBackendGone)
	a.events(a.admin, nil)
	a.events(a.pubIn, nil)
	if a.pubOut != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for ev := range a.pubOut.Events() {
				a.connGauge(ev)
			}
		}()
	}
	a.every(a.cfg.heartbeat, a.b.heartbeat)
	a.every(max(a.cfg.lease/3, 50*time.Millisecond), a.b.extendLeases)
	a.every(a.cfg.pollWait, a.b.topUpAll)
	a.every(2*time.Second, a.updateDepths)
	a.wg.Add(1)
	go a.flusher()
	return nil
}

func (a *Adapter) failStart(err error) error {
	_ = a.Stop()
	return err
}

func (a *Adapter) every(d time.Duration, fn func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-a.ctx.Done():
				return
			case <-t.C:
				fn()
			}
		}
	}()
}

// loop receives from r and hands every message to fn, one at a time.
func (a *Adapter) loop(r *zmtp.Router, fn func(zmtp.Message)) {
	if r == nil {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			msg, err := r.Recv(a.ctx)
			if err != nil {
				return
			}
			fn(msg)
		}
	}()
}

func (a *Adapter) events(r *zmtp.Router, gone func(peer []byte)) {
	if r == nil {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for ev := range r.Events() {
			a.connGauge(ev)
			if ev.Kind == zmtp.PeerDisconnected && gone != nil && !a.stopping.Load() {
				gone(ev.Peer)
			}
		}
	}()
}

func (a *Adapter) connGauge(ev zmtp.PeerEvent) {
	switch ev.Kind {
	case zmtp.PeerConnected:
		a.env.Metrics.Connections.WithLabelValues(protocolName).Inc()
	case zmtp.PeerDisconnected:
		a.env.Metrics.Connections.WithLabelValues(protocolName).Dec()
	}
}

// knownCommands bound the label values of the message counters.
var knownCommands = map[string]bool{CmdRequest: true, CmdReply: true, CmdInform: true, CmdAck: true, CmdReady: true,
	CmdHeartbeat: true, CmdKBYE: true, CmdDisconnect: true, CmdSchedule: true, CmdUnschedule: true, CmdPublish: true,
	CmdStatus: true, CmdRouterShowWorkers: true, CmdRouterShowSchedulers: true, CmdHello: true}

func (a *Adapter) in(cmd string) {
	if !knownCommands[cmd] {
		cmd = "OTHER"
	}
	a.env.Metrics.MessagesIn.WithLabelValues(protocolName, cmd).Inc()
}
func (a *Adapter) out(cmd string) { a.env.Metrics.MessagesOut.WithLabelValues(protocolName, cmd).Inc() }
func (a *Adapter) fail(kind string) {
	a.env.Metrics.Errors.WithLabelValues(protocolName, kind).Inc()
}

// send sends an eMQP message with a fresh msgid to peer on r.
func (a *Adapter) send(r *zmtp.Router, peer []byte, cmd string, body ...string) error {
	if r == nil {
		return zmtp.ErrClosed
	}
	err := r.Send(a.ctx, peer, Encode(cmd, body...)...)
	if err == nil {
		a.out(cmd)
	}
	return err
}

// trigger asks the flusher to write this pod's snapshot soon.
func (a *Adapter) trigger() {
	select {
	case a.flushNow <- struct{}{}:
	default:
	}
}

// Drain stops taking jobs for local workers and waits for the jobs they run; what is still
// running when ctx ends goes back to the queue.
func (a *Adapter) Drain(ctx context.Context) error {
	a.draining.Store(true)
	if a.b == nil {
		return nil
	}
	a.b.stopFilling()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for a.b.inflightCount() > 0 {
		select {
		case <-ctx.Done():
			a.b.requeueAll("pod draining")
			return nil
		case <-t.C:
		}
	}
	return nil
}

// Stop closes every socket and stops every goroutine. Jobs still leased by this pod are not given
// back here (a crashed pod cannot either): their leases run out and JetStream redelivers them.
func (a *Adapter) Stop() error {
	a.stopOnce.Do(func() {
		a.stopping.Store(true)
		if a.cancel != nil {
			a.cancel()
		}
		for _, s := range []*jetstream.Subscription{a.pubSub, a.ctlSub} {
			if s != nil {
				_ = s.Unsubscribe()
			}
		}
		for _, r := range []*zmtp.Router{a.front, a.back, a.admin, a.pubIn} {
			if r != nil {
				_ = r.Close()
			}
		}
		if a.pubOut != nil {
			_ = a.pubOut.Close()
		}
		if a.b != nil {
			a.b.stopFilling()
			a.b.wg.Wait()
			a.b.closePullers()
		}
		a.wg.Wait()
	})
	return nil
}

// setSize assigns a size whatever integer type the zmtp option has.
func setSize[T int | int64](dst *T, v int) { *dst = T(v) }

// inLane runs fn on the lane of peer: what one client sends is stored in the order it was sent
// (the original router handles a client's messages one after the other). It waits while the lane
// is full.
func (a *Adapter) inLane(peer []byte, fn func()) {
	h := uint32(2166136261)
	for _, c := range peer {
		h = (h ^ uint32(c)) * 16777619
	}
	select {
	case a.lanes[h%uint32(len(a.lanes))] <- fn:
	case <-a.ctx.Done():
	}
}

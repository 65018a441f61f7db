// Package zerotask serves the ZeroTask JSON-RPC 2.0 task broker (joshmarshall/zerotask) on top of
// JetStream: a ZeroMQ ROUTER for the original REQ clients and nodes, a PUB socket for its
// notifications, and the same methods over HTTP (POST /api/v1/zerotask/rpc) and NATS
// request-reply (zerotask.rpc). Tasks, nodes and clients are KV records; every unfinished task
// has a message in a work queue whose lease drives re-announcement and the requeueing of tasks
// whose node was lost. See /work/shared/specs/zerotask.md and schemas/zerotask/subjects.md.
package zerotask

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/jetstream"
)

const protocol = "zerotask"

// Adapter is the ZeroTask protocol adapter.
type Adapter struct {
	cfg         Config
	reqTimeout  time.Duration
	maxInFlight int
	heartbeat   time.Duration
	watchBuffer int

	env    *bridge.Env
	log    *slog.Logger
	b      *Broker
	router *zmtp.Router
	pub    *zmtp.Pub

	ctx       context.Context // everything; cancelled by Stop
	cancel    context.CancelFunc
	recvStop  context.CancelFunc // the ZeroMQ receive loop; cancelled by Drain
	recvCtx   context.Context
	wg        sync.WaitGroup // loops
	reqWG     sync.WaitGroup // HTTP and NATS requests in flight
	zmqWG     sync.WaitGroup // ZeroMQ request workers
	drainMu   sync.RWMutex
	sem       chan struct{}
	kick      chan struct{}
	rpcSub    *jetstream.Subscription
	eventSub  *jetstream.Subscription
	stopWatch func()
	draining  bool // under drainMu
	stopOnce  sync.Once

	epoch   atomic.Pointer[reqEpoch]
	epochMu sync.Mutex

	// peers interns the routing ids of open ZeroMQ connections (a request's caller needs it
	// as a string).
	peerMu sync.RWMutex
	peers  map[string]string

	// outReply and outNotify are MessagesOut{zerotask, reply|notification}, resolved once (nil
	// without metrics).
	outReply, outNotify prometheus.Counter
}

// maxPeers bounds the interned routing ids (ids of requests answered after their connection
// closed stay until the map is cleared).
const maxPeers = 65536

// peerKey is the routing id as a string, allocated once per connection.
func (a *Adapter) peerKey(id []byte) string {
	a.peerMu.RLock()
	s, ok := a.peers[string(id)]
	a.peerMu.RUnlock()
	if ok {
		return s
	}
	s = string(id)
	a.peerMu.Lock()
	if a.peers == nil || len(a.peers) >= maxPeers {
		a.peers = map[string]string{}
	}
	a.peers[s] = s
	a.peerMu.Unlock()
	return s
}

// forgetPeer drops a closed connection's interned routing id.
func (a *Adapter) forgetPeer(id []byte) {
	a.peerMu.Lock()
	delete(a.peers, string(id))
	a.peerMu.Unlock()
}

// New returns the ZeroTask adapter; its configuration comes from the flags it registers.
func New() *Adapter {
	return &Adapter{cfg: Config{ResultTTL: 24 * time.Hour, NodeTimeout: 60 * time.Second, Lease: 5 * time.Second, MaxAttempts: 5},
		reqTimeout: 10 * time.Second, maxInFlight: 256, heartbeat: 10 * time.Second, watchBuffer: 64}
}

// Name implements bridge.Adapter.
func (a *Adapter) Name() string { return protocol }

// Listeners implements bridge.Adapter.
func (a *Adapter) Listeners() []bridge.ListenerSpec {
	return []bridge.ListenerSpec{
		{Name: "zerotask", Flag: "zerotask-listen", Default: ":5555", Usage: "ZeroTask ROUTER listener (REQ clients and nodes)"},
		{Name: "zerotask-pub", Flag: "zerotask-pub-listen", Default: ":5556", Usage: "ZeroTask PUB listener (notifications)"},
	}
}

// Flags implements bridge.Adapter.
func (a *Adapter) Flags(fs *pflag.FlagSet) {
	fs.DurationVar(&a.cfg.ResultTTL, "zerotask-result-ttl", a.cfg.ResultTTL, "ZeroTask: how long a task's result or error is kept after client_task_result fetched it")
	fs.DurationVar(&a.cfg.NodeTimeout, "zerotask-node-timeout", a.cfg.NodeTimeout, "ZeroTask: a node neither connected nor heard of (node_heartbeat) for this long is dropped and its tasks requeued")
	fs.DurationVar(&a.cfg.Lease, "zerotask-lease", a.cfg.Lease, "ZeroTask: how often a waiting task is announced again and an assigned task's node checked")
	fs.IntVar(&a.cfg.MaxAttempts, "zerotask-max-attempts", a.cfg.MaxAttempts, "ZeroTask: a task whose node is lost this many times fails and is dead-lettered")
	fs.DurationVar(&a.reqTimeout, "zerotask-request-timeout", a.reqTimeout, "ZeroTask: a request that cannot complete (JetStream unreachable) is answered -32603 after this long")
	fs.IntVar(&a.maxInFlight, "zerotask-max-inflight", a.maxInFlight, "ZeroTask: requests served at once by this pod (beyond it, ZeroMQ peers wait)")
	fs.DurationVar(&a.heartbeat, "zerotask-heartbeat", a.heartbeat, "ZeroTask: ZMTP PING interval to detect dead connections (0 = off)")
}

// Assets implements bridge.Adapter.
func (a *Adapter) Assets(n jetstream.Names) jetstream.Assets {
	lease := a.cfg.Lease
	if lease <= 0 {
		lease = 5 * time.Second
	}
	return jetstream.Assets{
		Streams: []jetstream.StreamSpec{{Name: streamQueue, Description: "ZeroTask: one message per unfinished task, zerotask.queue.<method>.<task>",
			Subjects: []string{n.Subject("zerotask", "queue", ">")}, Retention: jetstream.WorkQueue, Duplicates: 10 * time.Minute}},
		Consumers: []jetstream.ConsumerSpec{{Stream: streamQueue, Durable: consumerDog,
			Description: "ZeroTask watchdog: re-announces waiting tasks, requeues tasks of lost nodes",
			AckWait:     lease, MaxAckPending: 100000}},
		Buckets: []jetstream.BucketSpec{
			{Name: bucketTasks, Description: "ZeroTask tasks by full id", LimitMarkerTTL: 10 * time.Minute},
			{Name: bucketNodes, Description: "ZeroTask nodes by id"},
			{Name: bucketClient, Description: "ZeroTask clients by id"},
		},
	}
}

func (a *Adapter) validate() error {
	switch {
	case a.cfg.ResultTTL < time.Second:
		return errors.New("--zerotask-result-ttl must be at least 1s")
	case a.cfg.NodeTimeout < 100*time.Millisecond:
		return errors.New("--zerotask-node-timeout must be at least 100ms")
	case a.cfg.Lease < 100*time.Millisecond:
		return errors.New("--zerotask-lease must be at least 100ms")
	case a.cfg.MaxAttempts < 1:
		return errors.New("--zerotask-max-attempts must be at least 1")
	case a.reqTimeout < 100*time.Millisecond:
		return errors.New("--zerotask-request-timeout must be at least 100ms")
	case a.maxInFlight < 1:
		return errors.New("--zerotask-max-inflight must be at least 1")
	}
	return nil
}

// Start implements bridge.Adapter.
func (a *Adapter) Start(ctx context.Context, env *bridge.Env) error {
	if err := a.validate(); err != nil {
		return err
	}
	a.env, a.log = env, env.Log
	if env.Metrics != nil {
		a.outReply = env.Metrics.MessagesOut.WithLabelValues(protocol, "reply")
		a.outNotify = env.Metrics.MessagesOut.WithLabelValues(protocol, "notification")
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.recvCtx, a.recvStop = context.WithCancel(a.ctx)
	a.sem = make(chan struct{}, a.maxInFlight)
	a.kick = make(chan struct{}, 1)
	a.b = newBroker(a.cfg, env.JS, a.log, env.PodID, newBrokerMetrics(env.Metrics, env.Registry))
	if err := a.b.open(ctx); err != nil {
		a.cancel()
		return fmt.Errorf("zerotask: %w", err)
	}
	a.b.reannounce = func() {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
	if err := a.startSockets(); err != nil {
		a.shutdown()
		return err
	}
	if err := a.startNATS(ctx); err != nil {
		a.shutdown()
		return err
	}
	if env.Admin != nil {
		a.routes(env.Admin)
	}
	a.loop(a.cfg.NodeTimeout/4, a.b.refresh)
	a.loop(a.cfg.NodeTimeout/2, a.b.sweep)
	a.wg.Add(2)
	go a.reannouncer()
	go func() {
		defer a.wg.Done()
		a.b.runFetched(a.ctx)
	}()
	return nil
}

func (a *Adapter) startSockets() error {
	opts := zmtp.Options{Logger: a.log, Registerer: a.env.Registry, HeartbeatInterval: a.heartbeat}
	setSize(&opts.MaxMessageSize, a.env.ZMQMaxMessage)
	if ln := a.env.Listeners["zerotask"]; ln != nil {
		opts.Name = "zerotask"
		r, err := serveRouter(a.ctx, ln, opts)
		if err != nil {
			return err
		}
		a.router = r
		a.b.connected = func(conn string) bool { return r.Connected([]byte(conn)) }
		for range a.maxInFlight {
			a.zmqWG.Add(1)
			go a.recvLoop()
		}
		a.wg.Add(1)
		go a.routerEvents()
	}
	if ln := a.env.Listeners["zerotask-pub"]; ln != nil {
		opts.Name = "zerotask-pub"
		opts.HeartbeatInterval = a.heartbeat
		p, err := servePub(a.ctx, ln, opts)
		if err != nil {
			return err
		}
		a.pub = p
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for ev := range p.Events() {
				if ev.Kind == zmtp.PeerConnected {
					a.b.reannounce() // a late subscriber learns about waiting tasks
				}
			}
		}()
	}
	return nil
}

// setSize sets a size option whichever integer type the zmtp package gives it.
func setSize[T int | int64](p *T, v int) { *p = T(v) }

func (a *Adapter) startNATS(ctx context.Context) error {
	js := a.env.JS
	events, err := js.Subscribe(js.Subject("zerotask", "events", "*"), "", func(m *jetstream.Msg) {
		if strings.HasSuffix(m.Subject, "."+evResultReady) {
			a.b.releaseFromEvent(m.Data)
		}
		if a.pub == nil || a.pub.Subscribers() == 0 {
			return
		}
		a.forward(m.Data)
		if bytes.HasPrefix(m.Data, taskReadyPrefix) {
			// The spec's name for the same notification, for nodes written against the spec.
			a.forward(append(append([]byte(nil), brokerNewTaskPrefix...), m.Data[len(taskReadyPrefix):]...))
		}
	})
	if err != nil {
		return fmt.Errorf("zerotask: %w", err)
	}
	a.eventSub = events
	sub, err := js.Subscribe(js.Subject("zerotask", "rpc"), "zerotask", func(m *jetstream.Msg) {
		if !a.acquire() {
			return
		}
		go func() {
			defer a.release()
			rctx, cancel := context.WithTimeout(a.ctx, a.reqTimeout)
			defer cancel()
			out := a.b.Handle(rctx, caller{transport: viaNATS}, m.Data)
			if m.Reply != "" {
				if err := m.Respond(out, nil); err != nil {
					a.log.Debug("zerotask: nats reply", "err", err)
				}
			}
		}()
	})
	if err != nil {
		return fmt.Errorf("zerotask: %w", err)
	}
	a.rpcSub = sub
	cons, err := js.Consumer(ctx, streamQueue, consumerDog)
	if err != nil {
		return fmt.Errorf("zerotask: %w", err)
	}
	stop, err := cons.Consume(func(j *jetstream.Job) {
		if j.Deliveries <= 1 {
			a.b.watch(a.ctx, j) // a fresh delivery is only held (no JetStream call, no timer)
			return
		}
		wctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		defer cancel()
		a.b.watch(wctx, j)
	}, a.watchBuffer)
	if err != nil {
		return fmt.Errorf("zerotask: %w", err)
	}
	a.stopWatch = stop
	return nil
}

var (
	taskReadyPrefix     = []byte(`{"jsonrpc": "2.0", "method": "` + eventMethods[evTaskReady] + `", `)
	brokerNewTaskPrefix = []byte(`{"jsonrpc": "2.0", "method": "` + eventMethods[evBrokerNewTask] + `", `)
)

// forward sends a notification frame to this pod's PUB subscribers.
func (a *Adapter) forward(frame []byte) {
	if _, err := a.pub.Publish(frame); err == nil && a.outNotify != nil {
		a.outNotify.Inc()
	}
}

// acquire takes a request slot (waiting while maxInFlight requests run); false once draining.
func (a *Adapter) acquire() bool {
	a.drainMu.RLock()
	defer a.drainMu.RUnlock()
	if a.draining {
		return false
	}
	select {
	case a.sem <- struct{}{}:
		a.reqWG.Add(1)
		return true
	case <-a.ctx.Done():
		return false
	}
}

func (a *Adapter) release() {
	<-a.sem
	a.reqWG.Done()
}

// recvLoop is one of maxInFlight ZeroMQ request workers.
func (a *Adapter) recvLoop() {
	defer a.zmqWG.Done()
	for {
		m, err := a.router.Recv(a.recvCtx)
		if err != nil {
			return
		}
		a.serveZMQ(m)
	}
}

// reqEpoch is a request context shared by the ZeroMQ requests that start within a quarter of the
// request timeout: each gets between one and 1.25 timeouts, and a request costs no timer.
type reqEpoch struct {
	ctx    context.Context
	cancel context.CancelFunc // not needed: the context ends at its deadline or with the adapter's
	until  time.Time          // requests starting before this take ctx
}

func (a *Adapter) requestContext() context.Context {
	now := time.Now()
	if e := a.epoch.Load(); e != nil && now.Before(e.until) {
		return e.ctx
	}
	a.epochMu.Lock()
	defer a.epochMu.Unlock()
	e := a.epoch.Load()
	if e != nil && now.Before(e.until) {
		return e.ctx
	}
	quarter := a.reqTimeout / 4
	ne := &reqEpoch{until: now.Add(quarter)}
	ne.ctx, ne.cancel = context.WithDeadline(a.ctx, now.Add(a.reqTimeout+quarter))
	a.epoch.Store(ne)
	return ne.ctx
}

var errFrames = rpcErr(CodeInvalidRequest, "Invalid JSON-RPC request: one JSON-RPC object per frame.")

func (a *Adapter) serveZMQ(m zmtp.Message) {
	ctx := a.requestContext()
	var out []byte
	if body := m.Body(); len(body) != 1 {
		a.b.m.request("invalid", CodeInvalidRequest)
		out = EncodeError(nil, errFrames)
	} else {
		out = a.b.Handle(ctx, caller{transport: viaZMQ, conn: a.peerKey(m.Peer)}, body[0])
	}
	// The reply is queued even when the request's own deadline has passed.
	if err := a.router.Reply(a.ctx, m, out); err != nil {
		a.log.Debug("zerotask: reply", "peer", fmt.Sprintf("%x", m.Peer), "err", err)
		return
	}
	if a.outReply != nil {
		a.outReply.Inc()
	}
}

func (a *Adapter) routerEvents() {
	defer a.wg.Done()
	for ev := range a.router.Events() {
		switch ev.Kind {
		case zmtp.PeerConnected:
			if a.env.Metrics != nil {
				a.env.Metrics.Connections.WithLabelValues(protocol).Inc()
			}
		case zmtp.PeerDisconnected:
			a.forgetPeer(ev.Peer)
			if a.env.Metrics != nil {
				a.env.Metrics.Connections.WithLabelValues(protocol).Dec()
			}
			if a.ctx.Err() != nil {
				continue // stopping: the records age out like a dead pod's
			}
			ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
			a.b.dropConn(ctx, string(ev.Peer))
			cancel()
		}
	}
}

// loop runs fn every period until Stop.
func (a *Adapter) loop(period time.Duration, fn func(context.Context)) {
	period = max(period, 50*time.Millisecond)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-a.ctx.Done():
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(a.ctx, period+10*time.Second)
				fn(ctx)
				cancel()
			}
		}
	}()
}

// reannouncer announces waiting tasks when a node or a subscriber connects: at once (at most once
// a second), then again 250 ms and 1 s later, for subscribers whose subscription was still on its
// way (a PUB socket cannot tell when a new subscriber's subscription arrives).
func (a *Adapter) reannouncer() {
	defer a.wg.Done()
	var later <-chan time.Time
	var last time.Time
	again := 0
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.kick:
			if later == nil {
				later = time.After(250 * time.Millisecond)
			}
			again = 1
			if time.Since(last) < time.Second {
				continue
			}
		case <-later:
			later = nil
			if again > 0 {
				again--
				later = time.After(750 * time.Millisecond)
			}
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(a.ctx, 30*time.Second)
		a.b.announceWaiting(ctx)
		cancel()
	}
}

// Drain implements bridge.Adapter: no new requests; those in flight finish.
func (a *Adapter) Drain(ctx context.Context) error {
	if a.ctx == nil {
		return nil
	}
	a.drainMu.Lock()
	a.draining = true
	a.drainMu.Unlock()
	if a.rpcSub != nil {
		_ = a.rpcSub.Unsubscribe()
	}
	a.recvStop()
	done := make(chan struct{})
	go func() {
		a.zmqWG.Wait()
		a.reqWG.Wait()
		a.b.flushFetched(ctx)
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("zerotask drain: %w", ctx.Err())
	}
}

// Stop implements bridge.Adapter.
func (a *Adapter) Stop() error {
	if a.ctx == nil {
		return nil
	}
	a.shutdown()
	return nil
}

func (a *Adapter) shutdown() {
	a.stopOnce.Do(func() {
		a.cancel()
		if a.rpcSub != nil {
			_ = a.rpcSub.Unsubscribe()
		}
		if a.eventSub != nil {
			_ = a.eventSub.Unsubscribe()
		}
		if a.stopWatch != nil {
			a.stopWatch()
		}
		if a.router != nil {
			_ = a.router.Close()
		}
		if a.pub != nil {
			_ = a.pub.Close()
		}
		a.wg.Wait()
		a.zmqWG.Wait()
		a.drainMu.Lock()
		a.draining = true
		a.drainMu.Unlock()
		a.reqWG.Wait()
		a.b.close()
	})
}

// Package conformance is the one suite of guarantees every protocol adapter runs: persist before
// acknowledging, redelivery after the pod holding the work dies, de-duplication of a retried
// submission, and dead-lettering after the maximum number of attempts.
//
// Each adapter implements a Driver in its own tests (it knows how its protocol submits and takes
// work) and calls Run. The suite starts one embedded NATS server and as many pods as it needs,
// each with its own NATS connection, and kills pods the way a crash would: the adapter is stopped
// without draining and its connection to NATS is closed.
package conformance

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jetbridge/jetbridge/bridge"
	"github.com/jetbridge/jetbridge/bridge/bridgetest"
	"github.com/jetbridge/jetbridge/jetstream"
	"github.com/jetbridge/jetbridge/jetstream/jstest"
)

// Driver speaks one protocol for the suite. Every method fails the test itself on error.
type Driver interface {
	// NewAdapter returns a fresh adapter and the flags to start it with (short leases, a small
	// maximum of attempts: see Options).
	NewAdapter() (bridge.Adapter, []string)
	// Setup runs once, on the first pod, before any test (e.g. create a pipeline, register a node).
	Setup(t *testing.T, p *bridgetest.Pod)
	// Submit hands one unit of work to the protocol through pod p, the way the protocol's client
	// does, with key as the client's own idempotency key (message id, offset, request id …). It
	// returns once the protocol has told the client the work is accepted.
	Submit(t *testing.T, p *bridgetest.Pod, key string, payload []byte)
	// Receive takes one unit of work through the protocol on pod p, the way its workers do, waiting
	// up to within. It returns nil when nothing arrives.
	Receive(t *testing.T, p *bridgetest.Pod, within time.Duration) Delivery
}

// Delivery is one unit of work a worker holds.
type Delivery interface {
	// Payload is the payload given to Submit, as the worker sees it.
	Payload() []byte
	// Complete tells the protocol the work is done (ack, finish, result …).
	Complete(t *testing.T)
	// Fail tells the protocol this attempt failed and may be retried (nack, fail …).
	Fail(t *testing.T)
}

// Options describe what the adapter was configured with in NewAdapter.
type Options struct {
	// Lease is how long a held unit stays with a dead worker before it is redelivered.
	Lease time.Duration
	// MaxAttempts is the number of failed attempts after which work is dead-lettered.
	MaxAttempts int
	// DeadLetter is the subject filter (without prefix) of the adapter's dead letters, e.g.
	// "dlq.tracker.>"; empty skips the dead-letter test (say why in SkipDeadLetter).
	DeadLetter string
	// DeadLetterStream is the logical stream holding dead letters (default jetstream.DeadLetterStream).
	DeadLetterStream string
	// SkipDeadLetter explains a protocol without dead-lettering.
	SkipDeadLetter string
	// SkipDeDup explains a protocol whose clients send no idempotency key (the test is skipped).
	SkipDeDup string
	// Quiet is how long Receive must find nothing to count as "nothing there" (default 300 ms).
	Quiet time.Duration
}

// env is one suite run: a NATS server and pods on it.
type env struct {
	t      *testing.T
	srv    *jetstream.Embedded
	d      Driver
	setup  bool
	admin  *jetstream.Client
	opts   Options
	nextID int
}

// pod starts a pod with its own NATS connection.
func (e *env) pod() *bridgetest.Pod {
	e.t.Helper()
	js := jstest.Connect(e.t, e.srv)
	a, args := e.d.NewAdapter()
	p := bridgetest.Start(e.t, js, a, args...)
	if !e.setup {
		e.setup = true
		e.d.Setup(e.t, p)
	}
	return p
}

// kill stops a pod the way a crash would.
func (e *env) kill(p *bridgetest.Pod) {
	p.Kill(e.t)
	p.Env.JS.Close()
}

func (e *env) key(name string) string {
	e.nextID++
	return fmt.Sprintf("%s-%d-%d", name, e.nextID, time.Now().UnixNano())
}

func (e *env) expectNothing(p *bridgetest.Pod, why string) {
	e.t.Helper()
	if d := e.d.Receive(e.t, p, e.opts.Quiet); d != nil {
		e.t.Fatalf("%s: got an unexpected delivery %q", why, d.Payload())
	}
}

func (e *env) receive(p *bridgetest.Pod, within time.Duration, want []byte, why string) Delivery {
	e.t.Helper()
	d := e.d.Receive(e.t, p, within)
	if d == nil {
		e.t.Fatalf("%s: nothing delivered within %v", why, within)
	}
	if !bytes.Equal(d.Payload(), want) {
		e.t.Fatalf("%s: delivered %q, want %q", why, d.Payload(), want)
	}
	return d
}

// Run runs every shared guarantee as a subtest, each with its own NATS server.
func Run(t *testing.T, d Driver, opts Options) {
	if opts.Quiet == 0 {
		opts.Quiet = 300 * time.Millisecond
	}
	if opts.DeadLetterStream == "" {
		opts.DeadLetterStream = jetstream.DeadLetterStream
	}
	if opts.Lease <= 0 {
		t.Fatal("conformance: Options.Lease is required")
	}
	newEnv := func(t *testing.T) *env {
		srv := jstest.Server(t)
		return &env{t: t, srv: srv, d: d, opts: opts, admin: jstest.Connect(t, srv)}
	}
	redeliver := 3*opts.Lease + 10*time.Second

	t.Run("PersistBeforeAck", func(t *testing.T) {
		// Work accepted by a pod that dies right after is served by another pod.
		e := newEnv(t)
		a := e.pod()
		payload := []byte("persisted " + e.key("p"))
		e.d.Submit(t, a, e.key("persist"), payload)
		e.kill(a)
		b := e.pod()
		e.receive(b, redeliver, payload, "after the accepting pod died").Complete(t)
		e.expectNothing(b, "completed work must not come back")
	})

	t.Run("RedeliveryAfterPodDies", func(t *testing.T) {
		// Work held by a worker on a pod that dies comes back, on another pod, after the lease.
		e := newEnv(t)
		a, b := e.pod(), e.pod()
		payload := []byte("held " + e.key("r"))
		e.d.Submit(t, a, e.key("redeliver"), payload)
		e.receive(b, redeliver, payload, "first delivery")
		e.kill(b)
		c := e.pod()
		e.receive(c, redeliver, payload, "redelivery after the holding pod died").Complete(t)
		e.expectNothing(c, "completed work must not come back")
	})

	t.Run("DeDuplicationOnRetry", func(t *testing.T) {
		// A client retrying a submission (same key, maybe through another pod) creates one unit.
		if opts.SkipDeDup != "" {
			t.Skip(opts.SkipDeDup)
		}
		e := newEnv(t)
		a, b := e.pod(), e.pod()
		key := e.key("dedup")
		payload := []byte("once " + key)
		e.d.Submit(t, a, key, payload)
		e.d.Submit(t, b, key, payload)
		e.receive(a, redeliver, payload, "the submission").Complete(t)
		e.expectNothing(a, "the retried submission must not create a second unit")
	})

	t.Run("DeadLetterAfterMaxAttempts", func(t *testing.T) {
		if opts.DeadLetter == "" {
			t.Skip(opts.SkipDeadLetter)
		}
		e := newEnv(t)
		a := e.pod()
		payload := []byte("poison " + e.key("dl"))
		e.d.Submit(t, a, e.key("deadletter"), payload)
		for i := 1; i <= opts.MaxAttempts; i++ {
			e.receive(a, redeliver, payload, fmt.Sprintf("attempt %d of %d", i, opts.MaxAttempts)).Fail(t)
		}
		subject := e.admin.Subject(opts.DeadLetter)
		jstest.Eventually(t, redeliver, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			counts, err := e.admin.SubjectCounts(ctx, opts.DeadLetterStream, subject)
			if err != nil {
				return err
			}
			for subj := range counts {
				info, err := e.admin.LastMsg(ctx, opts.DeadLetterStream, subj)
				if err == nil && bytes.Contains(info.Data, payload) {
					return nil
				}
			}
			return fmt.Errorf("no dead letter on %s holds %q (subjects %v)", subject, payload, counts)
		})
		e.expectNothing(a, "dead-lettered work must not be delivered again")
	})
}

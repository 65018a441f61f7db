package eventmq

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
)

// orderedLoop receives a Router's messages on one goroutine and runs posted functions (e.g. "this
// peer disconnected") on the same goroutine, after every message the Router had already queued
// when they were posted. A zmtp peer's reader queues each message before it reports the peer
// gone, so a worker that sends its result REPLY and closes at once has the REPLY handled before
// its disconnection: without this, the disconnection (on the Events goroutine) could bury the
// worker first, put its finished job back in the queue and drop the REPLY of an unknown worker.
type orderedLoop struct {
	a  *Adapter
	r  *zmtp.Router
	fn func(zmtp.Message)

	mu      sync.Mutex
	pending []func()
	wake    context.Context
	cancel  context.CancelFunc
}

// drainQuiet is how long the loop waits for one more queued message before it runs what was
// posted: a queued message is returned at once, so this only delays the posted functions.
const drainQuiet = 20 * time.Millisecond

func (a *Adapter) newOrderedLoop(r *zmtp.Router, fn func(zmtp.Message)) *orderedLoop {
	l := &orderedLoop{a: a, r: r, fn: fn}
	l.wake, l.cancel = context.WithCancel(a.ctx)
	return l
}

// post runs fn on the loop after the messages queued so far.
func (l *orderedLoop) post(fn func()) {
	l.mu.Lock()
	l.pending = append(l.pending, fn)
	l.cancel()
	l.mu.Unlock()
}

func (l *orderedLoop) run() {
	a := l.a
	for {
		l.mu.Lock()
		wake := l.wake
		l.mu.Unlock()
		msg, err := l.r.Recv(wake)
		if err == nil {
			l.fn(msg)
			continue
		}
		if a.ctx.Err() != nil || errors.Is(err, zmtp.ErrClosed) {
			return
		}
		l.mu.Lock()
		fns := l.pending
		l.pending = nil
		l.wake, l.cancel = context.WithCancel(a.ctx)
		l.mu.Unlock()
		if !l.drain() {
			return
		}
		for _, f := range fns {
			f()
		}
	}
}

// drain handles the messages queued now: at most the Router's receive queue length of them (all
// that were queued when it started), or until the queue stays empty for drainQuiet. It reports
// false when the Router or the adapter is closed.
func (l *orderedLoop) drain() bool {
	for i := 0; i < zmtp.DefaultRecvHWM; i++ {
		ctx, cancel := context.WithTimeout(l.a.ctx, drainQuiet)
		msg, err := l.r.Recv(ctx)
		cancel()
		if err != nil {
			if l.a.ctx.Err() != nil || errors.Is(err, zmtp.ErrClosed) {
				return false
			}
			return true
		}
		l.fn(msg)
	}
	return true
}

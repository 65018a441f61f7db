package eventmq

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// Load drives the broker the way the benchmark scenario "eventmq" measures it: Go DEALER job
// managers (one slot each) answer every job at once with a result REPLY and a READY, and clients
// send REQUESTs with reply-requested; a job counts when its result arrives on
// eventmq.results.<msgid> (end to end: stored, dispatched, done, result stored and published).
type Load struct {
	js      *jetstream.Client
	clients []*Dealer
	workers []*Dealer
	sub     *jetstream.Subscription
	payload string

	mu      sync.Mutex
	waiting map[string]chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartLoad connects workers job managers to backend and clients clients to frontend.
func StartLoad(ctx context.Context, js *jetstream.Client, frontend, backend string, workers, clients, payloadSize int) (*Load, error) {
	l := &Load{js: js, waiting: map[string]chan struct{}{}}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	pad := make([]byte, max(payloadSize-80, 0))
	for i := range pad {
		pad[i] = 'x'
	}
	b, _ := json.Marshal([]any{"run", map[string]any{"callable": "noop", "path": "bench.jobs", "args": []any{string(pad)},
		"kwargs": map[string]any{}, "class_args": []any{}, "class_kwargs": map[string]any{}}})
	l.payload = string(b)
	var err error
	prefix := js.Subject("eventmq", "results") + "."
	l.sub, err = js.Subscribe(prefix+">", "", func(m *jetstream.Msg) {
		id := strings.TrimPrefix(m.Subject, prefix) // msgids made by NewID need no unescaping
		l.mu.Lock()
		ch := l.waiting[id]
		delete(l.waiting, id)
		l.mu.Unlock()
		if ch != nil {
			close(ch)
		}
	})
	if err != nil {
		return nil, err
	}
	for i := 0; i < workers; i++ {
		w, err := DialDealer(ctx, backend, fmt.Sprintf("bench-worker-%d-%s", i, NewID()))
		if err != nil {
			l.Close()
			return nil, err
		}
		l.workers = append(l.workers, w)
		if err := w.Send(Encode(CmdInform, "", TypeWorker)...); err != nil {
			l.Close()
			return nil, err
		}
		l.wg.Add(2)
		go l.work(w)
		go l.beat(w)
	}
	for i := 0; i < max(clients, 1); i++ {
		c, err := DialDealer(ctx, frontend, "")
		if err != nil {
			l.Close()
			return nil, err
		}
		l.clients = append(l.clients, c)
		l.wg.Add(1)
		go func() { // drain the submission REPLYs
			defer l.wg.Done()
			for {
				if _, err := c.Recv(0); err != nil {
					return
				}
			}
		}()
	}
	return l, nil
}

// work answers like a JobManager with one worker process: READY after the first HEARTBEAT, then
// REPLY + READY per job.
func (l *Load) work(w *Dealer) {
	defer l.wg.Done()
	started := false
	for {
		fr, err := w.Recv(0)
		if err != nil {
			return
		}
		m, err := Parse(fr)
		if err != nil {
			continue
		}
		switch m.Command {
		case CmdHeartbeat:
			if !started {
				started = true
				_ = w.Send(Encode(CmdReady)...)
			}
		case CmdRequest:
			if len(m.Body) == 3 && string(m.Body[1]) == "reply-requested" {
				_ = w.SendMany(Encode(CmdReply, `{"value": null}`, m.MsgID), Encode(CmdReady))
			} else {
				_ = w.Send(Encode(CmdReady)...)
			}
		}
	}
}

func (l *Load) beat(w *Dealer) {
	defer l.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
			if err := w.Send(Encode(CmdHeartbeat, Timestamp(time.Now()))...); err != nil {
				return
			}
		}
	}
}

// Ready waits until the broker has dispatched to every worker at least once (all slots open).
func (l *Load) Ready(ctx context.Context) error {
	for i := 0; i < len(l.workers); i++ {
		if err := l.Do(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// Do runs one job end to end through client i.
func (l *Load) Do(ctx context.Context, i int) error {
	id := NewID()
	ch := make(chan struct{})
	l.mu.Lock()
	l.waiting[id] = ch
	l.mu.Unlock()
	c := l.clients[i%len(l.clients)]
	if err := c.Send(Message{Command: CmdRequest, MsgID: id, Body: [][]byte{[]byte(DefaultQueue), []byte("reply-requested"), []byte(l.payload)}}.Frames()...); err != nil {
		return err
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		l.mu.Lock()
		delete(l.waiting, id)
		l.mu.Unlock()
		return fmt.Errorf("job %s: %w", id, ctx.Err())
	}
}

// Close disconnects everything.
func (l *Load) Close() {
	l.cancel()
	if l.sub != nil {
		_ = l.sub.Unsubscribe()
	}
	for _, d := range append(append([]*Dealer(nil), l.workers...), l.clients...) {
		_ = d.Close()
	}
	l.wg.Wait()
}

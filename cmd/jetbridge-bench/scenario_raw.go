package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

var rawSeq atomic.Int64

// rawStream provisions a fresh work-queue stream and consumer for one raw run.
func rawStream(ctx context.Context, h *harness) (stream, subject string, cons *jetstream.Consumer, cleanup func(), err error) {
	n := rawSeq.Add(1)
	stream = fmt.Sprintf("BENCH_RAW_%d", n)
	subject = fmt.Sprintf("bench.raw%d.work", n)
	_, err = h.JS.Provision(ctx, jetstream.Assets{
		Streams: []jetstream.StreamSpec{{Name: stream, Subjects: []string{subject}, Retention: jetstream.WorkQueue}},
		Consumers: []jetstream.ConsumerSpec{{Stream: stream, Durable: "W", AckWait: 30 * time.Second, MaxDeliver: 5,
			MaxAckPending: 20000}},
	})
	if err != nil {
		return "", "", nil, nil, err
	}
	cons, err = h.JS.Consumer(ctx, stream, "W")
	return stream, subject, cons, func() {}, err
}

func init() {
	register(&scenario{
		name:  "raw-publish",
		about: "raw JetStream: synchronous publish of one message to a file-store stream",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			_, subject, _, cleanup, err := rawStream(ctx, h)
			if err != nil {
				return nil, nil, err
			}
			data := payloadOf(h.Payload)
			return func(ctx context.Context, _ int) error {
				_, err := h.JS.Publish(ctx, subject, data, jetstream.PubOpts{})
				return err
			}, cleanup, nil
		},
	})
	register(&scenario{
		name:  "raw-workqueue",
		about: "raw JetStream work queue: publish + fetch(1) + confirmed ack, one message through per op",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			_, subject, cons, cleanup, err := rawStream(ctx, h)
			if err != nil {
				return nil, nil, err
			}
			data := payloadOf(h.Payload)
			return func(ctx context.Context, _ int) error {
				if _, err := h.JS.Publish(ctx, subject, data, jetstream.PubOpts{}); err != nil {
					return err
				}
				jobs, err := cons.Fetch(ctx, 1, 5*time.Second)
				if err != nil {
					return err
				}
				if len(jobs) == 0 {
					return errors.New("fetch: nothing within 5s")
				}
				return jobs[0].Ack(ctx)
			}, cleanup, nil
		},
	})
}

// The run counters of the scenarios name the streams, subjects, clients and pipelines a run
// creates; they start from the clock so that client processes of one pod (each counting from its
// own start) never reuse a name.
func init() {
	base := time.Now().UnixNano() / 1000 % 1e12 * 1000
	for _, c := range []*atomic.Int64{&rawSeq, &rawReqSeq, &sinkRun, &trackerRun} {
		c.Store(base)
	}
}

package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jetbridge/jetbridge/adapters/eventmq"
)

func init() {
	register(&scenario{
		name: "eventmq",
		about: "EventMQ eMQP/1.0 over ZeroMQ: REQUEST with reply-requested → stored → READY slot pulls it → worker REPLY stored " +
			"and published on eventmq.results.<msgid> (one job end to end; one worker slot per concurrency)",
		baseline: "raw-workqueue",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			front, back := h.Addr("eventmq-frontend"), h.Addr("eventmq-backend")
			if front == "" || back == "" {
				return nil, nil, fmt.Errorf("the pod has no eventmq frontend/backend listener")
			}
			l, err := eventmq.StartLoad(ctx, h.JS, front, back, h.Concurrency, h.Concurrency, h.Payload)
			if err != nil {
				return nil, nil, err
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := l.Ready(rctx); err != nil {
				l.Close()
				return nil, nil, fmt.Errorf("eventmq workers not served: %w", err)
			}
			return l.Do, l.Close, nil
		},
	})
}

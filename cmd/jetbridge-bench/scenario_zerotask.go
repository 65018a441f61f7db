package main

import (
	"context"
	"fmt"

	"github.com/jetbridge/jetbridge/adapters/zerotask/ztclient"
)

// zerotaskWorker is one bench worker's ZeroTask client and node (REQ sockets, as the originals).
type zerotaskWorker struct {
	client, node *ztclient.Req
	cid, nid     string
}

const ztPrefix = "zerotask.broker."

func init() {
	register(&scenario{
		name:     "zerotask",
		about:    "ZeroTask over ZeroMQ: client_new_task → node_task_request → node_task_finished → client_task_result (4 REQ round trips)",
		baseline: "raw-workqueue",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			addr := h.Addr("zerotask")
			if addr == "" {
				return nil, nil, fmt.Errorf("the pod has no zerotask listener")
			}
			workers := make([]*zerotaskWorker, h.Concurrency)
			cleanup := func() {
				for _, w := range workers {
					if w != nil {
						w.client.Close()
						w.node.Close()
					}
				}
			}
			for i := range workers {
				c, err := ztclient.DialReq(ctx, addr)
				if err != nil {
					cleanup()
					return nil, nil, err
				}
				n, err := ztclient.DialReq(ctx, addr)
				if err != nil {
					c.Close()
					cleanup()
					return nil, nil, err
				}
				w := &zerotaskWorker{client: c, node: n}
				workers[i] = w
				if err := c.Call(ctx, ztPrefix+"client_connect", []any{}, &w.cid); err != nil {
					cleanup()
					return nil, nil, fmt.Errorf("client_connect: %w", err)
				}
				if err := n.Call(ctx, ztPrefix+"node_connect", []any{}, &w.nid); err != nil {
					cleanup()
					return nil, nil, fmt.Errorf("node_connect: %w", err)
				}
			}
			data := string(payloadOf(h.Payload))
			return func(ctx context.Context, i int) error {
				w := workers[i]
				var tid string
				if err := w.client.Call(ctx, ztPrefix+"client_new_task", []any{w.cid, "echo", []string{data}}, &tid); err != nil {
					return fmt.Errorf("client_new_task: %w", err)
				}
				var task map[string]any
				if err := w.node.Call(ctx, ztPrefix+"node_task_request", []any{w.nid, tid}, &task); err != nil || task == nil {
					return fmt.Errorf("node_task_request: %v (task %v)", err, task)
				}
				if err := w.node.Call(ctx, ztPrefix+"node_task_finished", []any{w.nid, tid, data}, nil); err != nil {
					return fmt.Errorf("node_task_finished: %w", err)
				}
				var res string
				if err := w.client.Call(ctx, ztPrefix+"client_task_result", []any{w.cid, tid}, &res); err != nil || res != data {
					return fmt.Errorf("client_task_result: %v", err)
				}
				return nil
			}, cleanup, nil
		},
	})
}

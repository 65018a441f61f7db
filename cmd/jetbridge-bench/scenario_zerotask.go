package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jetbridge/jetbridge/adapters/zerotask/ztclient"
)

// zerotaskWorker is one bench worker's ZeroTask client and node (REQ sockets, as the originals).
type zerotaskWorker struct {
	client, node               *ztclient.Req
	cid, nid                   string
	newTask, nodeArgs, cliArgs []byte // request params built once
	tid, buf                   []byte
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
			data := strconv.Quote(string(payloadOf(h.Payload)))
			for _, w := range workers {
				w.newTask = []byte(`[` + strconv.Quote(w.cid) + `, "echo", [` + data + `]]`)
				w.nodeArgs = []byte(`[` + strconv.Quote(w.nid) + `, `)
				w.cliArgs = []byte(`[` + strconv.Quote(w.cid) + `, `)
			}
			// Requests are built and replies checked without a generic JSON codec, so that the
			// load generator's own CPU stays small beside the pod's (ids are ASCII letters).
			return func(ctx context.Context, i int) error {
				w := workers[i]
				res, err := w.client.CallRaw(ctx, ztPrefix+"client_new_task", w.newTask)
				if err != nil || len(res) < 3 || res[0] != '"' {
					return fmt.Errorf("client_new_task: %v (%s)", err, res)
				}
				tid := append(w.tid[:0], res...) // quoted
				w.tid = tid
				p := append(append(w.buf[:0], w.nodeArgs...), tid...)
				if res, err = w.node.CallRaw(ctx, ztPrefix+"node_task_request", append(p, ']')); err != nil || len(res) == 0 || res[0] != '{' {
					return fmt.Errorf("node_task_request: %v (task %s)", err, res)
				}
				p = append(append(append(append(w.buf[:0], w.nodeArgs...), tid...), ", "...), data...)
				if res, err = w.node.CallRaw(ctx, ztPrefix+"node_task_finished", append(p, ']')); err != nil || string(res) != "true" {
					return fmt.Errorf("node_task_finished: %v (%s)", err, res)
				}
				p = append(append(w.buf[:0], w.cliArgs...), tid...)
				if res, err = w.client.CallRaw(ctx, ztPrefix+"client_task_result", append(p, ']')); err != nil || string(res) != data {
					return fmt.Errorf("client_task_result: %v (%.40s)", err, res)
				}
				w.buf = p
				return nil
			}, cleanup, nil
		},
	})
}

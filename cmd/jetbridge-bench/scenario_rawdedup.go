package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jetbridge/jetbridge/jetstream"
)

// raw-publish-dedup is raw-publish doing the storage work every Sink event needs: six header
// fields, a subject per device and a de-duplication id checked against a one-hour window. It
// shows what JetStream itself charges for that work; sink-ingest's official baseline stays the
// plain raw-publish of the issue.
func init() {
	register(&scenario{
		name:  "raw-publish-dedup",
		about: "raw JetStream: synchronous publish with six headers and a unique Nats-Msg-Id (1 h de-dup window), a subject per worker",
		setup: func(ctx context.Context, h *harness) (func(context.Context, int) error, func(), error) {
			n := rawSeq.Add(1)
			stream := fmt.Sprintf("BENCH_RAWDEDUP_%d", n)
			subject := fmt.Sprintf("bench.rawdedup%d", n)
			if _, err := h.JS.Provision(ctx, jetstream.Assets{Streams: []jetstream.StreamSpec{
				{Name: stream, Subjects: []string{subject + ".>"}, Duplicates: time.Hour}}}); err != nil {
				return nil, nil, err
			}
			data := payloadOf(h.Payload)
			seq := make([]uint64, h.Concurrency)
			return func(ctx context.Context, w int) error {
				seq[w]++
				off := strconv.FormatUint(seq[w], 10)
				hd := jetstream.Header{"Sink-Client": {"bench"}, "Sink-Event-Type": {"1"}, "Sink-Schema-Version": {"1"},
					"Sink-Key": {"a2V5"}, "Sink-Offset": {off}, "Sink-Timestamp": {"1618150125"}}
				_, err := h.JS.PublishLean(ctx, subject+".w"+strconv.Itoa(w), data, hd, "bench:"+strconv.Itoa(w)+":"+off)
				return err
			}, func() {}, nil
		},
	})
}

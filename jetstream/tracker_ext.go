package jetstream

import (
	"context"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// streamHandles caches bound stream handles per client and logical stream name, so that calls on
// a hot path cost one API round trip instead of two (binding a handle is itself a STREAM.INFO).
var streamHandles sync.Map // streamKey → jetstream.Stream

type streamKey struct {
	c      *Client
	stream string
}

func (c *Client) streamHandle(ctx context.Context, stream string) (jetstream.Stream, error) {
	k := streamKey{c, stream}
	if s, ok := streamHandles.Load(k); ok {
		return s.(jetstream.Stream), nil
	}
	s, err := c.js.Stream(ctx, c.names.Asset(stream))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	streamHandles.Store(k, s)
	return s, nil
}

// StreamSubjectCounts is SubjectCounts in one round trip: the number of stored messages per
// subject matching filter. On error the cached handle is dropped (the stream may have been
// recreated).
func (c *Client) StreamSubjectCounts(ctx context.Context, stream, filter string) (map[string]uint64, error) {
	s, err := c.streamHandle(ctx, stream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		streamHandles.Delete(streamKey{c, stream})
		return nil, fmt.Errorf("stream %s subjects %s: %w", stream, filter, err)
	}
	return info.State.Subjects, nil
}

package jetstream

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ConsumeDrain is Consume whose stop function drains instead of discarding: messages already
// pulled into the client's buffer are still passed to fn before stop returns, so that fn can hand
// them back at once (Retry) instead of leaving them leased until AckWait runs out. When stop
// returns, the pull subscription is gone from the server (messages given back afterwards are not
// redelivered to it).
func (c *Consumer) ConsumeDrain(fn func(*Job), buffer int) (stop func(), err error) {
	if buffer <= 0 {
		buffer = 1
	}
	cc, err := c.cons.Consume(func(m jetstream.Msg) { fn(c.wrap(m)) },
		jetstream.PullMaxMessages(buffer),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if !errors.Is(err, nats.ErrConnectionClosed) {
				c.c.log.Debug("consume", "consumer", c.name, "err", err)
			}
		}))
	if err != nil {
		return nil, fmt.Errorf("consume %s/%s: %w", c.stream, c.name, err)
	}
	return func() {
		cc.Drain()
		<-cc.Closed()
	}, nil
}

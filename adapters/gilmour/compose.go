package gilmour

// compose.go: the composition engine (spec §2.1). It runs a Step tree with two callbacks (a
// request to a topic, a lambda call to the calling node) and knows nothing about HTTP or NATS.

import (
	"context"
	"encoding/json"
	"sync"
)

// Executor runs compositions.
type Executor struct {
	// Request sends data to topic and returns the first reply (timeout in seconds, 0 = default).
	Request func(ctx context.Context, topic string, data json.RawMessage, timeout int) Message
	// Lambda posts {data} to the calling node's path and returns its answer.
	Lambda func(ctx context.Context, path string, data json.RawMessage) Message
}

func ok(m Message) bool { return m.Code >= 200 && m.Code < 300 }

// Run executes s with input and returns the messages of the final response.
func (x *Executor) Run(ctx context.Context, s *Step, input json.RawMessage) []Message {
	if len(input) == 0 {
		input = jsonNull
	}
	switch s.Kind {
	case KindRequest:
		return []Message{x.Request(ctx, s.Topic, Merge(input, s.Message), s.Timeout)}
	case KindLambda:
		return []Message{x.Lambda(ctx, s.Lambda, input)}
	case KindPipe:
		cur := input
		var last []Message
		for _, st := range s.Steps {
			last = x.Run(ctx, st, cur)
			one := Inflate(last)
			if !ok(one) {
				return last
			}
			cur = one.Data
		}
		return last
	case KindAndAnd:
		var last []Message
		for _, st := range s.Steps {
			last = x.Run(ctx, st, input)
			if !ok(Inflate(last)) {
				return last
			}
		}
		return last
	case KindOrOr:
		var last []Message
		for _, st := range s.Steps {
			last = x.Run(ctx, st, input)
			if ok(Inflate(last)) {
				return last
			}
		}
		return last
	case KindBatch:
		var last, all []Message
		for _, st := range s.Steps {
			last = x.Run(ctx, st, input)
			all = append(all, Inflate(last))
		}
		if s.Record {
			return all
		}
		return last
	case KindParallel:
		var mu sync.Mutex
		var wg sync.WaitGroup
		out := make([]Message, 0, len(s.Steps))
		for _, st := range s.Steps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := Inflate(x.Run(ctx, st, input))
				mu.Lock()
				out = append(out, m) // completion order
				mu.Unlock()
			}()
		}
		wg.Wait()
		return out
	}
	return []Message{{Data: StringData("unknown composition kind " + s.Kind), Code: 500}}
}

// Inflate collapses several messages into one: data = the array of their data, code = the max.
func Inflate(msgs []Message) Message {
	switch len(msgs) {
	case 0:
		return Message{Data: jsonNull, Code: 500}
	case 1:
		return msgs[0]
	}
	datas := make([]json.RawMessage, len(msgs))
	code := 0
	for i, m := range msgs {
		datas[i] = m.Data
		if len(datas[i]) == 0 {
			datas[i] = jsonNull
		}
		code = max(code, m.Code)
	}
	b, err := json.Marshal(datas)
	if err != nil {
		return Message{Data: StringData(err.Error()), Code: 500}
	}
	return Message{Data: b, Code: code}
}

// Merge returns input with msg's keys written over it when both are JSON objects (the Go
// library's With); msg alone when only msg is given or one of them is not an object; input when
// msg is absent.
func Merge(input, msg json.RawMessage) json.RawMessage {
	if !present(msg) {
		return input
	}
	if !present(input) {
		return msg
	}
	var a, b map[string]json.RawMessage
	if json.Unmarshal(input, &a) != nil || json.Unmarshal(msg, &b) != nil || a == nil || b == nil {
		return msg
	}
	for k, v := range b {
		a[k] = v
	}
	out, err := json.Marshal(a)
	if err != nil {
		return msg
	}
	return out
}

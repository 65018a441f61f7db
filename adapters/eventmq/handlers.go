package eventmq

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jetbridge/jetbridge/adapters/zmtp"
	"github.com/jetbridge/jetbridge/jetstream"
)

// onFrontend handles clients and schedulers.
func (a *Adapter) onFrontend(zm zmtp.Message) {
	m, err := Parse(zm.Frames)
	if err != nil {
		a.bad("frontend", zm.Peer, err)
		return
	}
	a.in(m.Command)
	known := a.b.schedulerSeen(zm.Peer)
	switch m.Command {
	case CmdRequest:
		req, err := ParseRequest(m)
		if err != nil {
			a.bad("frontend", zm.Peer, err)
			return
		}
		a.submit(zm.Peer, req)
	case CmdInform:
		in, err := ParseInform(m)
		if err != nil || in.Type != TypeScheduler {
			a.bad("frontend", zm.Peer, err)
			return
		}
		a.b.addScheduler(zm.Peer)
		_ = a.send(a.front, zm.Peer, CmdAck, m.MsgID)
		_ = a.send(a.front, zm.Peer, CmdHeartbeat, Timestamp(time.Now()))
		a.trigger()
	case CmdHeartbeat:
	case CmdKBYE:
		if known {
			a.b.removeScheduler(zm.Peer)
			a.trigger()
		}
	case CmdSchedule, CmdUnschedule:
		s, err := ParseSchedule(m)
		if err != nil {
			a.bad("frontend", zm.Peer, err)
			return
		}
		a.inLane(zm.Peer, func() {
			ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
			defer cancel()
			var err error
			if m.Command == CmdSchedule {
				err = a.sched.schedule(ctx, s)
			} else {
				err = a.sched.unschedule(ctx, s)
			}
			if err != nil {
				a.fail("schedule")
				lvl := slog.LevelWarn
				if errors.Is(err, ErrField) {
					lvl = slog.LevelDebug // the client's mistake (bad cron, payload)
				}
				a.log.Log(ctx, lvl, strings.ToLower(m.Command)+" refused", "msgid", s.MsgID, "err", err)
			}
		})
	default:
		// DISCONNECT on the frontend would stop the original router; jetbridge pods are shared,
		// so only the admin socket may do that. Anything else is ignored like the original.
		a.log.Debug("frontend command ignored", "command", m.Command, "peer", peerName(zm.Peer))
	}
}

func (a *Adapter) bad(where string, peer []byte, err error) {
	a.fail("bad_message")
	a.log.Debug("malformed eMQP message dropped", "socket", where, "peer", peerName(peer), "err", err)
}

// effectiveQueue applies "unknown queue → default".
func (a *Adapter) effectiveQueue(q string) string {
	if q == "" || q == DefaultQueue {
		return DefaultQueue
	}
	if a.queues.known(q) || a.b.knownLocal(q) {
		return q
	}
	return DefaultQueue
}

// submit stores a REQUEST on the work queue, then sends the submission REPLY.
func (a *Adapter) submit(peer []byte, req Request) {
	peer = append([]byte(nil), peer...)
	t0 := time.Now()
	a.inLane(peer, func() {
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		defer cancel()
		q := a.effectiveQueue(req.Queue)
		if err := a.enqueue(ctx, q, req.Queue, req.MsgID, req.Headers.Raw, req.Payload); err != nil {
			a.fail("store")
			a.log.Warn("REQUEST not stored (no REPLY sent)", "msgid", req.MsgID, "queue", q, "err", err)
			return
		}
		_ = a.send(a.front, peer, CmdReply, req.MsgID)
		a.env.Metrics.Latency.WithLabelValues(protocolName, "submit").Observe(time.Since(t0).Seconds())
	})
}

// enqueue stores one job (de-duplicated on its msgid).
func (a *Adapter) enqueue(ctx context.Context, queue, origQueue, msgid, headers string, payload []byte) error {
	h := jetstream.Header{}
	h.Set(HeaderMsgID, msgid)
	h[HeaderQueue] = []string{origQueue}
	if headers != "" {
		h.Set(HeaderHeaders, headers)
	}
	_, err := a.js.Publish(ctx, a.jobSubject(queue, msgid), payload, jetstream.PubOpts{MsgID: msgid, Header: h})
	return err
}

// onBackend handles job managers.
func (a *Adapter) onBackend(zm zmtp.Message) {
	m, err := Parse(zm.Frames)
	if err != nil {
		a.bad("backend", zm.Peer, err)
		return
	}
	a.in(m.Command)
	if m.Command == CmdInform {
		in, err := ParseInform(m)
		if err != nil || in.Type != TypeWorker {
			a.bad("backend", zm.Peer, err)
			return
		}
		a.b.inform(zm.Peer, in)
		// ACK, then at once a HEARTBEAT: the JobManager starts its workers (and sends READY)
		// only when it receives its first HEARTBEAT.
		_ = a.send(a.back, zm.Peer, CmdAck, m.MsgID)
		_ = a.send(a.back, zm.Peer, CmdHeartbeat, Timestamp(time.Now()))
		a.queues.declare(in.Queues)
		a.trigger()
		return
	}
	if a.b.seen(zm.Peer) == nil {
		a.log.Debug("message from an unknown worker dropped", "command", m.Command, "peer", peerName(zm.Peer))
		a.fail("unknown_worker")
		return
	}
	switch m.Command {
	case CmdReady:
		a.b.ready(zm.Peer)
	case CmdReply:
		r, err := ParseWorkerReply(m)
		if err != nil {
			a.bad("backend", zm.Peer, err)
			return
		}
		a.b.reply(zm.Peer, r)
	case CmdKBYE:
		a.b.kbye(zm.Peer)
	case CmdHeartbeat:
	default:
		a.log.Debug("backend command ignored", "command", m.Command)
	}
}

func (a *Adapter) onFrontendGone(peer []byte) { a.b.removeScheduler(peer) }

// onBackendGone buries the worker of a closed connection once the messages it sent before
// closing (a result REPLY, READY, KBYE) are handled. The worker is the one known now (a
// reconnection with the same identity may INFORM meanwhile); one not known yet may have its
// INFORM still queued.
func (a *Adapter) onBackendGone(peer []byte) {
	w := a.b.worker(peer)
	peer = append([]byte(nil), peer...)
	a.backLoop.post(func() {
		if w == nil {
			if w = a.b.worker(peer); w == nil {
				return
			}
		}
		a.b.disconnected(w)
	})
}

// ---- publisher device ----

func (a *Adapter) onPubIn(zm zmtp.Message) {
	m, err := Parse(zm.Frames)
	if err != nil {
		a.bad("pub-in", zm.Peer, err)
		return
	}
	a.in(m.Command)
	if m.Command != CmdPublish {
		return
	}
	p, err := ParsePublish(m)
	if err != nil {
		a.bad("pub-in", zm.Peer, err)
		return
	}
	h := jetstream.Header{}
	if checkText("topic", []byte(p.Topic), MaxTopicLen, true) == nil {
		h[HeaderTopic] = []string{p.Topic}
	}
	if err := a.js.PublishCore(a.js.Subject("eventmq", "pub", jetstream.Token(p.Topic)), p.Data, h); err != nil {
		a.fail("publish")
	}
}

// onNATSPublish re-sends a message of eventmq.pub.<topic> as [topic, msg] on the PUB socket.
func (a *Adapter) onNATSPublish(msg *jetstream.Msg) {
	topic := ""
	if v := msg.Header.Values(HeaderTopic); len(v) > 0 {
		topic = v[0]
	} else {
		rest := strings.TrimPrefix(a.js.Names().Unprefix(msg.Subject), "eventmq.pub.")
		parts := strings.Split(rest, ".")
		for i, p := range parts {
			parts[i] = untoken(p)
		}
		topic = strings.Join(parts, ".")
	}
	if _, err := a.pubOut.Publish([]byte(topic), msg.Data); err == nil {
		a.out(CmdPublish)
	}
}

// untoken reverses jetstream.Token's %XX escapes.
func untoken(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ---- results ----

// resultRecord is what eventmq.results.<msgid> holds.
type resultRecord struct {
	MsgID    string          `json:"msgid"`
	Queue    string          `json:"queue"`
	Status   string          `json:"status"` // done | dead
	Result   json.RawMessage `json:"result,omitempty"`
	Reason   string          `json:"reason,omitempty"`
	Worker   string          `json:"worker,omitempty"`
	Pod      string          `json:"pod"`
	Attempts int             `json:"attempts"`
	Finished time.Time       `json:"finished"`
}

func (a *Adapter) storeResult(ctx context.Context, rec resultRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	_, err = a.js.Publish(ctx, a.resultSubject(rec.MsgID), data, jetstream.PubOpts{})
	return err
}

// jsonOrString keeps a worker's result frame as JSON when it is JSON, else as a JSON string.
func jsonOrString(b []byte) json.RawMessage {
	if json.Valid(b) {
		return json.RawMessage(b)
	}
	s, _ := json.Marshal(string(b))
	return s
}

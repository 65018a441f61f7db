package zmtp

import (
	"errors"
	"reflect"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metricVecs is the set of collectors registered once per Registerer and
// shared by every listener (told apart by the "listener" label).
type metricVecs struct {
	peers             *prometheus.GaugeVec
	connections       *prometheus.CounterVec
	handshakeFailures *prometheus.CounterVec
	framesIn          *prometheus.CounterVec
	framesOut         *prometheus.CounterVec
	bytesIn           *prometheus.CounterVec
	bytesOut          *prometheus.CounterVec
	messagesIn        *prometheus.CounterVec
	messagesOut       *prometheus.CounterVec
	dropped           *prometheus.CounterVec
}

var (
	vecsMu sync.Mutex
	vecsBy = map[prometheus.Registerer]*metricVecs{}
)

func newMetricVecs() *metricVecs {
	lbl := []string{"listener"}
	c := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_zmtp_" + name, Help: help}, lbl)
	}
	return &metricVecs{
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "jetbridge_zmtp_peers", Help: "ZMTP peers currently connected (handshake done).",
		}, lbl),
		connections:       c("connections_total", "TCP connections accepted."),
		handshakeFailures: c("handshake_failures_total", "Connections closed before or during the ZMTP handshake (timeout, bad greeting, incompatible socket type, duplicate identity)."),
		framesIn:          c("frames_in_total", "Frames received (messages and commands)."),
		framesOut:         c("frames_out_total", "Frames sent (messages and commands)."),
		bytesIn:           c("bytes_in_total", "Wire bytes received after the handshake."),
		bytesOut:          c("bytes_out_total", "Wire bytes sent after the handshake."),
		messagesIn:        c("messages_in_total", "Messages received and delivered."),
		messagesOut:       c("messages_out_total", "Messages written to peers."),
		dropped:           c("dropped_messages_total", "Messages dropped: send queue at its high-water mark, or an events channel that nobody reads."),
	}
}

// register registers every vector, reusing collectors that are already
// registered (AlreadyRegisteredError) so that a second registration with
// the same Registerer never panics.
func (v *metricVecs) register(r prometheus.Registerer) *metricVecs {
	reg := func(c prometheus.Collector) prometheus.Collector {
		if err := r.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return are.ExistingCollector
			}
			return c // incompatible registration: keep an unregistered collector
		}
		return c
	}
	out := *v
	if g, ok := reg(v.peers).(*prometheus.GaugeVec); ok {
		out.peers = g
	}
	for _, p := range []**prometheus.CounterVec{&out.connections, &out.handshakeFailures, &out.framesIn, &out.framesOut,
		&out.bytesIn, &out.bytesOut, &out.messagesIn, &out.messagesOut, &out.dropped} {
		if cv, ok := reg(*p).(*prometheus.CounterVec); ok {
			*p = cv
		}
	}
	return &out
}

func vecsFor(r prometheus.Registerer) *metricVecs {
	if r == nil {
		return newMetricVecs() // unregistered: counts go nowhere
	}
	if !reflect.TypeOf(r).Comparable() {
		return newMetricVecs().register(r)
	}
	vecsMu.Lock()
	defer vecsMu.Unlock()
	if v, ok := vecsBy[r]; ok {
		return v
	}
	v := newMetricVecs().register(r)
	vecsBy[r] = v
	return v
}

// metrics are the per-listener children, resolved once.
type metrics struct {
	peers                                  prometheus.Gauge
	connections, handshakeFailures         prometheus.Counter
	framesIn, framesOut, bytesIn, bytesOut prometheus.Counter
	messagesIn, messagesOut, dropped       prometheus.Counter
}

func newMetrics(r prometheus.Registerer, name string) *metrics {
	v := vecsFor(r)
	return &metrics{
		peers:             v.peers.WithLabelValues(name),
		connections:       v.connections.WithLabelValues(name),
		handshakeFailures: v.handshakeFailures.WithLabelValues(name),
		framesIn:          v.framesIn.WithLabelValues(name),
		framesOut:         v.framesOut.WithLabelValues(name),
		bytesIn:           v.bytesIn.WithLabelValues(name),
		bytesOut:          v.bytesOut.WithLabelValues(name),
		messagesIn:        v.messagesIn.WithLabelValues(name),
		messagesOut:       v.messagesOut.WithLabelValues(name),
		dropped:           v.dropped.WithLabelValues(name),
	}
}

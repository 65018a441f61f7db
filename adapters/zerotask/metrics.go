package zerotask

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetbridge/jetbridge/bridge"
)

// brokerMetrics are the shared families (labelled protocol=zerotask) plus ZeroTask's own.
type brokerMetrics struct {
	shared   *bridge.Metrics
	tasks    *prometheus.CounterVec // jetbridge_zerotask_tasks_total{status}
	requests *prometheus.CounterVec // jetbridge_zerotask_requests_total{method,code}
	requeued prometheus.Counter
	nodes    prometheus.Gauge
	clients  prometheus.Gauge
}

func newBrokerMetrics(shared *bridge.Metrics, reg prometheus.Registerer) *brokerMetrics {
	m := &brokerMetrics{
		shared: shared,
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_zerotask_tasks_total",
			Help: "ZeroTask task status changes made by this pod, by new status."}, []string{"status"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_zerotask_requests_total",
			Help: "ZeroTask JSON-RPC requests by method and result code (0 = success)."}, []string{"method", "code"}),
		requeued: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetbridge_zerotask_requeued_total",
			Help: "Tasks taken back from a lost node (requeued or failed)."}),
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetbridge_zerotask_local_nodes",
			Help: "ZeroTask nodes registered through this pod."}),
		clients: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetbridge_zerotask_local_clients",
			Help: "ZeroTask clients registered through this pod."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.tasks, m.requests, m.requeued, m.nodes, m.clients} {
			_ = reg.Register(c) // a second broker on the same registry (tests) keeps the first's

		}
	}
	return m
}

func (m *brokerMetrics) request(method string, code int) {
	m.requests.WithLabelValues(method, strconv.Itoa(code)).Inc()
	if m.shared == nil {
		return
	}
	m.shared.MessagesIn.WithLabelValues(protocol, method).Inc()
	if code != 0 {
		m.shared.Errors.WithLabelValues(protocol, strconv.Itoa(code)).Inc()
	}
}

func (m *brokerMetrics) latency(method string, d time.Duration) {
	if m.shared != nil {
		m.shared.Latency.WithLabelValues(protocol, method).Observe(d.Seconds())
	}
}

func (m *brokerMetrics) status(s int) { m.tasks.WithLabelValues(StatusName(s)).Inc() }

func (m *brokerMetrics) setLocal(nodes, clients int) {
	m.nodes.Set(float64(nodes))
	m.clients.Set(float64(clients))
}

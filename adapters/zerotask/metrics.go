package zerotask

import (
	"strconv"
	"sync"
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
	okCache  sync.Map              // method → *okMetrics
	byStatus [5]prometheus.Counter // tasks{status} of the five statuses, resolved once
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
	for i, st := range []int{StatusQueued, StatusAssigned, StatusRunning, StatusFinished, StatusFailed} {
		m.byStatus[i] = m.tasks.WithLabelValues(StatusName(st))
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.tasks, m.requests, m.requeued, m.nodes, m.clients} {
			_ = reg.Register(c) // a second broker on the same registry (tests) keeps the first's

		}
	}
	return m
}

// okMetrics are one method's series for successful requests, resolved once.
type okMetrics struct {
	requests prometheus.Counter
	in       prometheus.Counter
	latency  prometheus.Observer
}

func (m *brokerMetrics) ok(method string) *okMetrics {
	if v, found := m.okCache.Load(method); found {
		return v.(*okMetrics)
	}
	o := &okMetrics{requests: m.requests.WithLabelValues(method, "0")}
	if m.shared != nil {
		o.in = m.shared.MessagesIn.WithLabelValues(protocol, method)
		o.latency = m.shared.Latency.WithLabelValues(protocol, method)
	}
	v, _ := m.okCache.LoadOrStore(method, o)
	return v.(*okMetrics)
}

func (m *brokerMetrics) request(method string, code int) {
	if code == 0 {
		o := m.ok(method)
		o.requests.Inc()
		if o.in != nil {
			o.in.Inc()
		}
		return
	}
	m.requests.WithLabelValues(method, strconv.Itoa(code)).Inc()
	if m.shared == nil {
		return
	}
	m.shared.MessagesIn.WithLabelValues(protocol, method).Inc()
	m.shared.Errors.WithLabelValues(protocol, strconv.Itoa(code)).Inc()
}

func (m *brokerMetrics) latency(method string, d time.Duration) {
	if o := m.ok(method); o.latency != nil {
		o.latency.Observe(d.Seconds())
	}
}

func (m *brokerMetrics) status(s int) {
	if s%1000 == 0 && s/2000 < len(m.byStatus) && s/1000%2 == 1 {
		m.byStatus[s/2000].Inc() // 1000, 3000, 5000, 7000, 9000 → 0…4
		return
	}
	m.tasks.WithLabelValues(StatusName(s)).Inc()
}

func (m *brokerMetrics) setLocal(nodes, clients int) {
	m.nodes.Set(float64(nodes))
	m.clients.Set(float64(clients))
}

package gilmour

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the per-topic figures of the proxy (jetbridge_gilmour_*).
type metrics struct {
	// per-request series, curried once per label set (a label lookup costs more than the update)
	reqCache  sync.Map // reqLabels → reqSeries
	callCache sync.Map // callLabels → prometheus.Counter

	requests *prometheus.CounterVec   // topic, op, code
	latency  *prometheus.HistogramVec // topic, op
	calls    *prometheus.CounterVec   // topic, code (service calls made to nodes)
	signals  *prometheus.CounterVec   // topic, result
	nodes    *prometheus.CounterVec   // event
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_gilmour_requests_total",
			Help: "Requests and compositions received over HTTP, by topic and answer code."}, []string{"topic", "op", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jetbridge_gilmour_request_duration_seconds",
			Help:    "Time from an HTTP request to its answer, by topic.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 60}}, []string{"topic", "op"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_gilmour_service_calls_total",
			Help: "Service handler calls made to HTTP nodes, by topic and code."}, []string{"topic", "code"}),
		signals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_gilmour_signals_total",
			Help: "Signals published over HTTP and deliveries to slot nodes, by topic and result."}, []string{"topic", "result"}),
		nodes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_gilmour_node_events_total",
			Help: "Node registrations and deletions through this pod."}, []string{"event"}),
	}
	if reg != nil {
		m.requests = register(reg, m.requests)
		m.latency = register(reg, m.latency)
		m.calls = register(reg, m.calls)
		m.signals = register(reg, m.signals)
		m.nodes = register(reg, m.nodes)
	}
	return m
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if ex, ok := are.ExistingCollector.(C); ok {
				return ex
			}
		}
	}
	return c
}

type reqLabels struct {
	topic, op string
	code      int
}

type reqSeries struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

type callLabels struct {
	topic string
	code  int
}

func (m *metrics) requested(topic, op string, code int, d time.Duration) {
	k := reqLabels{topic, op, code}
	v, ok := m.reqCache.Load(k)
	if !ok {
		v, _ = m.reqCache.LoadOrStore(k, reqSeries{m.requests.WithLabelValues(topic, op, strconv.Itoa(code)),
			m.latency.WithLabelValues(topic, op)})
	}
	s := v.(reqSeries)
	s.count.Inc()
	s.latency.Observe(d.Seconds())
}

func (m *metrics) handled(topic string, code int, _ time.Duration) {
	k := callLabels{topic, code}
	v, ok := m.callCache.Load(k)
	if !ok {
		v, _ = m.callCache.LoadOrStore(k, m.calls.WithLabelValues(topic, strconv.Itoa(code)))
	}
	v.(prometheus.Counter).Inc()
}

func (m *metrics) signal(topic, result string, _ time.Duration) {
	m.signals.WithLabelValues(topic, result).Inc()
}

func (m *metrics) nodeEvent(ev string) { m.nodes.WithLabelValues(ev).Inc() }

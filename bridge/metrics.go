package bridge

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the metric families every adapter shares, all labelled by protocol.
type Metrics struct {
	// Connections is the number of open client connections (label: protocol).
	Connections *prometheus.GaugeVec
	// MessagesIn counts messages received from clients (labels: protocol, type).
	MessagesIn *prometheus.CounterVec
	// MessagesOut counts messages sent to clients (labels: protocol, type).
	MessagesOut *prometheus.CounterVec
	// Errors counts errors (labels: protocol, kind).
	Errors *prometheus.CounterVec
	// Latency observes command latency in seconds (labels: protocol, op).
	Latency *prometheus.HistogramVec

	natsConnected  prometheus.Gauge
	natsReconnects prometheus.Gauge
	buildInfo      *prometheus.GaugeVec
	ready          prometheus.Gauge
}

// NewMetrics creates the shared metric families and registers them (and the Go/process
// collectors) on reg.
func NewMetrics(reg prometheus.Registerer, version string) *Metrics {
	m := &Metrics{
		Connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetbridge_connections",
			Help: "Open client connections per protocol."}, []string{"protocol"}),
		MessagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_messages_in_total",
			Help: "Messages received from clients."}, []string{"protocol", "type"}),
		MessagesOut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_messages_out_total",
			Help: "Messages sent to clients."}, []string{"protocol", "type"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_errors_total",
			Help: "Errors per protocol and kind."}, []string{"protocol", "kind"}),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jetbridge_command_duration_seconds",
			Help:    "Command latency from request received to response written.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}},
			[]string{"protocol", "op"}),
		natsConnected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetbridge_nats_connected",
			Help: "1 when the pod is connected to NATS."}),
		natsReconnects: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetbridge_nats_reconnects",
			Help: "Reconnections to NATS since start."}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetbridge_build_info",
			Help: "Build information (always 1)."}, []string{"version", "goversion"}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetbridge_ready",
			Help: "1 when the pod is ready (NATS connected, JetStream answers, assets provisioned)."}),
	}
	reg.MustRegister(m.Connections, m.MessagesIn, m.MessagesOut, m.Errors, m.Latency,
		m.natsConnected, m.natsReconnects, m.buildInfo, m.ready,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "jetbridge"}))
	return m
}

package eventmq

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the broker's own families (per queue), besides the shared ones.
type metrics struct {
	depth       *prometheus.GaugeVec
	inflight    *prometheus.GaugeVec
	done        *prometheus.CounterVec
	failed      *prometheus.CounterVec
	redelivered *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	workers     prometheus.Gauge
	schedules   prometheus.Gauge
	fired       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetbridge_eventmq_queue_depth",
			Help: "Jobs stored in a queue and not yet done (cluster-wide, includes jobs in flight)."}, []string{"queue"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "jetbridge_eventmq_queue_inflight",
			Help: "Jobs of a queue running on this pod's workers."}, []string{"queue"}),
		done: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_eventmq_jobs_done_total",
			Help: "Jobs reported done by this pod's workers."}, []string{"queue"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_eventmq_jobs_failed_total",
			Help: "Jobs dead-lettered after their last attempt."}, []string{"queue"}),
		redelivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jetbridge_eventmq_jobs_redelivered_total",
			Help: "Jobs given back to the queue because their worker died."}, []string{"queue"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jetbridge_eventmq_job_latency_seconds",
			Help:    "Time from a job being stored to its worker reporting it done.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}},
			[]string{"queue"}),
		workers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetbridge_eventmq_workers",
			Help: "Job managers connected to this pod."}),
		schedules: prometheus.NewGauge(prometheus.GaugeOpts{Name: "jetbridge_eventmq_schedules",
			Help: "Schedules stored (cluster-wide)."}),
		fired: prometheus.NewCounter(prometheus.CounterOpts{Name: "jetbridge_eventmq_schedule_runs_total",
			Help: "Schedule runs fired by this pod."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.depth, m.inflight, m.done, m.failed, m.redelivered, m.latency, m.workers, m.schedules, m.fired} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if !errors.As(err, &are) {
					panic(err)
				}
			}
		}
	}
	return m
}

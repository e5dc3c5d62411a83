package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the agent's Prometheus collectors.
type metrics struct {
	reg       *prometheus.Registry
	connected prometheus.Gauge
	up, down  prometheus.Counter
	dropped   *prometheus.CounterVec
	refusals  *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		reg: reg,
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztgate_agent_connected", Help: "1 while the tunnel to the server is up.",
		}),
		up: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztgate_agent_packets_total", Help: "Packets through the tunnel.", ConstLabels: prometheus.Labels{"direction": "up"},
		}),
		down: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztgate_agent_packets_total", Help: "Packets through the tunnel.", ConstLabels: prometheus.Labels{"direction": "down"},
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_packets_dropped_total", Help: "Packets the agent dropped, by reason.",
		}, []string{"reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_flows_refused_total", Help: "New flows the agent refused locally, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.connected, m.up, m.down, m.dropped, m.refusals)
	return m
}

func (m *metrics) drop(reason string) { m.dropped.WithLabelValues(reason).Inc() }

func (m *metrics) refused(unknownVIP bool) {
	if unknownVIP {
		m.refusals.WithLabelValues("no_service").Inc()
	} else {
		m.refusals.WithLabelValues("service_down").Inc()
	}
}

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

	// The direct path and the router's flow table.
	upDirect, downDirect       prometheus.Counter
	directPaths                prometheus.Gauge
	directUp, directDown       prometheus.Counter // paths taken by a service, paths lost
	directFailed               prometheus.Counter // offers refused, unanswered or whose dial failed
	flowsExpired, flowsEvicted prometheus.Counter
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
	direct := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_agent_direct_packets_total", Help: "Packets on direct paths to gateways (also in ztgate_agent_packets_total only when the relay carried them).",
	}, []string{"direction"})
	m.upDirect, m.downDirect = direct.WithLabelValues("up"), direct.WithLabelValues("down")
	m.directPaths = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztgate_agent_direct_paths", Help: "Direct sessions to gateways open now.",
	})
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_agent_direct_events_total", Help: "Direct-path events: a service's new flows moved to a path (up), a path lost (down), an attempt failed (failed).",
	}, []string{"event"})
	m.directUp, m.directDown, m.directFailed = events.WithLabelValues("up"), events.WithLabelValues("down"), events.WithLabelValues("failed")
	flows := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_agent_flows_removed_total", Help: "Entries removed from the router's flow table: idle (expired) or full (evicted at its bound).",
	}, []string{"reason"})
	m.flowsExpired, m.flowsEvicted = flows.WithLabelValues("idle"), flows.WithLabelValues("full")
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.connected, m.up, m.down, m.dropped, m.refusals, direct, m.directPaths, events, flows)
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

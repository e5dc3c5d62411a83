package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// dropReason is why the agent dropped a packet: a bounded label.
type dropReason uint8

// Reasons a packet is dropped.
const (
	dropNotIPv4            dropReason = iota // a TUN packet that is not IPv4
	dropForeignSource                        // a TUN packet not from the agent's address
	dropBadServiceID                         // the service name cannot be framed
	dropNoSession                            // no session to the server
	dropSendError                            // the session did not take the datagram
	dropUnexpectedDatagram                   // a datagram type the server must not send
	dropForeignPacket                        // a packet not from the pool to the agent's address
	dropWrongGateway                         // a direct path's packet from a VIP of no service on that path
	dropTUNWrite                             // the TUN did not take the packet
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"not_ipv4", "foreign_source", "bad_service_id", "no_session", "send_error",
	"unexpected_datagram", "foreign_packet", "wrong_gateway", "tun_write",
}

// String returns the label value.
func (d dropReason) String() string { return dropNames[d] }

// metrics are the agent's Prometheus collectors.
type metrics struct {
	reg       *prometheus.Registry
	connected prometheus.Gauge
	up, down  prometheus.Counter
	dropped   *prometheus.CounterVec
	refusals  *prometheus.CounterVec
	drops     [numDropReasons]prometheus.Counter
	// Children of refusals: a VIP no service has, a service that is down.
	refusedNoService, refusedServiceDown prometheus.Counter

	// The direct path and the router's flow table.
	upDirect, downDirect       prometheus.Counter
	directPaths                prometheus.Gauge
	forwardedPaths             prometheus.Gauge   // of directPaths, those through a relay's forwarder
	directUp, directDown       prometheus.Counter // paths taken by a service, paths lost
	directFailed               prometheus.Counter // offers refused, unanswered or whose dial failed
	candidatesSkipped          prometheus.Counter // gateway candidates not dialled (candidateSkip)
	flowsExpired, flowsEvicted prometheus.Counter

	reloads *prometheus.CounterVec // ztgate_config_reloads_total{result}

	// localVIPs are the services of the directory left out for a VIP that
	// is one of the agent's own addresses (keepPool).
	localVIPs prometheus.Gauge
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
	for i := range m.drops {
		m.drops[i] = m.dropped.WithLabelValues(dropReason(i).String())
	}
	m.refusedNoService, m.refusedServiceDown = m.refusals.WithLabelValues("no_service"), m.refusals.WithLabelValues("service_down")
	direct := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_agent_direct_packets_total", Help: "Packets on direct paths to gateways (also in ztgate_agent_packets_total only when the relay carried them).",
	}, []string{"direction"})
	m.upDirect, m.downDirect = direct.WithLabelValues("up"), direct.WithLabelValues("down")
	m.directPaths = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztgate_agent_direct_paths", Help: "Direct sessions to gateways open now.",
	})
	m.forwardedPaths = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztgate_agent_forwarded_paths", Help: "Of the direct sessions open now, those through a relay's forwarder.",
	})
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_agent_direct_events_total", Help: "Direct-path events: a service's new flows moved to a path (up), a path lost (down), an attempt failed (failed), a gateway's candidate not dialled (candidate_skipped).",
	}, []string{"event"})
	m.directUp, m.directDown, m.directFailed = events.WithLabelValues("up"), events.WithLabelValues("down"), events.WithLabelValues("failed")
	m.candidatesSkipped = events.WithLabelValues("candidate_skipped")
	flows := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_agent_flows_removed_total", Help: "Entries removed from the router's flow table: idle (expired) or full (evicted at its bound).",
	}, []string{"reason"})
	m.flowsExpired, m.flowsEvicted = flows.WithLabelValues("idle"), flows.WithLabelValues("full")
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_config_reloads_total", Help: "Configuration reloads by result.",
	}, []string{"result"})
	for _, r := range []string{"ok", "error"} {
		m.reloads.WithLabelValues(r)
	}
	excluded := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ztgate_agent_services_excluded", Help: "Services of the server's directory the agent leaves out of its DNS and routing now, by reason: local_address, a VIP that is the agent's own (its gateway address 10.100.0.1, or tun.address).",
	}, []string{"reason"})
	m.localVIPs = excluded.WithLabelValues("local_address")
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.connected, m.up, m.down, m.dropped, m.refusals, direct, m.directPaths, m.forwardedPaths, events, flows, m.reloads, excluded)
	return m
}

// drop counts a packet the agent dropped.
func (m *metrics) drop(r dropReason) { m.drops[r].Inc() }

// refused counts a new flow the agent refused itself.
func (m *metrics) refused(unknownVIP bool) {
	if unknownVIP {
		m.refusedNoService.Inc()
	} else {
		m.refusedServiceDown.Inc()
	}
}

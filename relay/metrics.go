package relay

import (
	"errors"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/tunnel"
)

// dropReason is why the relay dropped a datagram: a bounded label.
type dropReason uint8

// Reasons a datagram is dropped.
const (
	dropMalformed        dropReason = iota // does not parse
	dropUnexpected                         // a type this peer must not send
	dropRawFromAgent                       // an agent's raw IP packet: no service to route it to
	dropNotRegistered                      // ztna-v1: 0x2F for a service the agent did not register
	dropUnknownService                     // no gateway serves the service
	dropNotAuthorized                      // the agent's identity or tenant may not reach the service
	dropSpoofed                            // source address is not the agent's inner address
	dropTagsExhausted                      // no free tag was found (see maxTagDraws)
	dropGatewayGone                        // tag_open could not be sent
	dropUnknownTag                         // 0x31 with a tag that is not live
	dropForeignTag                         // 0x31 with a tag of another gateway
	dropNotIP                              // 0x31 whose payload is not an IP packet
	dropWrongDestination                   // 0x31 whose packet is not for the agent's inner address
	dropWrongSource                        // 0x31 whose packet is not from a VIP of the tag's service
	dropSendFailed                         // the next hop's session did not take it
	dropFlowLost                           // a TCP segment of a flow whose gateway is gone
	dropNoEligible                         // every gateway of the service is drained
	dropOutboxBudget                       // the next hop's outbox holds its reserve and the outboxes' budget is spent
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"malformed", "unexpected_type", "raw_from_agent", "not_registered", "unknown_service",
	"not_authorized", "spoofed", "tags_exhausted", "gateway_gone", "unknown_tag", "foreign_tag",
	"not_ip", "wrong_destination", "wrong_source", "send_failed", "flow_gateway_lost", "all_drained",
	"outbox_budget",
}

// String returns the label value.
func (d dropReason) String() string { return dropNames[d] }

// Refusal reasons of a session (ztgate_relay_refusals_total).
const (
	refuseWrongRole  = "wrong_role"  // identity and hello disagree, or a role the relay does not serve
	refuseBadHello   = "bad_hello"   // a hello the relay cannot use (no inner address, ...)
	refuseNoIdentity = "no_identity" // no verified identity and not insecure
	refuseVersion    = "unsupported_version"
	// A gateway identity with tunnel.MaxIdentitySessions gateways of
	// other names connected (addGateway).
	refuseTooManySessions = "too_many_sessions"
)

// Results of a service registration (ztgate_relay_registrations_total).
const (
	regOK           = "ok"
	regNotPermitted = "not_permitted" // a legacy identity without rights for the service
	regInvalid      = "invalid"       // bad name, ports or tenants
	regAllocation   = "allocation"    // no VIP (pool exhausted, pin conflict)
	regDenied       = "denied"        // v1: NACK 0x02
	regBadID        = "invalid_id"    // v1: NACK 0x01
)

// metrics are the relay's collectors. Labels stay bounded: role,
// direction, result, reason — never an address or identity.
type metrics struct {
	reg *prometheus.Registry

	sessions      *prometheus.GaugeVec
	refusals      *prometheus.CounterVec
	registrations *prometheus.CounterVec
	datagrams     *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	tags          prometheus.Gauge
	services      prometheus.Gauge
	conflicts     prometheus.Gauge
	// pool is the VIP pool whose use ztgate_vip_pool_used reads at each
	// scrape (a hold-down ends without a change of the registry).
	pool           atomic.Pointer[catalog.Pool]
	poolUsed       prometheus.GaugeFunc
	poolCapacity   prometheus.Gauge
	flows          flowStats
	gatewaysLost   prometheus.Counter
	dirFailed      prometheus.Counter
	identityClosed prometheus.Counter
	reloads        *prometheus.CounterVec
	sigRejected    *prometheus.CounterVec
	sigOutcomes    *prometheus.CounterVec
	sigSessions    prometheus.Gauge
	directPaths    prometheus.Gauge

	// Resolved children of the packet path.
	drops                 [numDropReasons]prometheus.Counter
	toGateway, toAgent    prometheus.Counter // forwarded
	fromAgentX, fromGateX prometheus.Counter // dropped
	agentGauge, gwGauge   prometheus.Gauge
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		reg: reg,
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ztgate_relay_sessions", Help: "Admitted sessions by role.",
		}, []string{"role"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_relay_refusals_total", Help: "Sessions refused after the handshake, by reason.",
		}, []string{"reason"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_relay_registrations_total", Help: "Service registrations (gateways) and ztna-v1 agent registrations, by role and result.",
		}, []string{"role", "result"}),
		datagrams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_relay_datagrams_total", Help: "Routed datagrams by direction and result.",
		}, []string{"direction", "result"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_relay_dropped_total", Help: "Datagrams dropped by reason.",
		}, []string{"reason"}),
		tags: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztgate_relay_tags", Help: "Live tags: (agent session, service, gateway) routes.",
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztgate_relay_services", Help: "Services served by at least one gateway.",
		}),
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztgate_relay_service_conflicts",
			Help: "Services whose gateways registered different definitions (tenants, ports or ICMP).",
		}),
		poolCapacity: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztgate_vip_pool_capacity", Help: "VIPs the IPv4 pool can hand out.",
		}),
		identityClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztgate_relay_identity_sessions_closed_total",
			Help: "Agent sessions closed because their identity had more than 16 (the oldest is closed).",
		}),
		dirFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztgate_relay_directory_failures_total",
			Help: "Directories that could not be made into a control message for an agent (too large); the agent keeps its last one.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_config_reloads_total", Help: "Configuration reloads by result.",
		}, []string{"result"}),
	}
	m.newFlowAndSignalingMetrics()
	m.poolUsed = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ztgate_vip_pool_used", Help: "VIPs of the IPv4 pool allocated to services or held back.",
	}, func() float64 { return float64(m.pool.Load().Owned()) })
	reg.MustRegister(m.sessions, m.refusals, m.registrations, m.datagrams, m.dropped, m.tags,
		m.services, m.conflicts, m.poolUsed, m.poolCapacity,
		m.flows.live, m.gatewaysLost, m.dirFailed, m.identityClosed, m.reloads,
		m.sigRejected, m.sigOutcomes, m.sigSessions, m.directPaths,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for i := range m.drops {
		m.drops[i] = m.dropped.WithLabelValues(dropReason(i).String())
	}
	m.toGateway = m.datagrams.WithLabelValues(directionLabels[fwdUp], "forwarded")
	m.fromAgentX = m.datagrams.WithLabelValues(directionLabels[fwdUp], "dropped")
	m.toAgent = m.datagrams.WithLabelValues(directionLabels[fwdDown], "forwarded")
	m.fromGateX = m.datagrams.WithLabelValues(directionLabels[fwdDown], "dropped")
	m.agentGauge = m.sessions.WithLabelValues(roleAgent)
	m.gwGauge = m.sessions.WithLabelValues(roleGateway)
	for _, r := range []string{refuseWrongRole, refuseBadHello, refuseNoIdentity, refuseVersion, refuseTooManySessions} {
		m.refusals.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "error"} {
		m.reloads.WithLabelValues(r)
	}
	for _, r := range sigReasons() {
		m.sigRejected.WithLabelValues(r)
	}
	return m
}

// newFlowAndSignalingMetrics creates the collectors of the flow tables,
// the gateways' liveness and the signaling of the direct path.
func (m *metrics) newFlowAndSignalingMetrics() {
	evicted := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_relay_flows_evicted_total",
		Help: "Entries removed from agents' flow tables: idle (expired) or full (the table was at its bound).",
	}, []string{"reason"})
	m.flows = flowStats{
		live: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztgate_relay_flows", Help: "Flows in the agents' flow tables (5-tuple → gateway).",
		}),
		idleEvict: evicted.WithLabelValues("idle"),
		fullEvict: evicted.WithLabelValues("full"),
	}
	m.reg.MustRegister(evicted)
	m.gatewaysLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztgate_relay_gateways_lost_total",
		Help: "Gateway sessions closed because they stopped answering pings.",
	})
	m.sigRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_relay_signaling_rejected_total",
		Help: "Signaling messages of the direct path rejected, by reason.",
	}, []string{"reason"})
	m.sigOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_relay_signaling_sessions_total",
		Help: "Signaling sessions ended, by outcome.",
	}, []string{"outcome"})
	m.sigSessions = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztgate_relay_signaling_sessions", Help: "Signaling sessions in progress.",
	})
	m.directPaths = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztgate_relay_direct_paths", Help: "Direct paths agents reported established and the relay still tracks.",
	})
}

// sendDrop is the drop reason of a datagram the next hop's outbox refused.
func sendDrop(err error) dropReason {
	if errors.Is(err, tunnel.ErrOutboxBudget) {
		return dropOutboxBudget
	}
	return dropSendFailed
}

// registerOutboxes exports the datagrams queued in the agent sessions'
// outboxes.
func (m *metrics) registerOutboxes(b *tunnel.OutboxBudget) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ztgate_relay_outbox_datagrams",
		Help: "Datagrams queued in the agent sessions' outboxes, waiting to be sent.",
	}, func() float64 { return float64(b.Queued()) }))
}

// dropFromAgent counts a datagram of an agent that went nowhere.
func (m *metrics) dropFromAgent(r dropReason) {
	m.fromAgentX.Inc()
	m.drops[r].Inc()
}

// dropFromGateway counts a datagram of a gateway that went nowhere.
func (m *metrics) dropFromGateway(r dropReason) {
	m.fromGateX.Inc()
	m.drops[r].Inc()
}

package gateway

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// metrics are the gateway's Prometheus collectors. Labels stay bounded:
// service, tenant, backend, protocol, reason — never a client address.
type metrics struct {
	reg *prometheus.Registry

	flowsActive  *prometheus.GaugeVec
	flowsTotal   *prometheus.CounterVec
	flowsRefused *prometheus.CounterVec
	refusedBy    map[refusal]prometheus.Counter
	bytes        *prometheus.CounterVec
	dialErrors   *prometheus.CounterVec
	dropped      *prometheus.CounterVec
	droppedBy    []prometheus.Counter
	tunnelDropBy map[string]prometheus.Counter
	// udpBackendOverflow is dropped's child for datagrams the kernel
	// dropped on a UDP flow's full backend socket.
	udpBackendOverflow prometheus.Counter
	backendHealthy     *prometheus.GaugeVec
	healthChecks       *prometheus.CounterVec
	healthDuration     *prometheus.HistogramVec
	// pool is the VIP pool whose use ztgate_vip_pool_used reads at each
	// scrape (a hold-down ends without a change of the table); nil behind
	// a relay and until the pool is open.
	pool           atomic.Pointer[catalog.Pool]
	poolUsed       prometheus.GaugeFunc
	poolCapacity   prometheus.Gauge
	reloads        *prometheus.CounterVec
	echoes         *prometheus.CounterVec
	tunnelRefusals *prometheus.CounterVec
	ingresses      prometheus.Gauge // tunnel ingresses open now
	// controlRejects counts the relay's control messages ignored for
	// their content, by reason.
	controlRejects *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		reg: reg,
		flowsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ztgate_flows_active", Help: "Flows open now.",
		}, []string{"service", "tenant", "protocol"}),
		flowsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_flows_total", Help: "Flows opened.",
		}, []string{"service", "tenant", "protocol"}),
		flowsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_flows_refused_total", Help: "New flows refused (TCP RST, ICMP unreachable, no echo reply), by reason.",
		}, []string{"protocol", "reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_bytes_total", Help: "Payload bytes spliced; direction up is client to backend.",
		}, []string{"service", "direction"}),
		dialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_dial_errors_total", Help: "Failed connections to backends.",
		}, []string{"service", "backend"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_packets_dropped_total", Help: "Packets dropped before reaching a flow, by reason.",
		}, []string{"reason"}),
		backendHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ztgate_backend_healthy", Help: "1 when the backend takes new flows (up or not yet checked), else 0.",
		}, []string{"service", "backend"}),
		healthChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_health_checks_total", Help: "Active health checks by result.",
		}, []string{"service", "result"}),
		healthDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ztgate_health_check_duration_seconds",
			Help:    "Duration of active health checks.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"service"}),
		poolCapacity: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztgate_vip_pool_capacity", Help: "VIPs the IPv4 pool can hand out.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_config_reloads_total", Help: "Configuration reloads by result.",
		}, []string{"result"}),
		tunnelRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_tunnel_refusals_total", Help: "Tunnel peers refused at the handshake or at the hello, by reason.",
		}, []string{"reason"}),
		echoes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_echo_requests_total", Help: "ICMP echo requests to VIPs by result.",
		}, []string{"service", "result"}),
		ingresses: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztgate_tunnel_ingresses", Help: "Tunnel ingresses open now: relay tags and agents connected directly.",
		}),
		controlRejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ztgate_tunnel_control_rejected_total", Help: "Control messages from the relay ignored for their content, by reason.",
		}, []string{"reason"}),
	}
	for _, r := range netstack.DropReasons() {
		m.droppedBy = append(m.droppedBy, m.dropped.WithLabelValues(r.String()))
	}
	m.udpBackendOverflow = m.dropped.WithLabelValues(dropUDPBackendOverflow)
	m.tunnelDropBy = make(map[string]prometheus.Counter, len(tunnelDropReasons))
	for _, r := range tunnelDropReasons {
		m.tunnelDropBy[r] = m.dropped.WithLabelValues(r)
	}
	m.refusedBy = make(map[refusal]prometheus.Counter, len(refusalProtocols)*len(refusalReasons))
	for _, p := range refusalProtocols {
		for _, r := range refusalReasons {
			m.refusedBy[refusal{p, r}] = m.flowsRefused.WithLabelValues(p, r)
		}
	}
	for _, r := range []string{"ok", "error"} {
		m.reloads.WithLabelValues(r)
	}
	m.controlRejects.WithLabelValues("bad_assign")
	m.poolUsed = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ztgate_vip_pool_used", Help: "VIPs of the IPv4 pool allocated to services or held back.",
	}, func() float64 { return float64(m.pool.Load().Owned()) })
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.flowsActive, m.flowsTotal, m.flowsRefused, m.bytes, m.dialErrors, m.dropped,
		m.backendHealthy, m.healthChecks, m.healthDuration, m.poolUsed, m.poolCapacity,
		m.reloads, m.echoes, m.tunnelRefusals, m.ingresses, m.controlRejects,
	)
	return m
}

// registerOutboxes exports the replies queued in the direct sessions'
// outboxes.
func (m *metrics) registerOutboxes(b *tunnel.OutboxBudget) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ztgate_tunnel_outbox_packets",
		Help: "Replies queued in the direct agent sessions' outboxes, waiting to be sent.",
	}, func() float64 { return float64(b.Queued()) }))
}

// registerRelayLink exports whether the session to the relay is up (a
// gateway with [tunnel] relay only).
func (m *metrics) registerRelayLink(l *tunnel.Link) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ztgate_gateway_relay_connected",
		Help: "1 while the session to the relay ([tunnel] relay) is up.",
	}, func() float64 {
		if l.Connected() {
			return 1
		}
		return 0
	}))
}

// drop counts a packet the netstack dropped; it runs on the packet path.
func (m *metrics) drop(r netstack.DropReason) {
	if int(r) < len(m.droppedBy) {
		m.droppedBy[r].Inc()
	}
}

// dropUDPBackendOverflow labels the datagrams from backends that the
// kernel dropped because the flow's socket buffer was full.
const dropUDPBackendOverflow = "udp_backend_overflow"

// tunnelDropReasons are the reasons of the tunnel packets the gateway
// drops, whose counters are made at start.
var tunnelDropReasons = []string{
	"ingress_full", "malformed", "malformed_datagram", "malformed_out", "no_ingress",
	"not_authorised", "not_ipv4", "outbox_budget", "outbox_full", "send_error", "spoofed_source", "unexpected_datagram", "unknown_tag",
	"wrong_service",
}

// tunnelDrop counts a tunnel packet dropped by the gateway.
func (m *metrics) tunnelDrop(reason string) {
	if c, ok := m.tunnelDropBy[reason]; ok {
		c.Inc()
		return
	}
	m.dropped.WithLabelValues(reason).Inc()
}

// refusal is a protocol and reason of ztgate_flows_refused_total.
type refusal struct{ proto, reason string }

// refusalProtocols and refusalReasons label ztgate_flows_refused_total;
// its counters are made at start.
var (
	refusalProtocols = []string{"tcp", "udp", "icmp"}
	refusalReasons   = []string{
		refuseUnknownSource, refuseNoService, refuseTenant, refusePort, refuseICMP,
		refuseNoBackend, refuseDial, refuseHandshake, refuseLimit, refuseServiceLimit, refuseTenantLimit,
		refuseRate, refuseTenantRate, refuseServiceRate, refuseTenantHandshakes,
		refuseServiceHandshakes, refuseEchoLimit, refuseTenantEchoLimit, refuseSourceEchoLimit,
	}
)

// refuse counts a refused flow.
func (m *metrics) refuse(proto, reason string) {
	if c, ok := m.refusedBy[refusal{proto, reason}]; ok {
		c.Inc()
		return
	}
	m.flowsRefused.WithLabelValues(proto, reason).Inc()
}

// serviceMetrics are a service's children of the per-service collectors,
// looked up once when its state is made. They live as long as the state:
// when it is freed, forgetService deletes the service's series, and what
// still holds a child (an echo reply arriving late) counts into a series
// no longer exported instead of making it again.
type serviceMetrics struct {
	m                   *metrics
	name                string
	up, down            prometheus.Counter
	echoOK, echoNoReply prometheus.Counter

	// mu guards flows. A flow series is deleted only under the write lock
	// with no flow open on it, and a flow is counted on one only under
	// the read lock (flowStarted): a series being deleted is never
	// handed to a new flow.
	mu    sync.RWMutex
	flows map[string]map[string]*flowMetrics // by tenant, then protocol; made on first use
}

// flowKey is a tenant and protocol of a service's flow metrics.
type flowKey struct{ tenant, proto string }

// flowMetrics are the flow counters of one service, tenant and protocol.
type flowMetrics struct {
	key    flowKey
	total  prometheus.Counter
	active prometheus.Gauge
	open   atomic.Int64 // the flows counted in active, where it can be read
	// gone: the tenant stopped being present (tenantPresence) while
	// flows were open on these series; the last of them deletes them.
	// Guarded by the service's mu.
	gone bool
}

// service returns the children of service name.
func (m *metrics) service(name string) *serviceMetrics {
	return &serviceMetrics{
		m:           m,
		name:        name,
		up:          m.bytes.WithLabelValues(name, "up"),
		down:        m.bytes.WithLabelValues(name, "down"),
		echoOK:      m.echoes.WithLabelValues(name, "ok"),
		echoNoReply: m.echoes.WithLabelValues(name, "no_reply"),
		flows:       make(map[string]map[string]*flowMetrics),
	}
}

// flowStarted counts a new flow of tenant to the service over proto and
// returns its counters, which the flow holds until flowEnded. made: they
// were made for it, the first flow since they were deleted (or ever).
func (sm *serviceMetrics) flowStarted(tenant, proto string) (fm *flowMetrics, made bool) {
	sm.mu.RLock()
	if fm = sm.flows[tenant][proto]; fm != nil {
		fm.start()
		sm.mu.RUnlock()
		return fm, false
	}
	sm.mu.RUnlock()
	sm.mu.Lock()
	defer sm.mu.Unlock()
	if fm = sm.flows[tenant][proto]; fm == nil {
		fm = &flowMetrics{
			key:    flowKey{tenant, proto},
			total:  sm.m.flowsTotal.WithLabelValues(sm.name, tenant, proto),
			active: sm.m.flowsActive.WithLabelValues(sm.name, tenant, proto),
		}
		byProto := sm.flows[tenant]
		if byProto == nil {
			byProto = make(map[string]*flowMetrics, 1)
			sm.flows[tenant] = byProto
		}
		byProto[proto] = fm
		made = true
	}
	fm.start()
	return fm, made
}

func (fm *flowMetrics) start() {
	fm.open.Add(1)
	fm.total.Inc()
	fm.active.Inc()
}

// flowEnded counts the end of a flow that flowStarted gave fm. The last
// flow of a tenant that left the configuration deletes its series.
func (sm *serviceMetrics) flowEnded(fm *flowMetrics) {
	sm.mu.RLock()
	fm.active.Dec()
	last := fm.open.Add(-1) == 0 && fm.gone
	sm.mu.RUnlock()
	if !last {
		return
	}
	sm.mu.Lock()
	defer sm.mu.Unlock()
	if fm.gone && fm.open.Load() == 0 && sm.flows[fm.key.tenant][fm.key.proto] == fm { // else a flow came, or the tenant back
		sm.forgetFlowsLocked(fm)
	}
}

// tenantsChanged applies a change of the tenants present (tenantPresence)
// to the service's flow series: those of a tenant that left (changes[name]
// is true) are deleted now when no flow is open on them, else by their
// last flow; a tenant that came back (false) keeps them. It costs a
// lookup per changed tenant, not a pass over every tenant's series.
func (sm *serviceMetrics) tenantsChanged(changes map[string]bool) {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	for tenant, gone := range changes {
		for _, fm := range sm.flows[tenant] {
			if gone && fm.open.Load() == 0 {
				sm.forgetFlowsLocked(fm)
			} else {
				fm.gone = gone
			}
		}
	}
}

// retire marks fm, held by a flow, for deletion by its last flow.
func (sm *serviceMetrics) retire(fm *flowMetrics) {
	sm.mu.Lock()
	defer sm.mu.Unlock()
	fm.gone = true
}

// forgetFlowsLocked deletes the flow series of fm. The caller holds mu.
func (sm *serviceMetrics) forgetFlowsLocked(fm *flowMetrics) {
	byProto := sm.flows[fm.key.tenant]
	delete(byProto, fm.key.proto)
	if len(byProto) == 0 {
		delete(sm.flows, fm.key.tenant)
	}
	sm.m.flowsTotal.DeleteLabelValues(sm.name, fm.key.tenant, fm.key.proto)
	sm.m.flowsActive.DeleteLabelValues(sm.name, fm.key.tenant, fm.key.proto)
}

// forgetService deletes every series of service name: those of its flows,
// bytes and echo requests, and of its backends' health and dial errors.
func (m *metrics) forgetService(name string) {
	l := prometheus.Labels{"service": name}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.flowsActive, m.flowsTotal, m.bytes, m.dialErrors, m.echoes,
		m.backendHealthy, m.healthChecks, m.healthDuration,
	} {
		v.DeletePartialMatch(l)
	}
}

// tunnelRefused counts a refused tunnel peer.
func (m *metrics) tunnelRefused(reason string) { m.tunnelRefusals.WithLabelValues(reason).Inc() }

// controlRejected counts a control message from the relay ignored for its
// content.
func (m *metrics) controlRejected(reason string) { m.controlRejects.WithLabelValues(reason).Inc() }

package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/netstack"
)

// stackCollector exports, at each scrape, what the netstack's gVisor stack
// dropped after the gateway's own checks, the state of its TCP
// connections, what it sent, and how many sources the rate table tracks.
// It loads the stack once and reads its counters once per scrape.
type stackCollector struct {
	g       *Gateway
	dropped *prometheus.Desc
	sources *prometheus.Desc
	descs   []*prometheus.Desc // of stackMetricDefs, in order
}

var _ prometheus.Collector = (*stackCollector)(nil)

// stackDropReasons label ztgate_stack_packets_dropped_total.
var stackDropReasons = []struct {
	reason string
	value  func(netstack.Stats) uint64
}{
	{"ip_malformed", func(s netstack.Stats) uint64 { return s.IPMalformed }},
	{"ip_fragment_malformed", func(s netstack.Stats) uint64 { return s.IPMalformedFragments }},
	{"ip_invalid_source", func(s netstack.Stats) uint64 { return s.IPInvalidSource }},
	{"transport_malformed", func(s netstack.Stats) uint64 { return s.TransportMalformed }},
	{"tcp_handshake_limit", func(s netstack.Stats) uint64 { return s.TCPHandshakeLimit }},
	{"tcp_handshake_failed", func(s netstack.Stats) uint64 { return s.TCPFailedHandshakes }},
}

var stackMetricDefs = []struct {
	name, help string
	gauge      bool
	value      func(netstack.Stats) uint64
}{
	{"ztgate_netstack_tcp_established", "TCP connections of the netstack in ESTABLISHED.", true, func(s netstack.Stats) uint64 { return s.TCPEstablished }},
	{"ztgate_netstack_tcp_connected", "TCP connections of the netstack in any connected state, TIME-WAIT included.", true, func(s netstack.Stats) uint64 { return s.TCPConnected }},
	{"ztgate_netstack_tcp_resets_sent_total", "TCP resets the netstack sent.", false, func(s netstack.Stats) uint64 { return s.TCPResetsSent }},
	{"ztgate_netstack_tcp_retransmits_total", "TCP segments the netstack retransmitted.", false, func(s netstack.Stats) uint64 { return s.TCPRetransmits }},
	{"ztgate_netstack_tcp_syn_again_answered_total", "Clients' SYNs sent again (their SYN-ACK lost) that the netstack answered with the SYN-ACK again.", false, func(s netstack.Stats) uint64 { return s.TCPSynAgain }},
	{"ztgate_netstack_tcp_time_wait_reused_total", "TCP connections in TIME-WAIT that a client opened anew with a SYN from the same address and port.", false, func(s netstack.Stats) uint64 { return s.TCPTimeWaitUsed }},
	{"ztgate_netstack_icmp_unreachable_sent_total", "ICMP destination unreachable messages the netstack sent: port unreachable for refused UDP flows, administratively prohibited for refused pings.", false, func(s netstack.Stats) uint64 { return s.ICMPErrorsSent }},
	{"ztgate_netstack_icmp_rate_limited_total", "ICMP errors the netstack did not send because they were over its ICMP rate limit.", false, func(s netstack.Stats) uint64 { return s.ICMPRateLimited }},
}

// registerStackMetrics registers the collector of g's netstack and rate
// table with reg.
func registerStackMetrics(g *Gateway, reg prometheus.Registerer) {
	c := &stackCollector{
		g: g,
		dropped: prometheus.NewDesc("ztgate_stack_packets_dropped_total",
			"Packets the TCP/IP stack dropped after the gateway's own checks, by reason: malformed IP, fragments or transport headers, invalid sources, SYNs over max_inflight_handshakes, handshakes the client never completed.",
			[]string{"reason"}, nil),
		sources: prometheus.NewDesc("ztgate_rate_limit_sources",
			"Source addresses whose rate of new flows is being tracked.", nil, nil),
	}
	for _, d := range stackMetricDefs {
		c.descs = append(c.descs, prometheus.NewDesc(d.name, d.help, nil, nil))
	}
	reg.MustRegister(c)
}

// Describe implements prometheus.Collector.
func (c *stackCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.dropped
	ch <- c.sources
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *stackCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.sources, prometheus.GaugeValue, float64(c.g.limits.rates.size()))
	ns := c.g.stack.Load()
	if ns == nil {
		return
	}
	st := ns.Stats()
	for _, d := range stackDropReasons {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(d.value(st)), d.reason)
	}
	for i, d := range stackMetricDefs {
		t := prometheus.CounterValue
		if d.gauge {
			t = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(c.descs[i], t, float64(d.value(st)))
	}
}

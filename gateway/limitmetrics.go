package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
)

// limitCollector exports, at each scrape, what the netstack's gVisor stack
// dropped after the gateway's own checks and how many sources the rate
// table tracks.
type limitCollector struct {
	g       *Gateway
	dropped *prometheus.Desc
	sources *prometheus.Desc
}

var _ prometheus.Collector = limitCollector{}

// registerLimitMetrics registers the collector of g's limits with reg.
func registerLimitMetrics(g *Gateway, reg prometheus.Registerer) {
	reg.MustRegister(limitCollector{
		g: g,
		dropped: prometheus.NewDesc("ztgate_stack_packets_dropped_total",
			"Packets the TCP/IP stack dropped after the gateway's own checks, by reason: malformed IP, fragments or transport headers, invalid sources, SYNs over max_inflight_handshakes, handshakes the client never completed.",
			[]string{"reason"}, nil),
		sources: prometheus.NewDesc("ztgate_rate_limit_sources",
			"Source addresses whose rate of new flows is being tracked.", nil, nil),
	})
}

// Describe implements prometheus.Collector.
func (c limitCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.dropped
	ch <- c.sources
}

// Collect implements prometheus.Collector.
func (c limitCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.sources, prometheus.GaugeValue, float64(c.g.limits.rates.size()))
	ns := c.g.ns
	if ns == nil {
		return
	}
	st := ns.Stats()
	for _, v := range []struct {
		reason string
		n      uint64
	}{
		{"ip_malformed", st.IPMalformed},
		{"ip_fragment_malformed", st.IPMalformedFragments},
		{"ip_invalid_source", st.IPInvalidSource},
		{"transport_malformed", st.TransportMalformed},
		{"tcp_handshake_limit", st.TCPHandshakeLimit},
		{"tcp_handshake_failed", st.TCPFailedHandshakes},
	} {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(v.n), v.reason)
	}
}

package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/netstack"
)

// stackCollector exposes the state of the netstack's TCP connections and
// what it sent, read at scrape time (its drops are in limitmetrics.go).
type stackCollector struct {
	stats func() (netstack.Stats, bool)
	descs map[string]*prometheus.Desc
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
	{"ztgate_netstack_icmp_unreachable_sent_total", "ICMP destination unreachable messages sent (refused UDP flows).", false, func(s netstack.Stats) uint64 { return s.ICMPErrorsSent }},
}

func newStackCollector(stats func() (netstack.Stats, bool)) *stackCollector {
	c := &stackCollector{stats: stats, descs: make(map[string]*prometheus.Desc)}
	for _, d := range stackMetricDefs {
		c.descs[d.name] = prometheus.NewDesc(d.name, d.help, nil, nil)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *stackCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *stackCollector) Collect(ch chan<- prometheus.Metric) {
	s, ok := c.stats()
	if !ok {
		return
	}
	for _, d := range stackMetricDefs {
		t := prometheus.CounterValue
		if d.gauge {
			t = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(c.descs[d.name], t, float64(d.value(s)))
	}
}

package gateway

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricChildren: the children made at start and per service count
// into the same series as a lookup by labels would.
func TestMetricChildren(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	m.refuse("udp", refuseTenant)
	m.refuse("icmp", "not_a_known_reason")
	m.tunnelDrop("spoofed_source")
	m.tunnelDrop("not_a_known_reason")
	for _, c := range []struct {
		what string
		c    prometheus.Collector
	}{
		{"udp refusal", m.flowsRefused.WithLabelValues("udp", refuseTenant)},
		{"unknown refusal", m.flowsRefused.WithLabelValues("icmp", "not_a_known_reason")},
		{"tunnel drop", m.dropped.WithLabelValues("spoofed_source")},
		{"unknown tunnel drop", m.dropped.WithLabelValues("not_a_known_reason")},
	} {
		if v := testutil.ToFloat64(c.c); v != 1 {
			t.Errorf("%s counted %v, want 1", c.what, v)
		}
	}

	sm := m.service("web")
	fm := sm.flowsOf("acme", "tcp")
	if sm.flowsOf("acme", "tcp") != fm {
		t.Fatal("flowsOf made a second child for the same tenant and protocol")
	}
	if sm.flowsOf("acme", "udp") == fm || sm.flowsOf("globex", "tcp") == fm {
		t.Fatal("flowsOf shared a child between tenants or protocols")
	}
	fm.total.Inc()
	fm.active.Inc()
	sm.up.Add(3)
	sm.echoNoReply.Inc()
	for _, c := range []struct {
		what string
		c    prometheus.Collector
		want float64
	}{
		{"flows_total", m.flowsTotal.WithLabelValues("web", "acme", "tcp"), 1},
		{"flows_active", m.flowsActive.WithLabelValues("web", "acme", "tcp"), 1},
		{"other tenant's flows_total", m.flowsTotal.WithLabelValues("web", "globex", "tcp"), 0},
		{"bytes up", m.bytes.WithLabelValues("web", "up"), 3},
		{"bytes down", m.bytes.WithLabelValues("web", "down"), 0},
		{"echo no_reply", m.echoes.WithLabelValues("web", "no_reply"), 1},
	} {
		if v := testutil.ToFloat64(c.c); v != c.want {
			t.Errorf("%s = %v, want %v", c.what, v, c.want)
		}
	}
}

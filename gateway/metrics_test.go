package gateway

import (
	"fmt"
	"slices"
	"strings"
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
	fm, made := sm.flowStarted("acme", "tcp")
	if !made {
		t.Fatal("the first flow of acme over tcp made no series")
	}
	if again, made := sm.flowStarted("acme", "tcp"); again != fm || made {
		t.Fatal("flowStarted made a second child for the same tenant and protocol")
	}
	sm.flowEnded(fm)
	udp, _ := sm.flowStarted("acme", "udp")
	globex, _ := sm.flowStarted("globex", "tcp")
	if udp == fm || globex == fm {
		t.Fatal("flowStarted shared a child between tenants or protocols")
	}
	sm.up.Add(3)
	sm.echoNoReply.Inc()
	for _, c := range []struct {
		what string
		c    prometheus.Collector
		want float64
	}{
		{"flows_total", m.flowsTotal.WithLabelValues("web", "acme", "tcp"), 2},
		{"flows_active", m.flowsActive.WithLabelValues("web", "acme", "tcp"), 1},
		{"other protocol's flows_active", m.flowsActive.WithLabelValues("web", "acme", "udp"), 1},
		{"other tenant's flows_total", m.flowsTotal.WithLabelValues("web", "globex", "tcp"), 1},
		{"bytes up", m.bytes.WithLabelValues("web", "up"), 3},
		{"bytes down", m.bytes.WithLabelValues("web", "down"), 0},
		{"echo no_reply", m.echoes.WithLabelValues("web", "no_reply"), 1},
	} {
		if v := testutil.ToFloat64(c.c); v != c.want {
			t.Errorf("%s = %v, want %v", c.what, v, c.want)
		}
	}
}

// flowSeries lists the flow series of m as "tenant/protocol:total/active",
// sorted; "-" stands for a value one of the two collectors lacks.
func flowSeries(t *testing.T, m *metrics) string {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	type values struct{ total, active string }
	series := map[string]*values{}
	for _, mf := range mfs {
		if mf.GetName() != "ztgate_flows_total" && mf.GetName() != "ztgate_flows_active" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			k := l["tenant"] + "/" + l["protocol"]
			if series[k] == nil {
				series[k] = &values{"-", "-"}
			}
			if c := mt.GetCounter(); c != nil {
				series[k].total = fmt.Sprint(c.GetValue())
			} else {
				series[k].active = fmt.Sprint(mt.GetGauge().GetValue())
			}
		}
	}
	var out []string
	for k, v := range series {
		out = append(out, k+":"+v.total+"/"+v.active)
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// TestFlowSeriesOfLeftTenants: the flow series of a tenant that left the
// configuration go at once when no flow is open on them, else with the
// last flow (one that started after the change too); a tenant back before
// then keeps them, and a tenant that only comes from certificates is
// never touched: its series, made again by a flow, stay.
func TestFlowSeriesOfLeftTenants(t *testing.T) {
	type step struct{ op, tenant, want string } // want: flowSeries after the step
	cases := []struct {
		name  string
		steps []step
	}{
		{"left without flows: deleted at once", []step{
			{"start", "acme", "acme/tcp:1/1"},
			{"end", "acme", "acme/tcp:1/0"},
			{"start", "globex", "acme/tcp:1/0 globex/tcp:1/1"},
			{"left", "acme", "globex/tcp:1/1"},
			{"end", "globex", "globex/tcp:1/0"},
		}},
		{"left with flows: deleted by the last", []step{
			{"start", "acme", "acme/tcp:1/1"},
			{"start", "acme", "acme/tcp:2/2"},
			{"left", "acme", "acme/tcp:2/2"},
			{"end", "acme", "acme/tcp:2/1"},
			{"start", "acme", "acme/tcp:3/2"},
			{"end", "acme", "acme/tcp:3/1"},
			{"end", "acme", ""},
		}},
		{"back before its last flow ended: kept", []step{
			{"start", "acme", "acme/tcp:1/1"},
			{"left", "acme", "acme/tcp:1/1"},
			{"came", "acme", "acme/tcp:1/1"},
			{"end", "acme", "acme/tcp:1/0"},
		}},
		{"from certificates only after it left: made again, kept", []step{
			{"start", "acme", "acme/tcp:1/1"},
			{"end", "acme", "acme/tcp:1/0"},
			{"left", "acme", ""},
			{"start", "acme", "acme/tcp:1/1"},
			{"end", "acme", "acme/tcp:1/0"},
		}},
		{"another tenant left", []step{
			{"start", "acme", "acme/tcp:1/1"},
			{"end", "acme", "acme/tcp:1/0"},
			{"left", "globex", "acme/tcp:1/0"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newMetrics(prometheus.NewRegistry())
			sm := m.service("web")
			open := map[string][]*flowMetrics{} // by tenant
			for i, s := range tc.steps {
				switch s.op {
				case "start":
					fm, _ := sm.flowStarted(s.tenant, "tcp")
					open[s.tenant] = append(open[s.tenant], fm)
				case "end":
					fms := open[s.tenant]
					sm.flowEnded(fms[len(fms)-1])
					open[s.tenant] = fms[:len(fms)-1]
				case "left":
					sm.tenantsChanged(map[string]bool{s.tenant: true})
				case "came":
					sm.tenantsChanged(map[string]bool{s.tenant: false})
				}
				if got := flowSeries(t, m); got != s.want {
					t.Fatalf("step %d, %s %s: series %q, want %q", i, s.op, s.tenant, got, s.want)
				}
			}
		})
	}
}

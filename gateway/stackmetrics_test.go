package gateway

import "testing"

// TestStackMetrics: one collector exports the netstack's drops, its TCP
// and ICMP counters (the ICMP rate limit's included) and the rate table,
// each series once.
func TestStackMetrics(t *testing.T) {
	gw := startEchoGateway(t)
	mfs, err := gw.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := make(map[string]int)
	for _, mf := range mfs {
		series[mf.GetName()] = len(mf.GetMetric())
	}
	want := map[string]int{
		"ztgate_stack_packets_dropped_total": len(stackDropReasons),
		"ztgate_rate_limit_sources":          1,
	}
	for _, d := range stackMetricDefs {
		want[d.name] = 1
	}
	if _, ok := want["ztgate_netstack_icmp_rate_limited_total"]; !ok {
		t.Error("ztgate_netstack_icmp_rate_limited_total is not exported")
	}
	for name, n := range want {
		if series[name] != n {
			t.Errorf("%s: %d series, want %d", name, series[name], n)
		}
	}
}

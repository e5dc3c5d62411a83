package resolver

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestDropSeries: every reason of ztgate_dns_dropped_total exists from the
// start, and counting a dropped query (the path of a flood) allocates
// nothing.
func TestDropSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "ztgate_dns_dropped_total" {
			continue
		}
		for _, metric := range mf.GetMetric() {
			for _, l := range metric.GetLabel() {
				if l.GetName() == "reason" {
					seen[l.GetValue()] = true
				}
			}
		}
	}
	for r := range numDropReasons {
		if !seen[r.String()] {
			t.Errorf("no series for reason %q before any drop", r)
		}
	}
	if len(seen) != int(numDropReasons) {
		t.Errorf("reasons %v, want the %d of dropNames", seen, numDropReasons)
	}
	var r dropReason
	if allocs := testing.AllocsPerRun(1000, func() {
		m.drop(r)
		r = (r + 1) % numDropReasons
	}); allocs != 0 {
		t.Errorf("drop allocates %v times, want 0", allocs)
	}
}

package agent

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricSeriesFromStart checks that every drop and refusal reason is a
// series from the start (resolved once, not per packet), at zero, under a
// distinct label.
func TestMetricSeriesFromStart(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	if n := testutil.CollectAndCount(m.dropped); n != int(numDropReasons) {
		t.Errorf("ztgate_packets_dropped_total has %d series, want %d", n, numDropReasons)
	}
	if n := testutil.CollectAndCount(m.refusals); n != 2 {
		t.Errorf("ztgate_flows_refused_total has %d series, want 2", n)
	}
	seen := make(map[string]bool)
	for r := range numDropReasons {
		name := r.String()
		if name == "" || seen[name] {
			t.Errorf("drop reason %d has label %q: empty or repeated", r, name)
		}
		seen[name] = true
		if v := testutil.ToFloat64(m.dropped.WithLabelValues(name)); v != 0 {
			t.Errorf("drop reason %q starts at %v", name, v)
		}
	}
	m.drop(dropTUNWrite)
	m.refused(true)
	if v := testutil.ToFloat64(m.dropped.WithLabelValues("tun_write")); v != 1 {
		t.Errorf("tun_write = %v after one drop, want 1", v)
	}
	if v := testutil.ToFloat64(m.refusals.WithLabelValues("no_service")); v != 1 {
		t.Errorf("no_service = %v after one refusal, want 1", v)
	}
}

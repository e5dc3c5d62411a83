package gateway

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testlog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/conf"
)

// newUnitGateway is a gateway with metrics and a captured log that is not
// started: enough for the health, drain and balancing logic.
func newUnitGateway(t *testing.T) (*Gateway, *syncLog) {
	t.Helper()
	logs := &syncLog{}
	g := &Gateway{
		cfg:    &conf.Gateway{DNS: conf.DNS{Zone: "ztna.internal."}},
		log:    slog.New(slog.NewTextHandler(logs, nil)),
		m:      newMetrics(prometheus.NewRegistry()),
		now:    time.Now,
		states: make(map[string]*serviceState),
		flows:  newFlowTable(),
	}
	g.ctx, g.cancel = context.WithCancel(context.Background()) // what drains wait on
	t.Cleanup(g.cancel)
	t.Cleanup(g.stopHealth)
	return g, logs
}

// syncLog is a log destination safe for concurrent writers.
type syncLog = testlog.Buffer

// metricValue returns the value of a gauge, counter or the sample count of
// a histogram with exactly these labels, or -1 when there is none.
func metricValue(t *testing.T, g *Gateway, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel())*2 != len(labels) {
				continue
			}
			for i, lp := range m.GetLabel() {
				if lp.GetName() != labels[2*i] || lp.GetValue() != labels[2*i+1] {
					continue metrics
				}
			}
			return value(m)
		}
	}
	return -1
}

package gateway

import (
	"sync"
	"testing"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
)

// TestRetiredStateFreedDespiteRefusal: a removed service's state is freed
// when its last flow ends, even when a flow classified before the removal
// is refused for the service's max_flows at that moment. reserveFlow
// raised the count and took it back on a refusal: a last release that saw
// the raised count did not free the state, and the refusal's undo brought
// it to 0 with no release to see it. The state of the removed service
// then stayed for good, its health checks and metric series with it.
func TestRetiredStateFreedDespiteRefusal(t *testing.T) {
	g, _ := newUnitGateway(t)
	g.limits = newFlowLimits()
	tbl := &table{limits: conf.Limits{MaxFlows: 100}, tenants: newTenantTable(nil)}
	const rounds = 40000
	leaked := 0
	for i := range rounds {
		st := g.state("web")
		svc := &service{spec: catalog.Service{Name: "web", FlowLimits: catalog.FlowLimits{MaxFlows: 1}}, st: st}
		d := decision{svc: svc, peer: peer{tenant: "acme"}}
		// The service's one flow, admitted while it was in the table.
		if !reserve(&g.flowCount, 0) || !g.limits.takeTenant("acme", tenantFlows, 0) || st.reserveFlow(1) != "" {
			t.Fatal("the first flow was refused")
		}
		g.reconcileStates(&table{byName: map[string]*service{}}) // a reload removed it
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Go(func() { <-start; g.release(d.svc, "acme") }) // its last flow ends
		wg.Go(func() {                                      // a flow classified before the reload is refused
			<-start
			if reason := g.admit(tbl, d); reason == "" {
				g.release(d.svc, "acme") // another interleaving: a flow that got in ends too
			}
		})
		close(start)
		wg.Wait()
		g.statesMu.Lock()
		_, kept := g.states["web"]
		if kept {
			t.Logf("round %d: kept with flows=%d retired=%v", i, st.flows.Load(), st.retired.Load())
			leaked++
			delete(g.states, "web") // start the next round afresh
		}
		g.statesMu.Unlock()
		if leaked > 0 {
			break
		}
	}
	if leaked > 0 {
		t.Fatalf("a removed service's state with no flow was kept (%d times): its checks and series outlive it", leaked)
	}
}

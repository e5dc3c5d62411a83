package gateway

import (
	"net/netip"
	"sync"
)

// The gateway's bound on echo requests in flight to backends, and the
// shares of it one tenant and one source address may hold. A backend that
// drops ICMP (and is healthy for TCP) holds each ping for echoTimeout: one
// LAN client pinging it 128 times a second, well within its rate of new
// flows, held every slot, and every other tenant's pings went unanswered.
// With the shares, a tenant leaves half of the slots to the others, and a
// source three quarters of its tenant's share to the tenant's other
// sources.
const (
	maxEchoes       = 256
	echoTenantShare = 2 // one tenant: at most 1/echoTenantShare of maxEchoes
	echoSourceShare = 8 // one source address: at most 1/echoSourceShare
	maxTenantEchoes = maxEchoes / echoTenantShare
	maxSourceEchoes = maxEchoes / echoSourceShare
)

// echoLimits counts the echo requests in flight to backends: in all, per
// tenant and per source address (a LAN client, or the synthetic address
// of a tunnel session). An entry lives while its count is above 0, so the
// maps hold at most maxEchoes entries each. Pings are few next to flows
// (each already costs a goroutine), so one mutex serves.
type echoLimits struct {
	mu      sync.Mutex
	total   int
	tenants map[string]int
	sources map[netip.Addr]int
}

func newEchoLimits() *echoLimits {
	return &echoLimits{tenants: make(map[string]int), sources: make(map[netip.Addr]int)}
}

// take reserves a slot for an echo request of tenant from src; it returns
// the refusal reason, the narrowest bound reached, when there is none.
func (e *echoLimits) take(tenant string, src netip.Addr) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case e.sources[src] >= maxSourceEchoes:
		return refuseSourceEchoLimit
	case e.tenants[tenant] >= maxTenantEchoes:
		return refuseTenantEchoLimit
	case e.total >= maxEchoes:
		return refuseEchoLimit
	}
	e.total++
	e.tenants[tenant]++
	e.sources[src]++
	return ""
}

// give gives back a slot take reserved.
func (e *echoLimits) give(tenant string, src netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.total--
	if e.tenants[tenant]--; e.tenants[tenant] <= 0 {
		delete(e.tenants, tenant)
	}
	if e.sources[src]--; e.sources[src] <= 0 {
		delete(e.sources, src)
	}
}

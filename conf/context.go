package conf

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/ztgate/ztgate/catalog"
)

// ServiceContext is what a service is validated against: the VIP pools its
// pins must fall in and the tenants it may name.
type ServiceContext struct {
	// Pool is the IPv4 VIP pool. An invalid Pool means VIPs are allocated
	// elsewhere (by a relay): pins are then rejected and the pool's size is
	// not checked.
	Pool netip.Prefix
	// Pool6 is the optional IPv6 VIP pool; invalid when there is none, and
	// then vip6 pins are rejected.
	Pool6 netip.Prefix
	// Tenants are the declared tenants a service may name.
	Tenants []catalog.Tenant
	// AllowUnknownTenants accepts tenant names not in Tenants, for gateways
	// whose tenants also come from peer certificates.
	AllowUnknownTenants bool
	// Limits are the gateway's [limits]: a service's own limits may not
	// exceed them. A zero field caps nothing.
	Limits Limits
}

// ServiceContext returns the context the gateway's services are validated
// in, for services added later through the admin API. A gateway attached to
// a relay takes its VIPs from the relay, so its context has no pools.
func (g *Gateway) ServiceContext() ServiceContext {
	ctx := ServiceContext{
		Tenants:             g.Tenants,
		AllowUnknownTenants: g.Tunnel.Relay != "" || g.Tunnel.Listen != "",
		Limits:              g.Limits,
	}
	if g.Tunnel.Relay == "" {
		ctx.Pool, ctx.Pool6 = g.TUN.Pool, g.TUN.Pool6
	}
	return ctx
}

// unknownTenant is the error of a service naming a tenant its context
// does not admit.
const unknownTenant = "unknown tenant %q (declare it in a [[tenant]] table)"

// unknownTenant reports whether a service in ctx may not name tenant n
// (not "*").
func (ctx *ServiceContext) unknownTenant(n string) bool {
	return !ctx.AllowUnknownTenants && !slices.ContainsFunc(ctx.Tenants, func(t catalog.Tenant) bool { return t.Name == n })
}

// CheckServiceTenants refuses the tenants of svcs, valid services (a
// file's: service[i] in the errors), that ctx does not admit, in the words
// of the parse and of ParseServiceJSON (unknown tenant "x" (declare it in a
// [[tenant]] table)): a running gateway checks a reloaded file against
// what it serves, which may admit less than the file's own context (a
// tunnel turned on waits for the restart).
func CheckServiceTenants(svcs []catalog.Service, ctx ServiceContext) Errors {
	el := newErrList("")
	for i, s := range svcs {
		for j, n := range s.Tenants {
			if n != "*" && ctx.unknownTenant(n) {
				el.addf(index(join(index("service", i), "tenants"), j), unknownTenant, n)
			}
		}
	}
	return el.errs
}

// servicePaths names keys in the errors of validateServices.
type servicePaths struct {
	service     func(i int) string // the key path of the i-th service
	pool, pool6 string             // the key paths of the pools; "" for none
}

// ValidateServices runs the checks across a set of services that are valid
// one by one: unique names, pins inside the pools, not reserved and not
// shared, and pools large enough for one VIP per service. Errors name a
// service by its index in svcs (service[i]).
func ValidateServices(svcs []catalog.Service, ctx ServiceContext) Errors {
	el := newErrList("")
	validateServices(el, svcs, ctx, servicePaths{service: func(i int) string { return index("service", i) }})
	return el.errs
}

// ValidateAddedService runs the cross-service checks of svc, a service
// posted to the admin API (see ParseServiceJSON), against the services
// there are already (existing, the file's and the API's): a name or a pin
// another service has, and pools large enough for them all. Errors name
// svc's keys as ParseServiceJSON does (service.vip) and the other service
// by its name and where it comes from: the configuration file, or an
// earlier API service; never by an index in existing, which the operator
// does not see.
func ValidateAddedService(existing []catalog.Service, svc catalog.Service, ctx ServiceContext) Errors {
	const path = "service"
	el := newErrList("")
	for _, o := range existing {
		if svc.Name != "" && strings.EqualFold(o.Name, svc.Name) {
			el.addf(join(path, "name"), "%q is also the name of service %q (%s)", svc.Name, o.Name, serviceOrigin(o))
		}
	}
	for _, pin := range []struct {
		key  string
		addr netip.Addr
	}{{"vip", svc.VIP}, {"vip6", svc.VIP6}} {
		if !pin.addr.IsValid() {
			continue
		}
		for _, o := range existing {
			if o.VIP == pin.addr || o.VIP6 == pin.addr {
				el.addf(join(path, pin.key), "%s is pinned by service %q (%s)", pin.addr, o.Name, serviceOrigin(o))
				break
			}
		}
	}
	checkRoom(el, "", ctx.Pool, len(existing)+1)
	checkRoom(el, "", ctx.Pool6, len(existing)+1)
	return el.errs
}

// serviceOrigin tells where a service comes from, for errors about it.
func serviceOrigin(s catalog.Service) string {
	if s.Source == "api" {
		return "added through the API"
	}
	return "configuration file"
}

func validateServices(el *errList, svcs []catalog.Service, ctx ServiceContext, paths servicePaths) {
	names := make(map[string]int, len(svcs))
	pins := make(map[netip.Addr]int)
	for i, s := range svcs {
		path := paths.service(i)
		if j, dup := names[strings.ToLower(s.Name)]; dup && s.Name != "" {
			el.addf(join(path, "name"), "%q is also the name of %s", s.Name, paths.service(j))
		} else {
			names[strings.ToLower(s.Name)] = i
		}
		for _, pin := range []struct {
			key  string
			addr netip.Addr
			pool netip.Prefix
		}{{"vip", s.VIP, ctx.Pool}, {"vip6", s.VIP6, ctx.Pool6}} {
			if !pin.addr.IsValid() {
				continue
			}
			p := join(path, pin.key)
			if err := checkPin(pin.addr, pin.pool, ctx.Pool.IsValid()); err != nil {
				el.add(p, err)
				continue
			}
			if j, dup := pins[pin.addr]; dup {
				el.addf(p, "%s is pinned by both service %q (%s) and service %q (%s)",
					pin.addr, svcs[j].Name, paths.service(j), s.Name, path)
				continue
			}
			pins[pin.addr] = i
		}
	}
	checkRoom(el, paths.pool, ctx.Pool, len(svcs))
	checkRoom(el, paths.pool6, ctx.Pool6, len(svcs))
}

// checkPin reports why a pinned VIP cannot be used in pool. local is false
// when VIPs are allocated by a relay.
func checkPin(a netip.Addr, pool netip.Prefix, local bool) error {
	switch {
	case !local:
		return fmt.Errorf("VIPs are allocated by the relay: pin %s with a [[pin]] table in the relay's configuration", a)
	case !pool.IsValid():
		return fmt.Errorf("%s cannot be pinned: no IPv6 pool (pool6) is configured", a)
	}
	return checkPoolAddr(a, pool)
}

// checkPoolAddr reports why a is not an address the pool hands out: outside
// it, or one of its reserved addresses. Reserved are the network address
// (IPv6: the subnet-router anycast address), the first host (the gateway's
// own address) and, in IPv4, the broadcast address; catalog's allocator
// reserves the same.
func checkPoolAddr(a netip.Addr, pool netip.Prefix) error {
	network := pool.Masked().Addr()
	switch {
	case !pool.Contains(a):
		return fmt.Errorf("%s is outside the pool %s", a, pool)
	case a == network && a.Is6():
		return fmt.Errorf("%s is the subnet-router anycast address of the pool %s", a, pool)
	case a == network:
		return fmt.Errorf("%s is the network address of the pool %s", a, pool)
	case a == network.Next():
		return fmt.Errorf("%s is the gateway address (the first host of the pool %s)", a, pool)
	case a.Is4() && a == lastAddr(pool):
		return fmt.Errorf("%s is the broadcast address of the pool %s", a, pool)
	}
	return nil
}

// lastAddr returns the last address of a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// poolRoom returns how many VIPs a pool holds: its addresses but the
// reserved ones (see checkPoolAddr).
func poolRoom(p netip.Prefix) uint64 {
	reserved := uint64(2)
	if p.Addr().Is4() {
		reserved++
	}
	host := p.Addr().BitLen() - p.Bits()
	switch {
	case host >= 64:
		return math.MaxUint64
	case uint64(1)<<host <= reserved:
		return 0
	}
	return 1<<host - reserved
}

// checkRoom reports a pool too small to give each of n services a VIP.
func checkRoom(el *errList, path string, pool netip.Prefix, n int) {
	if !pool.IsValid() {
		return
	}
	if room := poolRoom(pool); uint64(n) > room {
		el.addf(path, "pool %s has room for %d VIPs but %d services need one each", pool, room, n)
	}
}

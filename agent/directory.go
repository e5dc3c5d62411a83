package agent

import (
	"net/netip"
	"slices"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/resolver"
	"github.com/ztgate/ztgate/tunnel"
)

// directory is the agent's immutable view of the services it may reach.
type directory struct {
	zone   string
	pool   netip.Prefix
	pool6  netip.Prefix
	byVIP  map[netip.Addr]*dirService
	byName map[string]*dirService
	// atLocal are the services keepPool left out because their VIP is
	// one of the agent's own addresses, by name: their VIPs.
	atLocal map[string]netip.Addr
	// ignored are the services newDirectory left out because an earlier
	// one of the message had their name or one of their VIPs, by name.
	ignored []string
}

type dirService struct {
	name    string
	entry   resolver.Entry
	vip6    netip.Addr // its IPv6 VIP: answered as a PTR only, not in entry (no AAAA)
	healthy bool
	icmp    bool
}

func emptyDirectory(pool netip.Prefix) *directory {
	return &directory{pool: pool, byVIP: map[netip.Addr]*dirService{}, byName: map[string]*dirService{}}
}

// newDirectory builds the view from a pushed Directory message. A service
// whose name or VIP an earlier one of the message has is left out (listed
// in ignored): a server sends each once, and the first one's name, A, PTR
// and route must all be its own, not one service's name with another's
// address or traffic.
func newDirectory(m *tunnel.Directory) *directory {
	d := emptyDirectory(m.Pool)
	d.zone, d.pool6 = m.Zone, m.Pool6
	for _, s := range m.Services {
		if d.byName[s.Name] != nil || (s.VIP.IsValid() && d.byVIP[s.VIP] != nil) ||
			(s.VIP6.IsValid() && d.byVIP[s.VIP6] != nil) {
			d.ignored = append(d.ignored, s.Name)
			continue
		}
		ds := &dirService{name: s.Name, vip6: s.VIP6, healthy: s.Healthy, icmp: s.ICMP}
		// No AAAA: the agent routes only the IPv4 pool into its TUN, and
		// gateways take only IPv4 packets from a tunnel; an IPv6 VIP
		// would send the service's traffic out by the host's own routes.
		// Its PTR is still answered (byVIP).
		ds.entry = resolver.Entry{Name: s.Name, VIP: s.VIP}
		for _, p := range s.Ports {
			proto, ok := catalog.ParseProtocol(p.Protocol)
			if !ok {
				continue
			}
			ds.entry.Ports = append(ds.entry.Ports, catalog.Port{Name: p.Name, Protocol: proto, Port: p.Port, Target: p.Port})
		}
		d.byName[s.Name] = ds
		if s.VIP.IsValid() {
			d.byVIP[s.VIP] = ds
		}
		if s.VIP6.IsValid() {
			d.byVIP[s.VIP6] = ds
		}
	}
	return d
}

// keepPool makes pool the directory's, without the services whose IPv4 VIP
// is outside it: the agent would answer names for addresses it does not
// route into the tunnel, and their traffic would leave by the host's own
// routes. Nor does it keep those whose VIP is one of local, the agent's
// own addresses (its gateway address, where it answers DNS and ping, and
// its tun.address): the agent answers that address itself, so the
// service would be out of reach while its name resolved. A server's pool
// that holds 10.100.0.1 other than as its first host (10.0.0.0/8) may
// hand it out. Those are listed in atLocal, for the log and the metric.
func (d *directory) keepPool(pool netip.Prefix, local ...netip.Addr) {
	d.pool = pool
	for name, s := range d.byName {
		vip := s.entry.VIP
		switch {
		case !vip.IsValid():
			continue
		case !pool.Contains(vip):
		case slices.Contains(local, vip):
			if d.atLocal == nil {
				d.atLocal = map[string]netip.Addr{}
			}
			d.atLocal[name] = vip
		default:
			continue
		}
		delete(d.byName, name)
		delete(d.byVIP, vip)
		if s.vip6.IsValid() {
			delete(d.byVIP, s.vip6)
		}
	}
}

var _ resolver.View = (*directory)(nil)

// Lookup implements resolver.View.
func (d *directory) Lookup(label string) (resolver.Entry, bool) {
	s, ok := d.byName[label]
	if !ok {
		return resolver.Entry{}, false
	}
	return s.entry, true
}

// Reverse implements resolver.View.
func (d *directory) Reverse(addr netip.Addr) (resolver.Entry, bool) {
	s, ok := d.byVIP[addr.Unmap()]
	if !ok {
		return resolver.Entry{}, false
	}
	return s.entry, true
}

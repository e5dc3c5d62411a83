package gateway

import (
	"bytes"
	"net/netip"
	"os"
	"strings"
)

// forwardingSysctls are the sysctls that let the host route LAN clients'
// packets to a pool of the family into the TUN device.
var forwardingSysctls = map[bool]string{ // by IPv6
	false: "net/ipv4/ip_forward",
	true:  "net/ipv6/conf/all/forwarding",
}

// forwardingOff names the forwarding sysctls (as sysctl spells them) of
// the pools' families that read 0: the host then routes only its own
// packets to the VIPs, none of its LAN clients'. read reads a file under
// /proc/sys; what it cannot read is left out.
func forwardingOff(pools []netip.Prefix, read func(string) ([]byte, error)) []string {
	var off []string
	seen := map[bool]bool{}
	for _, p := range pools {
		six := p.Addr().Is6()
		if seen[six] {
			continue
		}
		seen[six] = true
		path := forwardingSysctls[six]
		if v, err := read("/proc/sys/" + path); err == nil && string(bytes.TrimSpace(v)) == "0" {
			off = append(off, strings.ReplaceAll(path, "/", "."))
		}
	}
	return off
}

// warnForwarding logs when the host does not forward to the pools: the
// gateway serves its own host then, but no LAN client (a first start on a
// router that was never one).
func (g *Gateway) warnForwarding(pools []netip.Prefix) {
	for _, key := range forwardingOff(pools, os.ReadFile) {
		g.log.Warn("the host does not forward packets ("+key+" is 0): LAN clients cannot reach the VIPs, only this host can; sysctl -w "+key+"=1",
			"sysctl", key)
	}
}

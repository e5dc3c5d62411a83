package integration

import (
	"strings"
	"testing"
)

// TestLANIPv6: a LAN client reaches a service through its IPv6 VIP (the
// backend stays IPv4): a 16 MiB download arrives intact, which takes the
// TUN's TCP super-packets for IPv6 (the kernel segments them), and a UDP
// echo answers.
func TestLANIPv6(t *testing.T) {
	needTools(t, "curl", "socat")
	l := newLANTopo(t)
	l.startBackend("192.0.2.10")
	dev := func(ns, peer string) string {
		return strings.TrimSpace(l.exec(ns, "sh", "-c", "ip -o link show | grep '"+peer+"' | awk -F': ' '{print $2}' | cut -d@ -f1"))
	}
	clientDev, routerDev := dev(l.acme, "link-netns "+l.router), dev(l.router, "link-netns "+l.acme)
	if clientDev == "" || routerDev == "" {
		t.Fatalf("veth between client and router not found (%q, %q)", clientDev, routerDev)
	}
	l.exec(l.acme, "ip", "-6", "addr", "add", "2001:db8:1::10/64", "dev", clientDev, "nodad")
	l.exec(l.router, "ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", routerDev, "nodad")
	l.exec(l.router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	l.exec(l.acme, "ip", "-6", "route", "add", "2001:db8:100::/64", "via", "2001:db8:1::1")
	config := strings.Replace(lanConfig, `pool = "10.100.0.0/24"`, `pool = "10.100.0.0/24"
pool6 = "2001:db8:100::/64"`, 1)
	config = strings.Replace(config, `sources = ["198.51.100.0/24"]`, `sources = ["198.51.100.0/24", "2001:db8:1::/64"]`, 1)
	config = strings.Replace(config, `vip = "10.100.0.10"`, `vip = "10.100.0.10"
vip6 = "2001:db8:100::10"`, 1)
	config = strings.Replace(config, `vip = "10.100.0.20"`, `vip = "10.100.0.20"
vip6 = "2001:db8:100::20"`, 1)
	l.startGateway(config)

	l.downloadBig(t, l.acme, "http://[2001:db8:100::10]")
	l.uploadBig(t, l.acme, "http://[2001:db8:100::10]")
	l.udpGSOEcho(t, l.acme, "[2001:db8:100::20]:7")
	out, err := l.try(l.acme, 10e9, "sh", "-c", "echo hello-v6 | socat -t 2 - UDP6:[2001:db8:100::20]:7")
	if err != nil || strings.TrimSpace(out) != "hello-v6" {
		t.Fatalf("UDP echo over IPv6: %q %v", out, err)
	}
}

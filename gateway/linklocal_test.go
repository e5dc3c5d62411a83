package gateway

import (
	"net/netip"
	"testing"
)

// TestLinkLocalLANClient: with no [tunnel], the link-local addresses the
// tunnel's ingresses would take are LAN sources like any other, admitted
// when a tenant's sources cover them. Such a client's flow, and a reload
// while it runs, asked the tunnel's ingress table, which a gateway without
// a tunnel does not have: the gateway crashed.
func TestLinkLocalLANClient(t *testing.T) {
	port := startLineEcho(t, "echo")
	client := netip.MustParseAddr("169.254.7.9")
	svc := tcpService("echo", `"*"`, "10.100.0.7", "127.0.0.1", port)
	tenant := "[[tenant]]\nname = \"lab\"\nsources = [\"169.254.0.0/16\"]\n"
	h := newFileHarnessWith(t, quietGateway+tenant+svc, nil, []netip.Addr{client}, nil)
	c := h.dialLines(t, client, "10.100.0.7:7")
	if got := c.roundTrip(t, "before"); got != "echo: before" {
		t.Fatalf("before the reload: %q", got)
	}
	h.write(t, quietGateway+tenant+svc+"\n# reloaded\n")
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := c.roundTrip(t, "after"); got != "echo: after" {
		t.Errorf("after the reload: %q", got)
	}
}

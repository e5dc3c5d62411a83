package netstack

import (
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// ListenTCP listens on one of the stack's local addresses (for example DNS
// on the gateway address). The stack needs at least one link.
func (ns *Stack) ListenTCP(ap netip.AddrPort) (net.Listener, error) {
	l, err := gonet.ListenTCP(ns.s, tcpip.FullAddress{Addr: toAddr(ap.Addr()), Port: ap.Port()}, protoOf(ap.Addr()))
	if err != nil {
		return nil, err
	}
	return l, nil
}

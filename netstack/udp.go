package netstack

import (
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// UDPRequest is the first datagram of a new UDP flow. It is valid only
// during Handler.HandleUDP.
type UDPRequest struct {
	Src, Dst netip.AddrPort // client and VIP:port
	r        *udp.ForwarderRequest
}

func (ns *Stack) forwardUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	req := UDPRequest{
		Src: netip.AddrPortFrom(fromAddr(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(fromAddr(id.LocalAddress), id.LocalPort),
		r:   r,
	}
	if ns.isLocal(req.Dst.Addr()) {
		return false // no listener on that local port: port unreachable
	}
	return ns.cfg.Handler.HandleUDP(&req)
}

// Accept creates the flow's endpoint in the stack: the first datagram and
// every later one from the same client address and port to the same VIP
// port can be read from the returned connection, and what is written to it
// goes to the client from the VIP:port.
func (r *UDPRequest) Accept() (net.Conn, error) {
	var wq waiter.Queue
	ep, err := r.r.CreateEndpoint(&wq)
	if err != nil {
		return nil, tcpipError("udp accept "+r.Src.String(), err)
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

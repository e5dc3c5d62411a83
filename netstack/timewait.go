package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// gVisor gives a SYN that reaches an endpoint in TIME-WAIT to a listening
// endpoint of its port (RFC 1122's reopening of a connection in TIME-WAIT)
// and drops it when there is none. The stack's flows come through its
// forwarder, which is no endpoint: a client that opened a flow from the
// address and port of one whose stack side had closed first (a backend
// ending it) and waited in TIME-WAIT (5 s) got no answer to its SYN until
// then, some 7 s with the SYN's backoff. Clients reuse a port that soon
// when they bind it (a fixed source port), when a NAT maps many of them
// onto few addresses and ports, or when they open thousands of flows a
// second to one service. Linux takes such a SYN as a new connection; so
// does the link: it ends the endpoint in TIME-WAIT before the SYN reaches
// gVisor, which then hands it to the forwarder. Ending it sends the client
// a RST that acknowledges nothing of the new SYN, which a client in
// SYN-SENT drops (RFC 793).

// reuseTimeWait ends the stack's endpoint in TIME-WAIT of the connection a
// client's SYN (without ACK) opens anew; h is the packet's, parsed, of
// protocol TCP. A fragment is left to gVisor's reassembly (a later one
// holds no TCP header).
func (l *Link) reuseTimeWait(h *ipHeader) {
	t := h.l4
	if h.fragment || len(t) < header.TCPMinimumSize || header.TCPFlags(t[13])&(header.TCPFlagSyn|header.TCPFlagAck|header.TCPFlagRst|header.TCPFlagFin) != header.TCPFlagSyn {
		return
	}
	id := stack.TransportEndpointID{
		LocalPort:     binary.BigEndian.Uint16(t[2:4]),
		LocalAddress:  toAddr(h.dst),
		RemotePort:    binary.BigEndian.Uint16(t[0:2]),
		RemoteAddress: toAddr(h.src),
	}
	ep, ok := l.ns.s.FindTransportEndpoint(protoOf(h.dst), tcp.ProtocolNumber, id, l.id).(*tcp.Endpoint)
	if !ok || ep.EndpointState() != tcp.StateTimeWait {
		return
	}
	ep.Abort()
	l.ns.timeWaitReused.Add(1)
}

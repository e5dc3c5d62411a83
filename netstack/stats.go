package netstack

// Stats are counters of the stack itself, for the roles' metrics.
type Stats struct {
	TCPEstablished       uint64 // connections in ESTABLISHED now
	TCPConnected         uint64 // connections in any connected state now (established to TIME-WAIT)
	TCPForwardDropped    uint64 // SYNs dropped: too many handshakes in flight
	TCPResetsSent        uint64
	TCPRetransmits       uint64
	TCPInvalidSegments   uint64
	TCPChecksumErrors    uint64
	UDPMalformed         uint64
	UDPChecksumErrors    uint64
	IPMalformed          uint64 // IPv4 and IPv6 packets gVisor found malformed
	IPInvalidDestination uint64
	ICMPErrorsSent       uint64 // destination unreachable and the like
}

// Stats reads the stack's counters.
func (ns *Stack) Stats() Stats {
	s := ns.s.Stats()
	return Stats{
		TCPEstablished:       s.TCP.CurrentEstablished.Value(),
		TCPConnected:         s.TCP.CurrentConnected.Value(),
		TCPForwardDropped:    s.TCP.ForwardMaxInFlightDrop.Value(),
		TCPResetsSent:        s.TCP.ResetsSent.Value(),
		TCPRetransmits:       s.TCP.Retransmits.Value(),
		TCPInvalidSegments:   s.TCP.InvalidSegmentsReceived.Value(),
		TCPChecksumErrors:    s.TCP.ChecksumErrors.Value(),
		UDPMalformed:         s.UDP.MalformedPacketsReceived.Value(),
		UDPChecksumErrors:    s.UDP.ChecksumErrors.Value(),
		IPMalformed:          s.IP.MalformedPacketsReceived.Value(),
		IPInvalidDestination: s.IP.InvalidDestinationAddressesReceived.Value(),
		ICMPErrorsSent:       s.ICMP.V4.PacketsSent.DstUnreachable.Value() + s.ICMP.V6.PacketsSent.DstUnreachable.Value(),
	}
}

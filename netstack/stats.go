package netstack

// Stats are the stack's own counters: what gVisor dropped or refused after
// the link's checks (DropReason) — hostile or broken traffic that parsed
// as IP but not as anything the stack takes, and SYNs beyond the handshake
// bound — and the state of its TCP connections. Every drop field only
// grows.
type Stats struct {
	IPMalformed          uint64 // IP headers gVisor rejected (checksum, lengths, options)
	IPMalformedFragments uint64 // fragments that cannot be reassembled (overlaps, sizes)
	IPInvalidSource      uint64 // sources no host sends from (multicast, broadcast)
	TransportMalformed   uint64 // TCP, UDP and ICMP headers with bad lengths or checksums
	TCPHandshakeLimit    uint64 // SYNs dropped because MaxInflightHandshakes handshakes were in progress
	TCPFailedHandshakes  uint64 // accepted SYNs whose client never completed the handshake

	TCPEstablished  uint64 // connections in ESTABLISHED now
	TCPConnected    uint64 // connections in any connected state now, TIME-WAIT included
	TCPResetsSent   uint64
	TCPRetransmits  uint64
	TCPSynAgain     uint64 // clients' SYNs sent again answered with the SYN-ACK again (synack.go)
	TCPTimeWaitUsed uint64 // endpoints in TIME-WAIT ended by a client's SYN opening the connection anew (timewait.go)
	ICMPErrorsSent  uint64 // destination unreachable messages (refused UDP flows and echo requests)
	ICMPRateLimited uint64 // ICMP errors not sent: over the stack's ICMP rate limit
}

// Stats returns the stack's counters.
func (ns *Stack) Stats() Stats {
	s := ns.s.Stats()
	return Stats{
		IPMalformed:          s.IP.MalformedPacketsReceived.Value(),
		IPMalformedFragments: s.IP.MalformedFragmentsReceived.Value(),
		IPInvalidSource:      s.IP.InvalidSourceAddressesReceived.Value(),
		TransportMalformed: s.NICs.MalformedL4RcvdPackets.Value() +
			s.TCP.InvalidSegmentsReceived.Value() + s.TCP.ChecksumErrors.Value() +
			s.UDP.MalformedPacketsReceived.Value() + s.UDP.ChecksumErrors.Value(),
		TCPHandshakeLimit:   s.TCP.ForwardMaxInFlightDrop.Value(),
		TCPFailedHandshakes: s.TCP.FailedConnectionAttempts.Value(),
		TCPEstablished:      s.TCP.CurrentEstablished.Value(),
		TCPConnected:        s.TCP.CurrentConnected.Value(),
		TCPResetsSent:       s.TCP.ResetsSent.Value(),
		TCPRetransmits:      s.TCP.Retransmits.Value(),
		TCPSynAgain:         ns.synAcks.answered.Load(),
		TCPTimeWaitUsed:     ns.timeWaitReused.Load(),
		ICMPErrorsSent: s.ICMP.V4.PacketsSent.DstUnreachable.Value() + s.ICMP.V6.PacketsSent.DstUnreachable.Value() +
			ns.icmpSent.Load(),
		ICMPRateLimited: s.ICMP.V4.PacketsSent.RateLimited.Value() + s.ICMP.V6.PacketsSent.RateLimited.Value() +
			ns.icmpLimited.Load(),
	}
}

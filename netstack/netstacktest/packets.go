package netstacktest

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TCP flags for TCPSegment.
const (
	FlagFIN = 0x01
	FlagSYN = 0x02
	FlagRST = 0x04
	FlagPSH = 0x08
	FlagACK = 0x10
	FlagURG = 0x20
	FlagECE = 0x40
	FlagCWR = 0x80
)

// IP protocol numbers for IPv4Packet.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// IPv4Packet builds an IPv4 packet with a correct header checksum around an
// already encoded transport payload. options (a multiple of 4 bytes, at most
// 40) follow the fixed header. Tests corrupt the result to build hostile
// packets.
func IPv4Packet(src, dst netip.Addr, proto uint8, options, payload []byte) []byte {
	hl := 20 + len(options)
	b := make([]byte, hl+len(payload))
	b[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:6], 0x2a2a) // identification
	b[8] = 64                                  // TTL
	b[9] = proto
	s, d := src.As4(), dst.As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	copy(b[20:], options)
	copy(b[hl:], payload)
	SetIPv4Checksum(b)
	return b
}

// SetIPv4Checksum recomputes the header checksum of an IPv4 packet whose
// header length field fits the buffer; it does nothing otherwise.
func SetIPv4Checksum(b []byte) {
	if len(b) < 20 {
		return
	}
	hl := int(b[0]&0x0f) * 4
	if hl < 20 || hl > len(b) {
		return
	}
	ip := header.IPv4(b)
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
}

// TCPSegment builds an IPv4 packet carrying one TCP segment from src to dst
// with the given flags, sequence number and payload, checksums correct.
func TCPSegment(src, dst netip.AddrPort, flags uint8, seq uint32, payload []byte) []byte {
	return TCPSegmentAck(src, dst, flags, seq, 0, payload)
}

// TCPSegmentAck is TCPSegment with an acknowledgment number, for a segment
// of an established connection (with FlagACK).
func TCPSegmentAck(src, dst netip.AddrPort, flags uint8, seq, ack uint32, payload []byte) []byte {
	t := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(t[0:2], src.Port())
	binary.BigEndian.PutUint16(t[2:4], dst.Port())
	binary.BigEndian.PutUint32(t[4:8], seq)
	binary.BigEndian.PutUint32(t[8:12], ack)
	t[12] = 5 << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:16], 65535) // window
	copy(t[20:], payload)
	binary.BigEndian.PutUint16(t[16:18], ^checksum.Checksum(t, pseudo(src.Addr(), dst.Addr(), header.TCPProtocolNumber, len(t))))
	return IPv4Packet(src.Addr(), dst.Addr(), ProtoTCP, nil, t)
}

// ICMPError builds an IPv4 packet from src to dst carrying an ICMP error of
// type typ and code quoting the first 28 bytes of quoted (its IP header and
// 8 bytes beyond), checksums correct.
func ICMPError(src, dst netip.Addr, typ, code uint8, quoted []byte) []byte {
	m := make([]byte, 8+min(28, len(quoted)))
	m[0], m[1] = typ, code
	copy(m[8:], quoted)
	binary.BigEndian.PutUint16(m[2:4], ^checksum.Checksum(m, 0))
	return IPv4Packet(src, dst, ProtoICMP, nil, m)
}

// UDPDatagram builds an IPv4 packet carrying one UDP datagram, checksums
// correct.
func UDPDatagram(src, dst netip.AddrPort, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:2], src.Port())
	binary.BigEndian.PutUint16(u[2:4], dst.Port())
	binary.BigEndian.PutUint16(u[4:6], uint16(len(u)))
	copy(u[8:], payload)
	c := ^checksum.Checksum(u, pseudo(src.Addr(), dst.Addr(), header.UDPProtocolNumber, len(u)))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:8], c)
	return IPv4Packet(src.Addr(), dst.Addr(), ProtoUDP, nil, u)
}

// Fragment splits an IPv4 packet without options into fragments whose
// payloads are at most size bytes (rounded down to a multiple of 8), each
// with a correct header checksum.
func Fragment(pkt []byte, size int) [][]byte {
	size &^= 7
	hl := int(pkt[0]&0x0f) * 4
	payload := pkt[hl:]
	var out [][]byte
	for off := 0; off < len(payload); off += size {
		end := min(off+size, len(payload))
		more := end < len(payload)
		out = append(out, FragmentAt(pkt, off, payload[off:end], more))
	}
	return out
}

// FragmentAt builds one fragment of pkt: the given payload at byte offset
// off (a multiple of 8), with the more-fragments flag as given. Overlapping
// or inconsistent fragments are built by calling it with such offsets.
func FragmentAt(pkt []byte, off int, payload []byte, more bool) []byte {
	hl := int(pkt[0]&0x0f) * 4
	f := make([]byte, hl+len(payload))
	copy(f, pkt[:hl])
	copy(f[hl:], payload)
	binary.BigEndian.PutUint16(f[2:4], uint16(len(f)))
	fo := uint16(off / 8)
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(f[6:8], fo)
	SetIPv4Checksum(f)
	return f
}

// pseudo is the checksum of the IPv4 pseudo-header of a transport segment
// of n bytes.
func pseudo(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, n int) uint16 {
	return header.PseudoHeaderChecksum(proto, toAddr(src), toAddr(dst), uint16(n))
}

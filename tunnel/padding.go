package tunnel

import "encoding/binary"

// Padding (ztna-v2, docs/protocol.md "Padding"). quic-go hands a run of
// packets to the kernel in one UDP GSO system call only while each packet
// of the run is exactly full-size; any shorter packet ends the run and the
// next one costs a system call of its own. The IP packets a tunnel carries
// are sized to the TUN's MTU, which leaves room for the longest service
// name, so a full-size TCP segment falls a few dozen bytes short of the
// largest DATAGRAM and every packet went out alone. A ztna-v2 sender
// therefore pads a data datagram that is at most padSlack bytes short of
// the largest one with zeros up to it, and a ztna-v2 receiver drops the
// bytes after the IP packet's own length before anyone reads the
// datagram. ztna-v1 datagrams are never padded: the original agents would
// hand the zeros to their TUN.
//
// A DATAGRAM of the largest size fills a packet to the byte only with
// the connection IDs this package issues (connIDLen) and with path MTU
// discovery off (quicConfig), since the TUN's MTU is sized once per session.

// padSlack is the most a datagram is padded by: more than the largest
// framing difference between two hops (a TypeTagged header for the longest
// service name against a bare IP packet), far less than a full packet.
const padSlack = 128

// maxPadded bounds the datagrams SendDatagram pads (on its stack): quic-go
// v0.65 never sends a packet over 1452 bytes.
const maxPadded = 1452

// connIDLen is the length of the connection IDs the tunnel's transports
// issue, so the length of every short header a peer sends to them. quic-go
// accepts DATAGRAM payloads up to its packet size less 37 bytes (type
// byte, a 20-byte connection ID, AEAD tag); with a 17-byte ID, a 2-byte
// packet number and the DATAGRAM frame's type byte, such a payload makes
// the packet exactly full-size, and quic-go batches full-size packets with
// GSO. Longer IDs would leave the largest payload no room at all.
const connIDLen = 17

// dataEnd returns where the meaningful bytes of a data datagram end: its
// header plus the IP packet's own length. ok is false for datagrams that
// carry no IP packet (control types) and for IP packets whose header is
// too short to tell their length.
func dataEnd(b []byte) (end int, ok bool) {
	var hdr int
	switch Kind(b) {
	case TypeIP:
		hdr = 0
	case TypeRouted:
		if len(b) < routedFixed {
			return 0, false
		}
		hdr = routedFixed + int(b[1])
	case TypeTagged:
		if len(b) < taggedFixed {
			return 0, false
		}
		hdr = taggedFixed + int(b[5])
	case TypeTagReturn:
		hdr = TagReturnOverhead
	default:
		return 0, false
	}
	if hdr >= len(b) {
		return 0, false
	}
	n, ok := ipLength(b[hdr:])
	if !ok {
		return 0, false
	}
	return hdr + n, true
}

// ipLength is the length an IPv4 or IPv6 packet's header gives it.
func ipLength(p []byte) (int, bool) {
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return 0, false
		}
		n := int(binary.BigEndian.Uint16(p[2:4]))
		if n < 20 {
			return 0, false
		}
		return n, true
	case 6:
		if len(p) < 40 {
			return 0, false
		}
		return 40 + int(binary.BigEndian.Uint16(p[4:6])), true
	}
	return 0, false
}

// trimPadding returns b without the bytes after its IP packet. A datagram
// whose IP packet claims more bytes than it has is returned as it is, for
// the receiver's parser to refuse.
func trimPadding(b []byte) []byte {
	if end, ok := dataEnd(b); ok && end < len(b) {
		return b[:end]
	}
	return b
}

// paddable reports whether b is a well-formed data datagram at most
// padSlack bytes short of size, which SendDatagram pads to size.
func paddable(b []byte, size int) bool {
	short := size - len(b)
	if short <= 0 || short > padSlack || size > maxPadded {
		return false
	}
	end, ok := dataEnd(b)
	return ok && end == len(b)
}

// fill returns b followed by zeros up to size (at most maxPadded), in buf.
func fill(b []byte, size int, buf *[maxPadded]byte) []byte {
	n := copy(buf[:], b)
	clear(buf[n:size])
	return buf[:size]
}

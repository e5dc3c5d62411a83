package resolver

import "encoding/binary"

// DNS header layout (RFC 1035 §4.1.1) as the fast path reads it.
const (
	headerLen  = 12
	maxNameLen = 255 // wire octets of a name, the root label included

	flagQR     = 1 << 15
	opcodeMask = 0xF << 11
	flagAA     = 1 << 10
	flagTC     = 1 << 9
	flagRD     = 1 << 8
	flagRA     = 1 << 7
	flagCD     = 1 << 4
	rcodeMask  = 0xF

	ednsDO = 1 << 15 // DO bit in the OPT TTL's flags
)

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

// lowerASCII lower-cases an ASCII letter; DNS compares names that way (RFC 4343).
func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// headerReply writes to out a reply that is only a header: the query's ID,
// opcode and RD echoed, QR set, counts zero. It answers queries the server
// cannot read beyond their header (FORMERR) or does not implement (NOTIMP).
func headerReply(out, raw []byte, ra uint16, rcode int) []byte {
	flags := be16(raw[2:])&(opcodeMask|flagRD) | flagQR | ra | uint16(rcode)&rcodeMask
	out = append(out[:0], raw[0], raw[1], byte(flags>>8), byte(flags))
	return append(out, 0, 0, 0, 0, 0, 0, 0, 0)
}

// skipName returns the offset after the (possibly compressed) name at off.
func skipName(msg []byte, off int) (int, bool) {
	for range maxNameLen {
		if off >= len(msg) {
			return 0, false
		}
		n := int(msg[off])
		switch {
		case n == 0:
			return off + 1, true
		case n&0xC0 == 0xC0:
			return off + 2, off+2 <= len(msg)
		case n > 63:
			return 0, false
		}
		off += 1 + n
	}
	return 0, false
}

// questionEnd returns the offset after the first question of msg.
func questionEnd(msg []byte) (int, bool) {
	if len(msg) < headerLen || be16(msg[4:]) == 0 {
		return 0, false
	}
	off, ok := skipName(msg, headerLen)
	if !ok || off+4 > len(msg) {
		return 0, false
	}
	return off + 4, true
}

// equalFold reports whether a and b are equal but for ASCII case.
func equalFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

// maxMsgSize is the largest DNS message (a TCP frame, a UDP datagram).
const maxMsgSize = 65535

// replyLimit is the largest reply the client accepts: 512 octets over UDP
// without EDNS, its EDNS size (at least 512, at most maxUDP) with it, and the
// largest message over TCP (RFC 6891 §6.2.5, RFC 7766).
func replyLimit(tcp, edns bool, udpSize, maxUDP uint16) int {
	switch {
	case tcp:
		return maxMsgSize
	case !edns:
		return minMsgSize
	}
	return int(min(max(udpSize, minMsgSize), maxUDP))
}

// minMsgSize is the size every DNS client accepts over UDP.
const minMsgSize = 512

package resolver

import "encoding/binary"

// query is what the fast path reads of a query of the common shape: one
// question with an uncompressed name, no answer or authority records, and at
// most an OPT record.
type query struct {
	flags   uint16
	nameEnd int // the question name is raw[headerLen:nameEnd]
	qtype   uint16
	qclass  uint16
	edns    bool
	do      bool
	udpSize uint16
}

// Cache key classes of the EDNS part of a query; the reply's OPT depends on it.
const (
	keyNoEDNS byte = iota
	keyEDNS
	keyEDNSDO
)

// parseQuery parses raw into q and appends to key the lower-case wire name,
// the type, the class and the EDNS class, which identify the answer. It
// reports false when raw is not of the common shape; the slow path (a full
// parse) then decides. It allocates nothing when key has room for 260 bytes.
func parseQuery(raw []byte, q *query, key []byte) ([]byte, bool) {
	if len(raw) < headerLen+5 {
		return key, false
	}
	q.flags = be16(raw[2:])
	ar := be16(raw[10:])
	if q.flags&(flagQR|opcodeMask) != 0 || be16(raw[4:]) != 1 ||
		binary.BigEndian.Uint32(raw[6:]) != 0 || ar > 1 {
		return key, false
	}
	off, key, ok := lowerName(raw, key)
	if !ok || off+4 > len(raw) {
		return key, false
	}
	q.nameEnd = off
	q.qtype, q.qclass = be16(raw[off:]), be16(raw[off+2:])
	off += 4
	q.edns, q.do, q.udpSize = false, false, 0
	if ar == 1 {
		if off, ok = parseOPT(raw, off, q); !ok {
			return key, false
		}
	}
	if off != len(raw) {
		return key, false
	}
	class := keyNoEDNS
	switch {
	case q.do:
		class = keyEDNSDO
	case q.edns:
		class = keyEDNS
	}
	key = append(key, raw[q.nameEnd:q.nameEnd+4]...)
	return append(key, class), true
}

// lowerName appends the lower-cased, uncompressed name at raw[headerLen:] to
// key and returns the offset after it.
func lowerName(raw, key []byte) (int, []byte, bool) {
	off := headerLen
	for off < len(raw) {
		n := int(raw[off])
		if n == 0 {
			return off + 1, append(key, 0), true
		}
		end := off + 1 + n
		if n > 63 || end > len(raw) || end-headerLen >= maxNameLen {
			return 0, key, false
		}
		key = append(key, byte(n))
		for _, c := range raw[off+1 : end] {
			key = append(key, lowerASCII(c))
		}
		off = end
	}
	return 0, key, false
}

// parseOPT parses an OPT record of EDNS version 0 at off (RFC 6891 §6.1.2)
// with well-framed options, and returns the offset after it.
func parseOPT(raw []byte, off int, q *query) (int, bool) {
	if off+11 > len(raw) || raw[off] != 0 || be16(raw[off+1:]) != 41 || raw[off+6] != 0 {
		return 0, false
	}
	q.edns = true
	q.udpSize = be16(raw[off+3:])
	q.do = be16(raw[off+7:])&ednsDO != 0
	end := off + 11 + int(be16(raw[off+9:]))
	if end > len(raw) {
		return 0, false
	}
	for o := off + 11; o < end; {
		if o+4 > end {
			return 0, false
		}
		o += 4 + int(be16(raw[o+2:]))
		if o > end {
			return 0, false
		}
	}
	return end, true
}

// patch makes a packed reply for a question asked in lower case the reply to
// raw: the ID, the RD and CD bits and the question name's case are raw's.
func patch(out, raw []byte, q *query) {
	out[0], out[1] = raw[0], raw[1]
	out[2] = out[2]&^byte(flagRD>>8) | raw[2]&byte(flagRD>>8)
	out[3] = out[3]&^byte(flagCD) | raw[3]&byte(flagCD)
	copy(out[headerLen:q.nameEnd], raw[headerLen:q.nameEnd])
}

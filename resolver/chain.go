package resolver

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
)

// The forwarding chain: every ztgate server that forwards a query adds an
// entry to an EDNS option of its own (a code of the local range, RFC 6891
// §9) before it sends the query on, and a server that finds its own entry
// in a query it was asked is on a loop, however many servers the loop goes
// through and wherever they run: two gateways on one host, three on
// three. inflight (forward.go) keeps finding the loops of the queries
// that go on unchained (signed, too long, or not walkable), which come
// back byte for byte but for their ID.
//
// An entry is the server's chainID and the ID it gave the query it
// forwarded, so that the server finds its forward and counts it as a
// loop. A query without an OPT record gets one for the way (and the
// answer loses it again: the client did not ask for EDNS); a query signed
// with TSIG or SIG(0) goes on unchanged, since changing it would break the
// signature. The query is changed in place, byte for byte but for its OPT
// record, which is the one place where the chain lives.
const (
	// chainOption is the option's code.
	chainOption = 65431
	// chainIDLen is the length of a server's part of an entry.
	chainIDLen = 6
	// chainEntryLen is one entry: the server's ID and the query's.
	chainEntryLen = chainIDLen + 2
	// maxChain bounds the entries of a query: a chain longer than this is
	// taken for a loop through servers that have lost track of it.
	maxChain = 8
	// chainUDPSize is the EDNS UDP size of a query that came without EDNS:
	// the DNS flag day's (2020) safe size; the answer is fitted to what the
	// client accepts in any case.
	chainUDPSize = 1232
)

// Record types the chain looks for.
const (
	typeSIG  = 24
	typeOPT  = 41
	typeTSIG = 250
)

// newChainID returns a server's random part of the chain's entries.
func newChainID() (id [chainIDLen]byte) {
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails (Go 1.24)
	return id
}

// chained is a query with this server's entry added to its chain.
type chained struct {
	query   []byte
	ednsAdd bool   // the query had no OPT record: its answer must lose the one added
	back    bool   // the query carried this server's entry: it came back
	backIDs []byte // the IDs this server gave the forwards it came back from
	long    bool   // the chain was longer than maxChain
}

// optRecord is where a message's OPT record is.
type optRecord struct {
	found      bool
	start, end int // the record
	rdata      int // its options: msg[rdata:end]
	signed     bool
}

// findOPT walks msg's records and returns where its OPT record is, and
// whether a TSIG or SIG(0) record signs it. It fails on a message it
// cannot walk to its end.
func findOPT(msg []byte) (optRecord, bool) {
	var r optRecord
	if len(msg) < headerLen {
		return r, false
	}
	off := headerLen
	for range be16(msg[4:]) {
		var ok bool
		if off, ok = skipName(msg, off); !ok || off+4 > len(msg) {
			return r, false
		}
		off += 4
	}
	records := int(be16(msg[6:])) + int(be16(msg[8:]))
	additional := int(be16(msg[10:]))
	for i := range records + additional {
		start := off
		var ok bool
		if off, ok = skipName(msg, off); !ok || off+10 > len(msg) {
			return r, false
		}
		typ := be16(msg[off:])
		rdata := off + 10
		end := rdata + int(be16(msg[off+8:]))
		if end > len(msg) {
			return r, false
		}
		if i >= records {
			switch typ {
			case typeOPT:
				if r.found || off != start+1 || msg[start] != 0 { // one OPT, owned by the root
					return r, false
				}
				r = optRecord{found: true, start: start, end: end, rdata: rdata}
			case typeTSIG, typeSIG:
				r.signed = true
			}
		}
		off = end
	}
	return r, off == len(msg)
}

// chain returns raw with this server's entry for query ID id added to its
// chain (ID set to id), or ok false when raw cannot be changed (it cannot
// be walked, it is signed, or the entry would take it past 65,535 bytes):
// then it is forwarded as it came.
func (s *Server) chain(raw []byte, id uint16) (c chained, ok bool) {
	opt, ok := findOPT(raw)
	if !ok || opt.signed {
		return c, false
	}
	var entries, others []byte // the chain's entries; the OPT's other options
	if opt.found {
		for o := opt.rdata; o < opt.end; {
			if o+4 > opt.end {
				return c, false
			}
			code, n := be16(raw[o:]), int(be16(raw[o+2:]))
			next := o + 4 + n
			if next > opt.end {
				return c, false
			}
			if code == chainOption && entries == nil {
				entries = raw[o+4 : next]
			} else {
				others = append(others, raw[o:next]...)
			}
			o = next
		}
	}
	entries = entries[:len(entries)/chainEntryLen*chainEntryLen]
	for e := entries; len(e) > 0; e = e[chainEntryLen:] {
		if bytes.Equal(e[:chainIDLen], s.chainID[:]) {
			c.back = true
			c.backIDs = append(c.backIDs, e[chainIDLen:chainEntryLen]...)
		}
	}
	if len(entries)/chainEntryLen >= maxChain {
		c.long = true
		return c, true
	}
	option := binary.BigEndian.AppendUint16(nil, chainOption)
	option = binary.BigEndian.AppendUint16(option, uint16(len(entries)+chainEntryLen))
	option = append(append(append(option, entries...), s.chainID[:]...), byte(id>>8), byte(id))
	q := make([]byte, 0, len(raw)+11+len(option))
	if opt.found {
		rdlen := len(others) + len(option)
		if rdlen > 0xffff {
			return c, false
		}
		q = append(q, raw[:opt.rdata-2]...)
		q = binary.BigEndian.AppendUint16(q, uint16(rdlen))
		q = append(append(append(q, others...), option...), raw[opt.end:]...)
	} else {
		if be16(raw[10:]) == 0xffff { // no room to count one more record
			return c, false
		}
		c.ednsAdd = true
		q = append(q, raw...)
		q = append(q, 0)                                          // the root owns it
		q = binary.BigEndian.AppendUint16(q, typeOPT)             // OPT
		q = binary.BigEndian.AppendUint16(q, chainUDPSize)        // its class: the UDP size
		q = append(q, 0, 0, 0, 0)                                 // extended rcode, version 0, no flags
		q = binary.BigEndian.AppendUint16(q, uint16(len(option))) // rdlength
		q = append(q, option...)
		binary.BigEndian.PutUint16(q[10:], be16(raw[10:])+1)
	}
	if len(q) > maxMsgSize { // a TCP frame's length could not tell it: on as it came
		return c, false
	}
	q[0], q[1] = byte(id>>8), byte(id)
	c.query = q
	return c, true
}

// unchain takes out of reply, in place, what the chain added to its query:
// the OPT record when the client sent none (unless it carries an extended
// rcode), else the chain's option if the upstream echoed it. A reply it
// cannot walk comes back as it is.
func unchain(reply []byte, ednsAdded bool) []byte {
	opt, ok := findOPT(reply)
	if !ok || !opt.found || opt.signed {
		return reply
	}
	if ednsAdded {
		if reply[opt.start+5] != 0 { // an extended rcode: keep it
			return reply
		}
		n := copy(reply[opt.start:], reply[opt.end:])
		binary.BigEndian.PutUint16(reply[10:], be16(reply[10:])-1)
		return reply[:opt.start+n]
	}
	for o := opt.rdata; o+4 <= opt.end; {
		next := o + 4 + int(be16(reply[o+2:]))
		if next > opt.end {
			return reply
		}
		if be16(reply[o:]) == chainOption {
			n := copy(reply[o:], reply[next:])
			binary.BigEndian.PutUint16(reply[opt.rdata-2:], uint16(opt.end-opt.rdata-(next-o)))
			return reply[:o+n]
		}
		o = next
	}
	return reply
}

package gateway

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// The steps of TestICMPRandom about TCP flows that exist, and about
// datagrams that come in fragments.

// irEchoServer listens on 127.0.0.1 and echoes what each connection
// sends until it ends; it returns the port. The test's cleanup closes it
// and waits for its goroutines.
func irEchoServer(t *testing.T) uint16 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// irSeg is a TCP segment the gateway sent to the LAN.
type irSeg struct {
	src, dst  netip.AddrPort
	seq, ack  uint32
	flags     uint8
	payload   []byte
	pkt       []byte
	checksums bool // the IP header's (IPv4) and the TCP checksum hold
}

func irParseTCP(p []byte) (irSeg, bool) {
	hl, src, dst, proto, ok := irParse(p)
	if !ok || proto != 6 || len(p) < hl+20 {
		return irSeg{}, false
	}
	t := p[hl:]
	if p[0]>>4 == 4 {
		t = p[hl:binary.BigEndian.Uint16(p[2:])]
	}
	off := int(t[12]>>4) * 4
	if off < 20 || off > len(t) {
		return irSeg{}, false
	}
	s := irSeg{
		src:   netip.AddrPortFrom(src, binary.BigEndian.Uint16(t[0:])),
		dst:   netip.AddrPortFrom(dst, binary.BigEndian.Uint16(t[2:])),
		seq:   binary.BigEndian.Uint32(t[4:]),
		ack:   binary.BigEndian.Uint32(t[8:]),
		flags: t[13], payload: t[off:], pkt: p,
	}
	s.checksums = irSum(t, irPseudo(src, dst, 6, len(t))) == 0xffff && (src.Is6() || irSum(p[:hl], 0) == 0xffff)
	return s, true
}

// irPseudo is the pseudo-header's sum of either family.
func irPseudo(src, dst netip.Addr, proto uint8, n int) uint32 {
	if src.Is6() {
		return irPseudo6(src, dst, proto, n)
	}
	s, d := src.As4(), dst.As4()
	return uint32(binary.BigEndian.Uint16(s[0:])) + uint32(binary.BigEndian.Uint16(s[2:])) +
		uint32(binary.BigEndian.Uint16(d[0:])) + uint32(binary.BigEndian.Uint16(d[2:])) + uint32(proto) + uint32(n)
}

// ofLiveTCP reports whether p is a segment other than a RST of a TCP flow
// that got its SYN-ACK: its retransmissions, ACKs and data are the
// flow's, which the step that opened it checked.
func (r *icmpRand) ofLiveTCP(p []byte) bool {
	s, ok := irParseTCP(p)
	return ok && s.flags&netstacktest.FlagRST == 0 && r.liveTCP[[2]netip.AddrPort{s.dst, s.src}]
}

// irTCPSegment builds a segment of the client's family.
func irTCPSegment(src, dst netip.AddrPort, flags uint8, seq, ack uint32, payload []byte) []byte {
	if src.Addr().Is4() {
		return netstacktest.TCPSegmentAck(src, dst, flags, seq, ack, payload)
	}
	s := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(s[0:], src.Port())
	binary.BigEndian.PutUint16(s[2:], dst.Port())
	binary.BigEndian.PutUint32(s[4:], seq)
	binary.BigEndian.PutUint32(s[8:], ack)
	s[12], s[13] = 5<<4, flags
	binary.BigEndian.PutUint16(s[14:], 65535)
	copy(s[20:], payload)
	return irIPv6(src.Addr(), dst.Addr(), 6, 64, s)
}

// irICMPErr builds an ICMP error from src to dst quoting quoted (as much
// as Linux quotes: 576 bytes in all for IPv4, 1280 for IPv6), with info
// in the header's second word (a packet too big's MTU).
func irICMPErr(src, dst netip.Addr, typ, code uint8, info uint32, quoted []byte) []byte {
	if src.Is4() {
		q := quoted[:min(len(quoted), 576-28)]
		m := make([]byte, 8+len(q))
		m[0], m[1] = typ, code
		binary.BigEndian.PutUint32(m[4:], info)
		copy(m[8:], q)
		binary.BigEndian.PutUint16(m[2:], ^irSum(m, 0))
		return netstacktest.IPv4Packet(src, dst, netstacktest.ProtoICMP, nil, m)
	}
	q := quoted[:min(len(quoted), 1280-48)]
	m := make([]byte, 8+len(q))
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint32(m[4:], info)
	copy(m[8:], q)
	return irIPv6(src, dst, 58, 64, m)
}

// irFragment6 splits an IPv6 packet without extension headers into
// fragments (a fragment header, identification id) of at most size bytes
// of its payload each (a multiple of 8 but the last); a size at least the
// payload's gives one atomic fragment.
func irFragment6(pkt []byte, size int, id uint32) [][]byte {
	size &^= 7
	l4, next := pkt[40:], pkt[6]
	var out [][]byte
	for off := 0; off < len(l4); off += size {
		end := min(off+size, len(l4))
		f := make([]byte, 48+end-off)
		copy(f, pkt[:40])
		f[6] = 44
		binary.BigEndian.PutUint16(f[4:], uint16(len(f)-40))
		f[40] = next
		fo := uint16(off)
		if end < len(l4) {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[42:], fo)
		binary.BigEndian.PutUint32(f[44:], id)
		copy(f[48:], l4[off:end])
		out = append(out, f)
	}
	return out
}

// waitSeg waits for a segment of the flow (client, VIP) from the gateway
// that ok takes.
func (r *icmpRand) waitSeg(client, vip netip.AddrPort, what string, ok func(irSeg) bool) irSeg {
	r.t.Helper()
	var got irSeg
	waitFor(r.t, irWait, what, func() bool {
		for _, p := range r.lan.all() {
			if s, isTCP := irParseTCP(p); isTCP && s.src == vip && s.dst == client && ok(s) {
				got = s
				return true
			}
		}
		return false
	})
	return got
}

// waitEcho waits for the n bytes the gateway sends the client from
// sequence number from on (the backend's echo), and returns them.
func (r *icmpRand) waitEcho(client, vip netip.AddrPort, from uint32, n int) ([]byte, irSeg) {
	r.t.Helper()
	buf := make([]byte, n)
	var first irSeg
	waitFor(r.t, irWait, fmt.Sprintf("%d bytes echoed to %v", n, client), func() bool {
		have := make([]bool, n)
		for _, p := range r.lan.all() {
			s, ok := irParseTCP(p)
			if !ok || s.src != vip || s.dst != client || len(s.payload) == 0 {
				continue
			}
			if !s.checksums {
				r.fatalf("a segment with a bad checksum: % x", p[:min(len(p), 96)])
			}
			off := int(s.seq - from)
			if off < 0 || off >= n {
				continue
			}
			if off == 0 {
				first = s
			}
			for i, b := range s.payload[:min(len(s.payload), n-off)] {
				buf[off+i], have[off+i] = b, true
			}
		}
		return !slices.Contains(have, false)
	})
	return buf, first
}

// tcpLive opens a TCP flow to alpha's port 443, whose backend accepts and
// echoes: the SYN-ACK checked, then ICMP errors about the flow from the
// client, its tenant's router or another tenant's client, in the
// handshake or after it, and data both ways; the client ends the flow with
// a RST.
//
// A port unreachable about the SYN-ACK from the client or a router of its
// tenant aborts the handshake: gVisor takes it for the connection's hard
// error, as Linux does, and the client gets a RST for its SYN
// (handshake_failed), as after a handshake that timed out. Packet too big,
// time exceeded and IPv6's address unreachable change nothing, and
// neither does any error once the flow is established (a soft error, RFC
// 1122 4.2.3.9), nor one from another tenant's client, which the netstack
// drops (icmp_refused).
func (r *icmpRand) tcpLive() {
	c := r.client()
	s := r.svcs[0]
	dst := s.vip4
	if c.addr.Is6() {
		dst = s.vip6
	}
	r.port++
	client := netip.AddrPortFrom(c.addr, r.port)
	vip := netip.AddrPortFrom(dst, 443)
	isn := r.rng.Uint32()
	syn := synPacket(client, vip, isn)
	r.h.gw.lan.Deliver(syn)
	if c.tenant == "" {
		r.drops["unknown_source"]++
		r.logf("SYN of %v to %v: unknown source", client, vip)
		return
	}
	switch reason := r.classify(c, "tcp", vip); reason {
	case "":
	case refuseRate, refuseTenantRate:
		r.refused[[2]string{"tcp", reason}]++
		r.logf("SYN of %v to %v: over its rate", client, vip)
		return
	default:
		r.refused[[2]string{"tcp", reason}]++
		r.expect("rst", syn, dst)
		r.logf("SYN of %v to %v: refused (%s)", client, vip, reason)
		return
	}
	sa := r.waitSeg(client, vip, "the SYN-ACK", func(s irSeg) bool { return s.flags&netstacktest.FlagSYN != 0 })
	if sa.flags != netstacktest.FlagSYN|netstacktest.FlagACK || sa.ack != isn+1 || !sa.checksums || len(sa.payload) != 0 {
		r.fatalf("SYN-ACK of %v: flags %#x ack %d (want %d), checksums %v: % x", vip, sa.flags, sa.ack, isn+1, sa.checksums, sa.pkt)
	}
	r.liveTCP[[2]netip.AddrPort{client, vip}] = true
	srv := sa.seq + 1

	// A client of another tenant (same family).
	var stranger netip.Addr
	for _, o := range irClients {
		if o.tenant != "" && o.tenant != c.tenant && o.addr.Is4() == c.addr.Is4() {
			stranger = o.addr
		}
	}
	// The client itself or a router of its tenant.
	reporter := c.addr
	if r.rng.IntN(3) == 0 {
		reporter = c.addr.Next()
	}
	// A port unreachable is a hard error (RFC 1122 4.2.3.9); network and
	// host unreachables are soft ones, which gVisor takes for hard ones in
	// a handshake (IPv4's, and IPv6's no route): the handshake sends them
	// only about an established flow.
	unreach := func(from netip.Addr, about []byte, hardOnly bool) []byte {
		if c.addr.Is4() {
			if hardOnly {
				return irICMPErr(from, dst, 3, 3, 0, about)
			}
			return irICMPErr(from, dst, 3, []uint8{0, 1, 3}[r.rng.IntN(3)], 0, about)
		}
		if hardOnly {
			return irICMPErr(from, dst, 1, 4, 0, about)
		}
		return irICMPErr(from, dst, 1, []uint8{0, 3, 4}[r.rng.IntN(3)], 0, about)
	}
	soft := func(from netip.Addr, about []byte) ([]byte, string) {
		switch x := r.rng.IntN(3); {
		case c.addr.Is4() && x == 0:
			return irICMPErr(from, dst, 3, 4, 576, about), "fragmentation needed"
		case c.addr.Is4():
			return irICMPErr(from, dst, 11, 0, 0, about), "time exceeded"
		case x == 0:
			return irICMPErr(from, dst, 2, 0, 1280, about), "packet too big"
		case x == 1:
			return irICMPErr(from, dst, 1, 3, 0, about), "address unreachable"
		}
		return irICMPErr(from, dst, 3, 0, 0, about), "time exceeded"
	}

	what := "no error in the handshake"
	switch x := r.rng.IntN(6); x {
	case 0:
		what = fmt.Sprintf("%v's unreachable about the SYN-ACK (dropped)", stranger)
		r.h.gw.lan.Deliver(unreach(stranger, sa.pkt, false))
		r.drops["icmp_refused"]++
	case 1:
		what = fmt.Sprintf("%v's port unreachable about the SYN-ACK: the handshake fails", reporter)
		r.h.gw.lan.Deliver(unreach(reporter, sa.pkt, true))
		r.refused[[2]string{"tcp", refuseHandshake}]++
		r.expect("rst", syn, dst)
		r.waitFlows()
		r.logf("TCP flow of %v to %v: %s", client, vip, what)
		return
	case 2:
		var p []byte
		p, what = soft(reporter, sa.pkt)
		what = fmt.Sprintf("%v's %s about the SYN-ACK", reporter, what)
		r.h.gw.lan.Deliver(p)
	case 3:
		what = "the client's RST in the handshake: the handshake fails"
		r.h.gw.lan.Deliver(irTCPSegment(client, vip, netstacktest.FlagRST, isn+1, 0, nil))
		r.refused[[2]string{"tcp", refuseHandshake}]++
		r.expect("rst", syn, dst) // the SYN's, as for a handshake that times out
		r.waitFlows()
		r.logf("TCP flow of %v to %v: %s", client, vip, what)
		return
	}

	// The handshake's ACK with data, echoed by the backend.
	seq, ack := isn+1, srv
	exchange := func() irSeg {
		data := r.payload()[:0]
		for len(data) == 0 {
			data = r.shortPayload(1 + r.rng.IntN(900))
		}
		r.h.gw.lan.Deliver(irTCPSegment(client, vip, netstacktest.FlagACK|0x08, seq, ack, data))
		got, first := r.waitEcho(client, vip, ack, len(data))
		if !bytes.Equal(got, data) {
			r.fatalf("flow %v to %v: echoed % x, want % x", client, vip, got, data)
		}
		seq += uint32(len(data))
		ack += uint32(len(data))
		return first
	}
	first := exchange()
	switch r.rng.IntN(3) {
	case 0:
		// An error about the established flow, from the client, a router
		// of its tenant or a stranger: the flow goes on.
		from := []netip.Addr{reporter, stranger}[r.rng.IntN(2)]
		var p []byte
		if r.rng.IntN(2) == 0 {
			p = unreach(from, first.pkt, false)
			what += fmt.Sprintf(", %v's unreachable about its data", from)
		} else {
			var kind string
			p, kind = soft(from, first.pkt)
			what += fmt.Sprintf(", %v's %s about its data", from, kind)
		}
		r.h.gw.lan.Deliver(p)
		if from == stranger {
			r.drops["icmp_refused"]++
		}
		exchange()
	case 1:
		exchange()
	}
	r.h.gw.lan.Deliver(irTCPSegment(client, vip, netstacktest.FlagRST|netstacktest.FlagACK, seq, ack, nil))
	r.waitFlows()
	r.logf("TCP flow of %v to %v: %s; data echoed, reset by the client", client, vip, what)
}

// waitFlows waits until the gateway holds the flows the model has (the
// UDP ones: a TCP flow ends within its step).
func (r *icmpRand) waitFlows() {
	r.t.Helper()
	waitFor(r.t, irWait, "the TCP flow's end", func() bool { return r.h.gw.flows.len() == len(r.flows) })
}

// udpFragments sends a UDP datagram in fragments, IPv4 or IPv6, on a flow
// the model has, a new flow or one refused: the stack reassembles it and
// it is a datagram like any other (udp). A refusal's port unreachable
// quotes the datagram reassembled.
func (r *icmpRand) udpFragments() {
	c, src, vip := r.udpTarget()
	dst := vip.Addr()
	payload := make([]byte, 16+r.rng.IntN(1200))
	for i := range payload {
		payload[i] = byte(r.rng.UintN(256))
	}
	p := udpPacket(src, vip, payload)
	var pkts [][]byte
	if c.addr.Is4() {
		pkts = netstacktest.Fragment(p, 8*(1+r.rng.IntN(80)))
	} else {
		pkts = irFragment6(p, 8*(1+r.rng.IntN(80)), r.rng.Uint32())
	}
	if r.rng.IntN(3) == 0 {
		slices.Reverse(pkts)
	}
	for _, f := range pkts {
		r.h.gw.lan.Deliver(f)
	}
	key := [2]netip.AddrPort{src, vip}
	unreachable := func() {
		r.expect("port unreachable", p, dst)
		r.want[len(r.want)-1].reasm = len(pkts) > 1 || c.addr.Is6()
	}
	switch {
	case c.tenant == "":
		r.drops["unknown_source"] += len(pkts)
	case r.flows[key]:
	case dst == irGW4 || dst == irGW6:
		unreachable()
	default:
		if reason := r.classify(c, "udp", vip); reason != "" {
			r.refused[[2]string{"udp", reason}]++
			unreachable()
		} else {
			r.flows[key] = true
		}
	}
	r.logf("UDP of %v to %v in %d fragments (%d flows)", src, vip, len(pkts), len(r.flows))
}

// irReassembledQuote reports whether q, the quote of an ICMP error about
// a datagram gVisor reassembled from fragments, is the client's datagram
// req, as much of it as fits in room. gVisor quotes the reassembled
// datagram under its first fragment's header: IPv4's with the first
// fragment's header checksum (the lengths and flags are the datagram's),
// IPv6's with the first fragment's payload length and its fragment header
// (then the whole datagram's transport header and payload). Linux quotes
// the datagram as if it had come whole; its clients find their socket by
// either quote.
func irReassembledQuote(q, req []byte, room int) bool {
	if req[0]>>4 == 4 {
		return len(q) == min(len(req), room) && bytes.Equal(q[:10], req[:10]) && bytes.Equal(q[12:], req[12:len(q)])
	}
	if len(q) != min(len(req)+8, room) || len(q) < 48 {
		return false
	}
	return bytes.Equal(q[:4], req[:4]) && q[6] == 44 && bytes.Equal(q[7:40], req[7:40]) && q[40] == req[6] &&
		binary.BigEndian.Uint16(q[42:])&^7 == 0 && bytes.Equal(q[48:], req[40:40+len(q)-48])
}

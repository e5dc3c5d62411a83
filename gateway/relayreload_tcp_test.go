package gateway

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// This file holds TestRelayReloadRandom's TCP agents, its IPv6 packets and
// its DNS answers of other types than A.

// rlInner is the inner address of the run's n-th tag.
func rlInner(n int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64, byte(n / 250), byte(1 + n%250)})
}

// rlBridge is the agents' TCP client: a client stack that owns every tag's
// inner address. What it sends from an open tag's address goes to the
// gateway under that tag, as the relay forwards an agent's packets; the
// TCP segments the gateway returns under a tag reach it.
type rlBridge struct {
	client *netstacktest.Client
	mu     sync.Mutex
	sess   *tunnel.Session
	open   map[netip.Addr]*rlTag // an open tag's inner address → the tag
	owner  map[netip.Addr]uint32 // every tag's inner address → its tag
	errs   []string
}

func startRLBridge(t *testing.T) *rlBridge {
	addrs := make([]netip.Addr, rlInners)
	for i := range addrs {
		addrs[i] = rlInner(i)
	}
	c, err := netstacktest.NewClient(1100, addrs...)
	if err != nil {
		t.Fatal(err)
	}
	b := &rlBridge{client: c, open: map[netip.Addr]*rlTag{}, owner: map[netip.Addr]uint32{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(b)
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return b
}

// Deliver implements netstack.PacketSink: the client's packets.
func (b *rlBridge) Deliver(pkt []byte) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return
	}
	src := netip.AddrFrom4([4]byte(pkt[12:16]))
	b.mu.Lock()
	tg, s := b.open[src], b.sess
	b.mu.Unlock()
	if tg == nil || s == nil {
		return // the relay forwards nothing of a dead agent session
	}
	d, err := tunnel.AppendTagged(nil, tg.id, tg.service, pkt)
	if err != nil {
		return
	}
	_ = s.SendDatagram(d)
}

// reply takes a TCP segment the gateway returned under tag: the relay
// routes it only to the agent the tag was drawn for, and only while the
// tag lives.
func (b *rlBridge) reply(tag uint32, pkt []byte) {
	dst := netip.AddrFrom4([4]byte(pkt[16:20]))
	b.mu.Lock()
	owner, known := b.owner[dst]
	tg := b.open[dst]
	if !known || owner != tag {
		b.errs = append(b.errs, fmt.Sprintf("a TCP segment under tag %d is for %s, the inner address of tag %d", tag, dst, owner))
	}
	b.mu.Unlock()
	if tg != nil && tg.id == tag {
		_ = b.client.WritePackets([][]byte{pkt})
	}
}

func (b *rlBridge) setSession(s *tunnel.Session) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sess = s
}

func (b *rlBridge) opened(tg *rlTag) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.open[tg.inner] = tg
	b.owner[tg.inner] = tg.id
}

// closed forgets a tag the relay closed; its agent gives its connection
// up.
func (b *rlBridge) closed(tg *rlTag) {
	b.mu.Lock()
	delete(b.open, tg.inner)
	b.mu.Unlock()
	if tg.tcp != nil {
		tg.tcp.Close()
		tg.tcp = nil
	}
}

// check fails the run for every misrouted segment seen.
func (r *rlRun) checkBridge() {
	r.tcp.mu.Lock()
	errs := r.tcp.errs
	r.tcp.errs = nil
	r.tcp.mu.Unlock()
	if len(errs) > 0 {
		r.fatalf("%s", strings.Join(errs, "\n"))
	}
}

// rlTCPProbe is a TCP connection an agent opens under a tag (or a line on
// the one it kept), and what must come of it.
type rlTCPProbe struct {
	tg       *rlTag
	what     string
	tok      string
	src, dst netip.AddrPort
	// backends: those that may answer; none: the gateway refuses it (RST).
	backends []string
	kept     bool
	got      string
	conn     net.Conn
	done     chan struct{}
}

// tcpProbes opens, under tg, a TCP connection to a port of its service on
// its VIP (or one the service lacks), and sends a line on the connection
// it kept, when the model can tell where that goes. Only where the
// gateway must answer, with data or RST: a SYN it drops would cost the
// run its timeout.
func (r *rlRun) tcpProbes(tg *rlTag) []*rlTCPProbe {
	var out []*rlTCPProbe
	s := r.cur.service(tg.service)
	vip := r.vipOf(tg.service)
	if tg.tcp != nil {
		if s != nil && r.cur == tg.tcpCfg && vip == tg.tcpVIP && s.tcpIdle != "300ms" {
			p := &rlTCPProbe{tg: tg, what: "line on the kept TCP connection", tok: r.token(), backends: []string{tg.tcpBackend},
				kept: true, conn: tg.tcp, done: make(chan struct{})}
			go func() {
				defer close(p.done)
				p.got = rlTCPLine(p.conn, p.tok)
			}()
			out = append(out, p)
		}
	}
	if s == nil || !vip.IsValid() {
		return out
	}
	dport := r.pickPort(s, "tcp")
	p := &rlTCPProbe{tg: tg, what: fmt.Sprintf("TCP to %s:%d", tg.service, dport), tok: r.token(),
		src: netip.AddrPortFrom(tg.inner, r.srcPort()), dst: netip.AddrPortFrom(vip, dport), done: make(chan struct{})}
	if sp := s.port("tcp", dport); sp != nil && s.allows(tg.tenant) && s.passes() {
		for _, i := range s.backends {
			p.backends = append(p.backends, netip.AddrPortFrom(r.w.addrs[i], r.w.port("tcp", sp.target)).String())
		}
	}
	go func() {
		defer close(p.done)
		p.conn, p.got = rlDialLine(r.tcp.client, p.src, p.dst, p.tok)
	}()
	return append(out, p)
}

// rlReset closes c with a RST (c is a *netstacktest.TCPConn).
func rlReset(c net.Conn) {
	if tc, ok := c.(*netstacktest.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// rlTCPLine sends tok as a line and returns the backend that echoed it.
// rlDialLine opens a TCP connection from src to dst on client and sends
// tok on it: the connection (nil when the dial failed) and what came back
// (rlTCPLine), "refused", or the dial's error.
func rlDialLine(client *netstacktest.Client, src, dst netip.AddrPort, tok string) (net.Conn, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	c, err := client.DialTCPFrom(ctx, src, dst)
	switch {
	case err != nil && strings.Contains(err.Error(), "refused"):
		return nil, "refused"
	case err != nil:
		return nil, "error: " + err.Error()
	}
	return c, rlTCPLine(c, tok)
}

func rlTCPLine(c net.Conn, tok string) string {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "%s\n", tok); err != nil {
		return "write: " + err.Error()
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "read: " + err.Error()
	}
	backend, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	if rest != tok {
		return "a stray line " + line
	}
	return backend
}

// checkTCP waits for the TCP probes and checks them; a connection that
// reached a backend is kept, while its tag and configuration stay, to
// send on and for its flow to end with its tag.
func (r *rlRun) checkTCP(probes []*rlTCPProbe) {
	for _, p := range probes {
		<-p.done
	}
	r.checkBridge()
	for _, p := range probes {
		tg := p.tg
		where := fmt.Sprintf("%s under tag %d (%s, tenant %s)", p.what, tg.id, tg.service, tg.tenant)
		switch {
		case p.backends == nil && p.got != "refused":
			if p.conn != nil {
				p.conn.Close()
			}
			r.fatalf("%s: %s, want it refused", where, p.got)
		case p.backends != nil && !slices.Contains(p.backends, p.got):
			r.fatalf("%s: %s, want an answer from one of %v", where, p.got, p.backends)
		}
		switch {
		case p.kept:
			r.stats["answers: tcp kept"]++
		case p.conn == nil:
			r.stats["refused: tcp"]++
		case tg.tcp == nil && r.cur.service(tg.service).tcpIdle != "300ms":
			tg.tcp, tg.tcpBackend, tg.tcpCfg, tg.tcpVIP = p.conn, p.got, r.cur, p.dst.Addr()
			r.stats["answers: tcp"]++
		default:
			// Reset: a FIN exchange still going on when the relay moves
			// its pools would leave packets to a VIP outside them, which
			// the gateway drops (not_routed), into the LAN's count; so
			// would the close of one the gateway ends for being idle.
			rlReset(p.conn)
			r.stats["answers: tcp"]++
		}
	}
}

// rlInner6 is an agent's IPv6 inner address: a tunnel carries IPv4 only
// (configuration.md, relay.pool6), so nothing sent from it is answered.
var rlInner6 = netip.MustParseAddr("fd7a:115c:a1e0::7")

// rlUDP6 is an IPv6 UDP datagram, checksum correct.
func rlUDP6(src, dst netip.AddrPort, payload []byte) []byte {
	p := make([]byte, 48+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(8+len(payload)))
	p[6], p[7] = 17, 64
	s16, d16 := src.Addr().As16(), dst.Addr().As16()
	copy(p[8:], s16[:])
	copy(p[24:], d16[:])
	u := p[40:]
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(p[8:40])
	sum += uint32(len(u)) + 17
	add(u)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return p
}

package agent

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/tunnel"
)

// The fakes of TestAgentChurnRandom: a TUN device the test writes raw
// packets into and reads the agent's packets from, a relay whose sessions
// the test welcomes when it wants, and gateways that take direct paths.

// rawTUN is a netstack.Device whose packets the test makes: send hands one
// to the agent's router and returns once the router has routed it, so that
// the test knows the router's decision is made; what the agent writes to
// the TUN (its local stack's answers, the tunnel's packets) is in out.
type rawTUN struct {
	in   chan rawPacket
	out  chan written
	lost atomic.Int64 // packets written while out was full
	done chan struct{}
	once sync.Once
}

type rawPacket struct {
	pkt     []byte
	handled chan struct{}
}

// written is a packet the agent wrote to the TUN, and when.
type written struct {
	b  []byte
	at time.Time
}

var _ netstack.Device = (*rawTUN)(nil)

func newRawTUN() *rawTUN {
	return &rawTUN{in: make(chan rawPacket), out: make(chan written, 4096), done: make(chan struct{})}
}

// Run implements netstack.Device.
func (d *rawTUN) Run(sink netstack.PacketSink) error {
	flusher, _ := sink.(netstack.Flusher)
	for {
		select {
		case <-d.done:
			return nil
		case p := <-d.in:
			sink.Deliver(p.pkt)
			if flusher != nil {
				flusher.Flush()
			}
			close(p.handled)
		}
	}
}

// send gives the router a copy of pkt, as a read of the TUN would, and
// waits until it has been routed; false when the device is closed.
func (d *rawTUN) send(pkt []byte) bool {
	p := rawPacket{pkt: bytes.Clone(pkt), handled: make(chan struct{})}
	select {
	case d.in <- p:
	case <-d.done:
		return false
	}
	select {
	case <-p.handled:
		return true
	case <-d.done:
		return false
	}
}

// WritePackets implements netstack.Device.
func (d *rawTUN) WritePackets(pkts [][]byte) error {
	now := time.Now()
	for _, p := range pkts {
		select {
		case d.out <- written{b: bytes.Clone(p), at: now}:
		default:
			d.lost.Add(1)
		}
	}
	return nil
}

// Close implements netstack.Device.
func (d *rawTUN) Close() error {
	d.once.Do(func() { close(d.done) })
	return nil
}

func (d *rawTUN) MTU() int       { return 1280 }
func (d *rawTUN) Headroom() int  { return 0 }
func (d *rawTUN) WriteCap() int  { return 1280 }
func (d *rawTUN) BatchSize() int { return 8 }

// place is where a datagram arrived: a session of the fake relay or of a
// fake gateway, by its number (unique across all of them).
type place struct {
	server string // "relay", "gw1", "gw2"
	seq    int
}

// arrival is a datagram one of the fakes received from an agent.
type arrival struct {
	at    place
	agent string // the name in the certificate of the session it came on
	b     []byte
}

// fakeSession is a session a fake server accepted.
type fakeSession struct {
	s      *tunnel.Session
	seq    int
	agent  string      // the peer's name
	silent atomic.Bool // pings go unanswered
}

// fakeServer is the fake relay or a fake gateway: it accepts sessions,
// hands every datagram they carry to arrivals, answers pings (unless a
// session is silent) and hands other control messages to msgs.
type fakeServer struct {
	name     string // "relay", "gw1", ...
	identity string // tenant/role/name of its certificate
	ln       *tunnel.Listener
	addr     netip.AddrPort
	arrivals chan<- arrival
	seq      *atomic.Int64
	// hold: sessions wait in accepted for the test to welcome them (the
	// relay); else they are welcomed at once (the gateways).
	hold     bool
	accepted chan *tunnel.Session
	msgs     chan sessionMsg
	overflow atomic.Int64 // arrivals or messages that found their channel full

	mu       sync.Mutex
	sessions []*fakeSession // guarded by mu

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// sessionMsg is a control message of a session of a fake server.
type sessionMsg struct {
	seq   int
	agent string
	msg   any
}

func startFake(t *testing.T, p *pki, req tunnel.IssueRequest, name string, hold bool, arrivals chan<- arrival, seq *atomic.Int64) *fakeServer {
	ln, err := tunnel.Listen("127.0.0.1:0", tunnel.ListenConfig{Credentials: p.creds(req)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeServer{
		name: name, identity: req.Tenant + "/" + req.Role + "/" + req.Name, ln: ln,
		addr: netip.MustParseAddrPort(ln.Addr().String()), arrivals: arrivals, seq: seq, hold: hold,
		accepted: make(chan *tunnel.Session, 16), msgs: make(chan sessionMsg, 1024), cancel: cancel,
	}
	f.wg.Go(func() {
		for {
			s, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			if hold {
				select {
				case f.accepted <- s:
				default:
					f.overflow.Add(1)
					_ = s.Close("test: too many sessions waiting")
				}
				continue
			}
			if _, err := f.welcome(s); err != nil {
				_ = s.Close("test: no welcome")
			}
		}
	})
	return f
}

// close closes the listener, and with it every session, and waits for
// the server's goroutines.
func (f *fakeServer) close() {
	f.cancel()
	f.ln.Close()
	f.wg.Wait()
}

// welcome answers a session's hello and starts reading it.
func (f *fakeServer) welcome(s *tunnel.Session) (*fakeSession, error) {
	if err := s.SendWelcome(tunnel.Welcome{MaxPacket: 1200}); err != nil {
		return nil, err
	}
	fs := &fakeSession{s: s, seq: int(f.seq.Add(1)), agent: s.Peer().Name}
	f.mu.Lock()
	f.sessions = append(f.sessions, fs)
	f.mu.Unlock()
	at := place{server: f.name, seq: fs.seq}
	f.wg.Go(func() {
		for {
			b, err := s.ReceiveDatagram(context.Background())
			if err != nil {
				return
			}
			if tunnel.Kind(b) == tunnel.TypeQAD {
				continue
			}
			select {
			case f.arrivals <- arrival{at: at, agent: fs.agent, b: b}:
			default:
				f.overflow.Add(1)
			}
		}
	})
	f.wg.Go(func() {
		for {
			msg, err := tunnel.DecodeControl(s.Next())
			if err != nil {
				if _, ok := tunnel.ReplyFor(err); ok {
					continue
				}
				return
			}
			switch m := msg.(type) {
			case *tunnel.Ping:
				if !fs.silent.Load() {
					_ = s.Send(&tunnel.Pong{Type: tunnel.MessagePong, Seq: m.Seq})
				}
			case *tunnel.Pong:
			default:
				select {
				case f.msgs <- sessionMsg{seq: fs.seq, agent: fs.agent, msg: msg}:
				default:
					f.overflow.Add(1)
				}
			}
		}
	})
	return fs, nil
}

// live returns the sessions of agent that have not ended.
func (f *fakeServer) live(agent string) []*fakeSession {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*fakeSession
	for _, fs := range f.sessions {
		select {
		case <-fs.s.Done():
		default:
			if fs.agent == agent {
				out = append(out, fs)
			}
		}
	}
	return out
}

// tunDNS is a datagram connection from the agent's address to the zone's
// server at the gateway address, through a rawTUN: what resolvertest.Ask
// writes goes into the TUN as a UDP packet, and the answer is read from
// what the agent writes to the TUN; everything else written meanwhile is
// handed to other.
type tunDNS struct {
	tun      *rawTUN
	src, dst netip.AddrPort
	id       func() uint16 // the IP identification of the next packet
	other    func(written) // a packet that is not the answer
	deadline time.Time
}

var (
	_ net.Conn       = (*tunDNS)(nil)
	_ net.PacketConn = (*tunDNS)(nil)
)

func (c *tunDNS) Write(b []byte) (int, error) {
	pkt := withID(udpPacket(c.src, c.dst, b), c.id())
	if !c.tun.send(pkt) {
		return 0, net.ErrClosed
	}
	return len(b), nil
}

func (c *tunDNS) Read(b []byte) (int, error) {
	wait := time.Until(c.deadline)
	if c.deadline.IsZero() {
		wait = testTimeout
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case w := <-c.tun.out:
			p := w.b
			src, dst, ok := netstack.IPv4Addrs(p)
			if ok && p[9] == tunnel.ProtoUDP && len(p) >= 28 && src == c.dst.Addr() && dst == c.src.Addr() &&
				portsOf(p) == [2]uint16{c.dst.Port(), c.src.Port()} {
				return copy(b, p[28:]), nil
			}
			c.other(w)
		case <-timer.C:
			return 0, os.ErrDeadlineExceeded
		case <-c.tun.done:
			return 0, net.ErrClosed
		}
	}
}

func (c *tunDNS) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := c.Read(b)
	return n, c.RemoteAddr(), err
}

func (c *tunDNS) WriteTo(b []byte, _ net.Addr) (int, error) { return c.Write(b) }
func (c *tunDNS) Close() error                              { return nil }
func (c *tunDNS) LocalAddr() net.Addr                       { return net.UDPAddrFromAddrPort(c.src) }
func (c *tunDNS) RemoteAddr() net.Addr                      { return net.UDPAddrFromAddrPort(c.dst) }
func (c *tunDNS) SetDeadline(t time.Time) error             { c.deadline = t; return nil }
func (c *tunDNS) SetReadDeadline(t time.Time) error         { c.deadline = t; return nil }
func (c *tunDNS) SetWriteDeadline(time.Time) error          { return nil }

package gateway

import (
	"bufio"
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// agentBridge is a direct agent's TCP stack: a client netstack at
// agentInner whose packets go over the session as raw IP datagrams, and
// into which the gateway's IP datagrams come back.
type agentBridge struct {
	client *netstacktest.Client
	s      *tunnel.Session
}

func startAgentBridge(t *testing.T, s *tunnel.Session) *agentBridge {
	t.Helper()
	c, err := netstacktest.NewClient(1100, agentInner)
	if err != nil {
		t.Fatal(err)
	}
	b := &agentBridge{client: c, s: s}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		c.Run(b)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			d, err := s.ReceiveDatagram(ctx)
			if err != nil {
				return
			}
			if tunnel.Kind(d) == tunnel.TypeIP {
				c.WritePackets([][]byte{append([]byte(nil), d...)})
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		c.Close()
		<-done
		<-done
	})
	return b
}

// Deliver implements netstack.PacketSink: the agent's packets.
func (b *agentBridge) Deliver(pkt []byte) { _ = b.s.SendDatagram(append([]byte(nil), pkt...)) }

// TestDirectLeftoverReset: a direct agent's TCP connection whose flow the
// gateway closed gracefully just before the agent lost its way to the
// service is reset, as its open flows are (rights_removed, or cut with
// its session). The agent's packets to the service are dropped from then
// on (not_authorised), or have no session to come by, so the FIN could
// never be acknowledged: gVisor would keep the connection, resending it,
// for minutes.
func TestDirectLeftoverReset(t *testing.T) {
	port := startLineEcho(t, "echo")
	for _, tc := range []struct {
		name string
		cut  func(t *testing.T, h *fileHarness, s *tunnel.Session, head string, synth netip.Addr)
		// told: the agent's end is reset (its session lives on); else the
		// gateway's connection is gone, with its session.
		told bool
	}{
		{"rights removed", func(t *testing.T, h *fileHarness, _ *tunnel.Session, head string, _ netip.Addr) {
			h.write(t, head+tcpService("echo", `"globex"`, "10.100.0.7", "127.0.0.1", port))
			if _, err := h.gw.Reload(); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"session closed", func(t *testing.T, h *fileHarness, s *tunnel.Session, _ string, synth netip.Addr) {
			s.Close("done")
			waitFor(t, 5*time.Second, "the session's ingress to close", func() bool {
				return h.gw.ingresses.lookup(synth) == nil
			})
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			section, ca := writePKI(t, dir)
			head := quietGateway + section + twoTenants
			h := newFileHarness(t, head+tcpService("echo", `"acme"`, "10.100.0.7", "127.0.0.1", port))
			s := h.dialDirectAgent(t, agentCreds(t, ca, dir, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"}))
			b := startAgentBridge(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := b.client.DialTCP(ctx, agentInner, netip.MustParseAddrPort("10.100.0.7:7"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			lc := &lineConn{c: c, r: bufio.NewReader(c)}
			if got := lc.roundTrip(t, "before"); got != "echo: before" {
				t.Fatalf("before: %q", got)
			}
			// The gateway ends the flow gracefully (as the API or an idle
			// timeout would): its FIN reaches the agent, which keeps its end.
			for _, f := range h.gw.flows.list(func(*flow) bool { return true }) {
				f.close("test")
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := lc.r.ReadString('\n'); err != io.EOF {
				t.Fatalf("the agent's read after its flow closed: %v, want EOF", err)
			}
			waitFor(t, 5*time.Second, "the closed flow to end", func() bool {
				return len(h.gw.flows.list(func(*flow) bool { return true })) == 0
			})
			synth := synthOf(h)
			if n := connsOf(h, synth); n != 1 {
				t.Fatalf("%d connections of the agent in the gateway's netstack, want its closed one", n)
			}

			tc.cut(t, h, s, head, synth)
			if tc.told {
				// Reset, the agent's end fails its writes; left alone, they
				// go on succeeding, into packets dropped as not_authorised.
				waitWriteReset(t, c, "the agent's connection to the service it lost")
			}
			if n := connsOf(h, synth); n != 0 {
				t.Errorf("%d connections of the agent left in the gateway's netstack, want none", n)
			}
		})
	}
}

// synthOf returns the synthetic address of h's one direct session (the
// zero Addr when it has none).
func synthOf(h *fileHarness) netip.Addr {
	h.gw.ingresses.mu.RLock()
	defer h.gw.ingresses.mu.RUnlock()
	for a := range h.gw.ingresses.bySynth {
		return a
	}
	return netip.Addr{}
}

// connsOf counts the open or closing TCP connections of client in h's
// netstack (ResetTCP asked to reset none).
func connsOf(h *fileHarness, client netip.Addr) int {
	n := 0
	h.gw.ns.ResetTCP(func(_, remote netip.AddrPort) bool {
		if remote.Addr() == client {
			n++
		}
		return false
	})
	return n
}

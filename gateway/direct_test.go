package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/netstack"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/tunnel"
)

// directConfig publishes web and db to every tenant, with a direct
// listener on loopback.
func directConfig(t testing.TB, port int) (string, *tunnel.CA, string) {
	dir := t.TempDir()
	section, ca := writePKI(t, dir)
	return section + quietGateway + acmeTenant + `[[service]]
name = "web"
tenants = ["*"]
vip = "10.100.0.10"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = ` + strconv.Itoa(port) + `
  [service.health]
  type = "none"
[[service]]
name = "db"
tenants = ["*"]
vip = "10.100.0.11"
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "tcp"
  port = 5432
  target = ` + strconv.Itoa(port) + `
  [service.health]
  type = "none"
`, ca, dir
}

// TestRawIPNeedsServiceRights: a raw IP datagram on the direct path names
// no service, so the gateway takes the service from its destination VIP
// and applies the identity's rights as for a routed one. An agent whose
// certificate of the original system grants it web only (agent.web.ztna)
// reaches web and not db, on both protocol versions.
func TestRawIPNeedsServiceRights(t *testing.T) {
	port := startHold(t)
	toml, ca, dir := directConfig(t, port)
	h := newHarness(t, toml, func(o *Options) { o.HandshakeTimeout = 200 * time.Millisecond })
	addr := h.gw.direct.Addr().String()

	creds := agentCreds(t, ca, dir, tunnel.IssueRequest{Name: "web", LegacySANs: []string{"agent.web.ztna"}, NoIdentity: true})
	denied := func() float64 { return testutil.ToFloat64(h.gw.m.dropped.WithLabelValues("not_authorised")) }

	for _, alpn := range []string{tunnel.ALPNV2, tunnel.ALPNV1} {
		t.Run(alpn, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := tunnel.Dial(ctx, addr, tunnel.DialConfig{
				Credentials: creds, ServerName: "127.0.0.1", ALPN: []string{alpn},
				Hello: tunnel.Hello{Role: tunnel.RoleAgent, Name: "web", InnerAddr: agentInner},
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close("done")
			from := netip.AddrPortFrom(agentInner, 40001)
			if alpn == tunnel.ALPNV1 {
				// ztna-v1 registers the service first; db is refused.
				for _, svc := range []string{"web", "db"} {
					reg, err := tunnel.AppendRegistration(nil, tunnel.TypeAgentRegistration, svc)
					if err != nil {
						t.Fatal(err)
					}
					s.SendDatagram(reg)
				}
			}

			before := denied()
			db := netstacktest.TCPSegment(from, netip.MustParseAddrPort("10.100.0.11:5432"), netstacktest.FlagSYN, 1, nil)
			if err := s.SendDatagram(db); err != nil {
				t.Fatal(err)
			}
			web := netstacktest.TCPSegment(from, netip.MustParseAddrPort("10.100.0.10:80"), netstacktest.FlagSYN, 1, nil)
			if err := s.SendDatagram(web); err != nil {
				t.Fatal(err)
			}
			// web answers with a SYN-ACK from its VIP; db's SYN is
			// dropped and counted, never answered.
			for {
				b, err := s.ReceiveDatagram(ctx)
				if err != nil {
					t.Fatalf("no SYN-ACK from web: %v (not_authorised %v → %v)", err, before, denied())
				}
				if tunnel.Kind(b) != tunnel.TypeIP {
					continue
				}
				src, _, ok := netstack.IPv4Addrs(b)
				if !ok {
					continue
				}
				if src == netip.MustParseAddr("10.100.0.11") {
					t.Fatalf("db answered an agent with rights for web only")
				}
				if src == netip.MustParseAddr("10.100.0.10") {
					break
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for denied() == before {
				if time.Now().After(deadline) {
					t.Fatal("the packet to db was not counted as not_authorised")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestDirectListenerRefusals: the direct listener takes at most
// tunnel.MaxIdentitySessions sessions of one agent identity (the next is
// refused as busy, another identity still gets in, and a freed slot is
// taken again), and never a gateway's certificate.
func TestDirectListenerRefusals(t *testing.T) {
	port := startHold(t)
	toml, ca, dir := directConfig(t, port)
	h := newHarness(t, toml)
	addr := h.gw.direct.Addr().String()
	credsFor := func(req tunnel.IssueRequest) *tunnel.Credentials {
		t.Helper()
		crt, key, err := ca.Issue(req)
		if err != nil {
			t.Fatal(err)
		}
		cf, kf := filepath.Join(dir, req.Name+".crt"), filepath.Join(dir, req.Name+".key")
		if err := os.WriteFile(cf, crt, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(kf, key, 0o600); err != nil {
			t.Fatal(err)
		}
		creds, err := tunnel.NewCredentials(tunnel.CredentialsConfig{CertFile: cf, KeyFile: kf, CAFile: filepath.Join(dir, "ca.crt")}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return creds
	}
	dial := func(creds *tunnel.Credentials, role string) (*tunnel.Session, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := tunnel.Dial(ctx, addr, tunnel.DialConfig{
			Credentials: creds, ServerName: "127.0.0.1",
			Hello: tunnel.Hello{Role: role, Name: "x", InnerAddr: agentInner},
		}, nil)
		if err == nil {
			t.Cleanup(func() { s.Close("test over") })
		}
		return s, err
	}
	copied := credsFor(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "copied"})
	var sessions []*tunnel.Session
	for i := range tunnel.MaxIdentitySessions {
		s, err := dial(copied, tunnel.RoleAgent)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		sessions = append(sessions, s)
	}
	var refused *tunnel.RefusedError
	if _, err := dial(copied, tunnel.RoleAgent); !errors.As(err, &refused) || refused.Code != "busy" {
		t.Fatalf("session %d of one identity: %v, want refused as busy", tunnel.MaxIdentitySessions+1, err)
	}
	if _, err := dial(credsFor(tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "other"}), tunnel.RoleAgent); err != nil {
		t.Fatalf("another identity: %v", err)
	}
	sessions[0].Close("making room")
	waitFor(t, 5*time.Second, "a freed slot taken again", func() bool {
		s, err := dial(copied, tunnel.RoleAgent)
		if err == nil {
			s.Close("done")
		}
		return err == nil
	})
	if _, err := dial(credsFor(tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleGateway, Name: "gw9"}), tunnel.RoleGateway); !errors.As(err, &refused) || refused.Code != "wrong_role" {
		t.Errorf("a gateway's certificate: %v, want refused as wrong_role", err)
	}
	for _, reason := range []string{"too_many_sessions", "wrong_role"} {
		if n := testutil.ToFloat64(h.gw.m.tunnelRefusals.WithLabelValues(reason)); n < 1 {
			t.Errorf("no refusal counted as %s", reason)
		}
	}
}

// agentCreds issues req from ca into dir (agent.crt, agent.key, beside the
// ca.crt there) and loads them as an agent's credentials.
func agentCreds(t *testing.T, ca *tunnel.CA, dir string, req tunnel.IssueRequest) *tunnel.Credentials {
	t.Helper()
	crt, key, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"agent.crt": crt, "agent.key": key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	creds, err := tunnel.NewCredentials(tunnel.CredentialsConfig{
		CertFile: filepath.Join(dir, "agent.crt"), KeyFile: filepath.Join(dir, "agent.key"), CAFile: filepath.Join(dir, "ca.crt"),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// TestDirectBadHelloCounted: a direct agent whose hello has no inner
// address is refused as bad_message and counted, as every refusal at the
// hello is (ztgate_tunnel_refusals_total{reason="bad_hello"}). It was
// refused without a count.
func TestDirectBadHelloCounted(t *testing.T) {
	port := startHold(t)
	toml, ca, dir := directConfig(t, port)
	h := newHarness(t, toml)
	creds := agentCreds(t, ca, dir, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := tunnel.Dial(ctx, h.gw.direct.Addr().String(), tunnel.DialConfig{
		Credentials: creds, ServerName: "127.0.0.1", Hello: tunnel.Hello{Role: tunnel.RoleAgent, Name: "laptop"},
	}, nil)
	var refused *tunnel.RefusedError
	if !errors.As(err, &refused) || refused.Code != tunnel.CodeBadMessage {
		if err == nil {
			s.Close("done")
		}
		t.Fatalf("a hello without inner_addr: %v, want refused as %s", err, tunnel.CodeBadMessage)
	}
	if n := testutil.ToFloat64(h.gw.m.tunnelRefusals.WithLabelValues("bad_hello")); n != 1 {
		t.Errorf("ztgate_tunnel_refusals_total{reason=\"bad_hello\"} = %v, want 1", n)
	}
}

// TestDirectReloadEndsUnreachableFlows: a reload that takes a service
// from a direct agent — its tenant removed from the service's, or the
// service removed — ends the agent's flows of it at once: the direct path
// drops their packets from then on (not_authorised), so they could carry
// nothing until their idle timeout, or their drain_timeout, while holding
// their backend's socket. A flow of a service the agent still reaches
// stays. Before, they stayed until their idle timeout.
func TestDirectReloadEndsUnreachableFlows(t *testing.T) {
	udpService := func(name, tenants, vip string, target int) string {
		return fmt.Sprintf("[[service]]\nname = %q\ntenants = [%s]\nvip = %q\nbackends = [\"127.0.0.1\"]\n"+
			"  [[service.port]]\n  protocol = \"udp\"\n  port = 7\n  target = %d\n  [service.health]\n  type = \"none\"\n",
			name, tenants, vip, target)
	}
	for _, tc := range []struct {
		name  string
		after string // echo's [[service]] after the reload
	}{
		{"tenant removed", `"globex"`},
		{"service removed", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			section, ca := writePKI(t, dir)
			echo, kept := startUDPEcho(t), startUDPEcho(t)
			head := "[gateway]\nstate_dir = \"STATE\"\ndrain_timeout = \"1h\"\n[api]\nlisten = \"off\"\n" + section + twoTenants +
				udpService("kept", `"acme"`, "10.100.0.8", kept)
			h := newFileHarness(t, head+udpService("echo", `"acme"`, "10.100.0.7", echo))
			s := h.dialDirectAgent(t, agentCreds(t, ca, dir, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "laptop"}))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for _, vip := range []string{"10.100.0.7:7", "10.100.0.8:7"} {
				if err := s.SendDatagram(netstacktest.UDPDatagram(agentSrc, netip.MustParseAddrPort(vip), []byte("hi"))); err != nil {
					t.Fatal(err)
				}
			}
			for answers := 0; answers < 2; {
				b, err := s.ReceiveDatagram(ctx)
				if err != nil {
					t.Fatalf("no answers from both services: %v", err)
				}
				if tunnel.Kind(b) == tunnel.TypeIP {
					answers++
				}
			}
			flowsOf := func(service string) int {
				return len(h.gw.flows.list(func(f *flow) bool { return f.svc.spec.Name == service }))
			}
			if flowsOf("echo") != 1 || flowsOf("kept") != 1 {
				t.Fatalf("flows: echo %d, kept %d, want 1 each", flowsOf("echo"), flowsOf("kept"))
			}
			after := ""
			if tc.after != "" {
				after = udpService("echo", tc.after, "10.100.0.7", echo)
			}
			h.write(t, head+after)
			if _, err := h.gw.Reload(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "the flow of echo ended", func() bool { return flowsOf("echo") == 0 })
			if n := flowsOf("kept"); n != 1 {
				t.Errorf("%d flows of kept, which the agent still reaches, want 1", n)
			}
		})
	}
}

// TestDirectRegistrationOnlyOnV1: a registration datagram (0x10) is
// ztna-v1's; on ztna-v2 the direct listener drops it as
// unexpected_datagram, as the relay does, and answers nothing, where it
// answered ACK or NACK (and counted a NACK as a refusal "denied"). A
// connector registration (0x11) on ztna-v1 gets NACK 02, counted as
// "denied", as at the relay; it was dropped unanswered.
func TestDirectRegistrationOnlyOnV1(t *testing.T) {
	port := startHold(t)
	toml, ca, dir := directConfig(t, port)
	h := newHarness(t, toml)
	creds := agentCreds(t, ca, dir, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "a"})
	unexpected := func() float64 { return testutil.ToFloat64(h.gw.m.dropped.WithLabelValues("unexpected_datagram")) }
	denied := func() float64 { return testutil.ToFloat64(h.gw.m.tunnelRefusals.WithLabelValues("denied")) }
	ack, _ := tunnel.AppendAck(nil, "web")
	nack, _ := tunnel.AppendNack(nil, tunnel.StatusDenied, "web")
	for _, tc := range []struct {
		alpn, service string
		role          tunnel.DatagramType
		answer        []byte // ztna-v1's; nil: none, the datagram dropped
	}{
		{tunnel.ALPNV1, "web", tunnel.TypeAgentRegistration, ack},
		{tunnel.ALPNV2, "web", tunnel.TypeAgentRegistration, nil},
		{tunnel.ALPNV2, "ghost", tunnel.TypeAgentRegistration, nil},
		{tunnel.ALPNV1, "web", tunnel.TypeGatewayRegistration, nack},
		{tunnel.ALPNV2, "web", tunnel.TypeGatewayRegistration, nil},
	} {
		t.Run(fmt.Sprintf("%s/%s/%#x", tc.alpn, tc.service, byte(tc.role)), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := tunnel.Dial(ctx, h.gw.direct.Addr().String(), tunnel.DialConfig{
				Credentials: creds, ServerName: "127.0.0.1", ALPN: []string{tc.alpn},
				Hello: tunnel.Hello{Role: tunnel.RoleAgent, Name: "a", InnerAddr: agentInner},
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close("done")
			dropped, refused := unexpected(), denied()
			reg, _ := tunnel.AppendRegistration(nil, tc.role, tc.service)
			if err := s.SendDatagram(reg); err != nil {
				t.Fatal(err)
			}
			// A DNS query to the gateway's address follows it: once its
			// answer is in, so is any answer to the registration.
			q := netstacktest.UDPDatagram(netip.AddrPortFrom(agentInner, 5300), netip.MustParseAddrPort("10.100.0.1:53"), dnsQueryFor(9, "web.ztna.internal", 1))
			if err := s.SendDatagram(q); err != nil {
				t.Fatal(err)
			}
			var answers [][]byte
			for {
				b, err := s.ReceiveDatagram(ctx)
				if err != nil {
					t.Fatalf("no DNS answer: %v", err)
				}
				if k := tunnel.Kind(b); k == tunnel.TypeAck || k == tunnel.TypeNack {
					answers = append(answers, slices.Clone(b))
				}
				if tunnel.Kind(b) == tunnel.TypeIP {
					break
				}
			}
			switch {
			case tc.answer != nil && (len(answers) != 1 || !bytes.Equal(answers[0], tc.answer)):
				t.Errorf("answers % x, want % x", answers, tc.answer)
			case tc.answer == nil && len(answers) > 0:
				t.Errorf("a ztna-v2 registration answered % x", answers)
			}
			wantDropped := dropped
			if tc.answer == nil {
				wantDropped++
			}
			if got := unexpected(); got != wantDropped {
				t.Errorf("unexpected_datagram %v, want %v", got, wantDropped)
			}
			if bytes.Equal(tc.answer, nack) {
				refused++
			}
			if got := denied(); got != refused {
				t.Errorf("refusals denied %v, want %v", got, refused)
			}
		})
	}
}

// TestDirectV1PinsOnlyAPacketLetIn: a ztna-v1 session has no hello, so
// the gateway pins its inner address to the source of its first packet
// that it lets in, as the relay pins at the first packet it routes. A
// first packet dropped as wrong_service (routed under web to db's VIP)
// pinned its source before: the agent's own packets after it were then
// dropped as spoofed_source.
func TestDirectV1PinsOnlyAPacketLetIn(t *testing.T) {
	port := startHold(t)
	toml, ca, dir := directConfig(t, port)
	h := newHarness(t, toml)
	creds := agentCreds(t, ca, dir, tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: "a"})
	drops := func(reason string) float64 { return testutil.ToFloat64(h.gw.m.dropped.WithLabelValues(reason)) }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := tunnel.Dial(ctx, h.gw.direct.Addr().String(), tunnel.DialConfig{
		Credentials: creds, ServerName: "127.0.0.1", ALPN: []string{tunnel.ALPNV1},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close("done")
	reg, _ := tunnel.AppendRegistration(nil, tunnel.TypeAgentRegistration, "web")
	if err := s.SendDatagram(reg); err != nil {
		t.Fatal(err)
	}
	for { // (after the QAD that a ztna-v1 session gets first)
		b, err := s.ReceiveDatagram(ctx)
		if err != nil || tunnel.Kind(b) == tunnel.TypeNack {
			t.Fatalf("registration of web: % x, %v; want an ACK", b, err)
		}
		if tunnel.Kind(b) == tunnel.TypeAck {
			break
		}
	}

	stray := netip.MustParseAddr("100.64.9.9")
	wrong := netstacktest.TCPSegment(netip.AddrPortFrom(stray, 40000), netip.MustParseAddrPort("10.100.0.11:5432"), netstacktest.FlagSYN, 1, nil)
	routed, err := tunnel.AppendRouted(nil, "web", wrong)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendDatagram(routed); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the packet to db's VIP under web counted as wrong_service", func() bool { return drops("wrong_service") == 1 })

	q := netstacktest.UDPDatagram(netip.AddrPortFrom(agentInner, 5300), netip.MustParseAddrPort("10.100.0.1:53"), dnsQueryFor(7, "web.ztna.internal", 1))
	if err := s.SendDatagram(q); err != nil {
		t.Fatal(err)
	}
	for {
		b, err := s.ReceiveDatagram(ctx)
		if err != nil {
			t.Fatalf("no DNS answer to the agent's own address: %v (spoofed_source %v)", err, drops("spoofed_source"))
		}
		if _, dst, ok := netstack.IPv4Addrs(b); ok && tunnel.Kind(b) == tunnel.TypeIP {
			if dst != agentInner {
				t.Fatalf("the answer went to %v, want %v", dst, agentInner)
			}
			break
		}
	}
	if n := drops("spoofed_source"); n != 0 {
		t.Errorf("spoofed_source %v, want 0", n)
	}
}

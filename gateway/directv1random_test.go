package gateway

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testseed"
	"github.com/ztgate/ztgate/tunnel"
)

// dsV1Agents are the certificates of TestDirectSideV1Random besides
// dsIdentities': the original system's (legacy DNS SANs of tenant
// default, per service or the wildcard), on ztna-v1 and one on ztna-v2,
// and URI identities of whole tenants on ztna-v1.
var dsV1Agents = []dsAgent{
	{key: "legacy/mac-echo", tenant: tunnel.DefaultTenant, name: "mac-echo", rights: []string{"echo"}, v1: true},
	{key: "legacy/mac-web", tenant: tunnel.DefaultTenant, name: "mac-web", rights: []string{"db", "web"}, v1: true},
	{key: "legacy/mac-all", tenant: tunnel.DefaultTenant, name: "mac-all", v1: true},
	{key: "acme/v1a", tenant: "acme", name: "v1a", v1: true},
	{key: "default/pc", tenant: tunnel.DefaultTenant, name: "pc", v1: true},
	{key: "legacy/linux-echo", tenant: tunnel.DefaultTenant, name: "linux-echo", rights: []string{"echo"}},
}

// dsV1TenantChoices are the tenants a reload of TestDirectSideV1Random
// may give a service: the legacy certificates' tenant default among them.
var dsV1TenantChoices = [][]string{{"default"}, {"acme"}, {"globex"}, {"default", "acme"}, {"acme", "globex"}, {"*"}, nil}

// TestDirectSideV1Random runs TestDirectSideRandom's model with agents of
// the original system among the ztna-v2 ones, connected straight to the
// gateway's [tunnel] listen with ALPN ztna-v1: certificates of the
// original system (per service, two services, the wildcard) and URI
// certificates of whole tenants, several sessions of one certificate and
// ztna-v1 and ztna-v2 sessions of other tenants on one inner address;
// registrations valid, denied, repeated and malformed (empty, not UTF-8,
// truncated, bytes after the id, a connector's), and registrations on
// ztna-v2; routed and raw packets before and after a registration and for
// services not registered; the inner address a ztna-v1 session's first
// packet pins, and spoofed sources after it; connectors and gateways
// refused on ztna-v1; reloads that take a registered service's tenant
// away and give it back. After every step it checks what
// TestDirectSideRandom checks, and the registration answers byte for
// byte, each to its session only. ZTGATE_DIRECT_SEED replays a seed (of
// either test); ZTGATE_DIRECT_TRACE logs the steps.
func TestDirectSideV1Random(t *testing.T) {
	seed := testseed.Get(t, "ZTGATE_DIRECT_SEED")
	m := newDSModel(t, rand.New(rand.NewPCG(seed, seed^0x1e6ac7)), dsV1TenantChoices, map[string][]string{"echo": {"default", "acme"}, "web": {"*"}})
	for _, a := range dsV1Agents {
		req := tunnel.IssueRequest{Tenant: a.tenant, Role: tunnel.RoleAgent, Name: a.name}
		if strings.HasPrefix(a.key, "legacy/") {
			sans := []string{"agent.*.ztna"}
			if a.rights != nil {
				sans = nil
				for _, r := range a.rights {
					sans = append(sans, "agent."+r+".ztna")
				}
			}
			req = tunnel.IssueRequest{Name: a.name, NoIdentity: true, LegacySANs: sans}
		}
		m.creds[a.key] = agentCreds(t, m.ca, m.dir, req)
	}
	m.run(seed, 200, m.v1Step)
}

// v1Step takes one random step of TestDirectSideV1Random and says which.
func (m *dsModel) v1Step() string {
	// Mostly a ztna-v1 session acts.
	s := testseed.Pick(m.rng, m.sessions, func(s *dsSession) bool { return s.live && s.v1 })
	if s == nil || m.rng.IntN(4) == 0 {
		s = testseed.Pick(m.rng, m.sessions, func(s *dsSession) bool { return s.live })
	}
	if s == nil {
		return m.connectAny(nil)
	}
	ops := []struct {
		weight int
		op     func() string
	}{
		{10, func() string { return m.connectAny(s) }},
		{2, m.refusedSession},
		{2, m.refusedV1},
		{5, func() string { return m.closeSession(s) }},
		{14, func() string { return m.register(s) }},
		{5, func() string { return m.badRegistration(s) }},
		{18, func() string { return m.udp(s) }},
		{6, func() string { return m.ping(s) }},
		{5, func() string { return m.dns(s) }},
		{8, func() string { return m.syn(s) }},
		{7, m.tcpData},
		{4, func() string { return m.malformed(s) }},
		{9, m.reload},
	}
	return ops[testseed.Weighted(m.rng, len(ops), func(i int) int { return ops[i].weight })].op()
}

// connectAny opens a session of any certificate, often of the original
// system on ztna-v1, sometimes of same as another live session (s).
func (m *dsModel) connectAny(s *dsSession) string {
	if len(m.live()) >= 6 {
		return m.closeSession(s)
	}
	var a dsAgent
	switch r := m.rng.IntN(8); {
	case s != nil && r == 0:
		a = dsAgent{key: s.tenant + "/" + s.name, tenant: s.tenant, name: s.name, rights: s.rights, v1: s.v1}
		for _, o := range dsV1Agents {
			if o.tenant == s.tenant && o.name == s.name {
				a.key = o.key
			}
		}
	case r < 3:
		id := dsIdentities[m.rng.IntN(len(dsIdentities))]
		a = dsAgent{key: id[0] + "/" + id[1], tenant: id[0], name: id[1]}
	case r < 5: // a certificate of the original system for some services
		a = dsV1Agents[m.rng.IntN(2)]
	default:
		a = dsV1Agents[m.rng.IntN(len(dsV1Agents))]
	}
	return m.connectAs(a, dsInners[m.rng.IntN(len(dsInners))])
}

// owe records a registration answer s is to receive.
func (m *dsModel) owe(s *dsSession, answer []byte) {
	if m.regWant[s.idx] == nil {
		m.regWant[s.idx] = map[string]int{}
	}
	m.regWant[s.idx][string(answer)]++
}

// register sends an agent registration (0x10) for a service s's
// certificate and tenant may reach or not, or one that does not exist. On
// ztna-v1 the gateway answers it: ACK, or NACK 02 (counted as a refusal
// "denied"), whatever s registered before. ztna-v2 has no registrations:
// the datagram is dropped as unexpected.
func (m *dsModel) register(s *dsSession) string {
	t := m.t
	t.Helper()
	// Mostly one s may reach, or one that exists here and s may not (its
	// tenant not admitted, or no right of its certificate).
	var may, mayNot []string
	for _, svc := range []string{"echo", "web"} {
		switch {
		case m.mayReach(s, svc):
			may = append(may, svc)
		case m.tenants[svc] != nil:
			mayNot = append(mayNot, svc)
		}
	}
	svc := pick(m.rng, []string{"echo", "web", "db", "ghost"})
	switch r := m.rng.IntN(4); {
	case r < 2 && len(may) > 0:
		svc = pick(m.rng, may)
	case r == 2 && len(mayNot) > 0:
		svc = pick(m.rng, mayNot)
	}
	b, err := tunnel.AppendRegistration(nil, tunnel.TypeAgentRegistration, svc)
	if err != nil {
		t.Fatal(err)
	}
	m.send(s, b)
	what := fmt.Sprintf("session %d registers %s", s.idx, svc)
	if !s.v1 {
		m.drops["unexpected_datagram"]++
		return what + " on ztna-v2: unexpected"
	}
	if m.mayReach(s, svc) {
		s.registered[svc] = true
		ack, _ := tunnel.AppendAck(nil, svc)
		m.owe(s, ack)
		return what + ": ACK"
	}
	m.sessRef["denied"]++
	nack, _ := tunnel.AppendNack(nil, tunnel.StatusDenied, svc)
	m.owe(s, nack)
	return what + ": NACK denied"
}

// badRegistration sends a registration the gateway cannot take: ztna-v1
// answers an id that is empty or not UTF-8 with NACK 01 and an empty id
// (docs/protocol.md), and drops one cut short or with bytes after its id;
// a connector's registration gets NACK 02 on ztna-v1, as at the relay.
func (m *dsModel) badRegistration(s *dsSession) string {
	kinds := []struct {
		label  string
		b      []byte
		reason string
		nack   bool // ztna-v1 answers NACK 01
	}{
		{"empty id", []byte{0x10, 0}, "malformed_datagram", true},
		{"id not UTF-8", []byte{0x10, 2, 0xff, 0xfe}, "malformed_datagram", true},
		{"id cut short", []byte{0x10, 5, 'e', 'c'}, "malformed_datagram", false},
		{"no length", []byte{0x10}, "malformed_datagram", false},
		{"bytes after the id", []byte{0x10, 4, 'e', 'c', 'h', 'o', 0}, "malformed_datagram", false},
		{"a connector's", []byte{0x11, 4, 'e', 'c', 'h', 'o'}, "unexpected_datagram", false},
	}
	k := kinds[m.rng.IntN(len(kinds))]
	m.send(s, k.b)
	if k.b[0] == byte(tunnel.TypeGatewayRegistration) && s.v1 {
		m.sessRef["denied"]++
		nack, _ := tunnel.AppendNack(nil, tunnel.StatusDenied, "echo")
		m.owe(s, nack)
		return fmt.Sprintf("session %d sends a registration with %s: NACK denied", s.idx, k.label)
	}
	m.drops[k.reason]++
	if k.nack && s.v1 {
		nack, _ := tunnel.AppendNack(nil, tunnel.StatusInvalid, "")
		m.owe(s, nack)
	}
	return fmt.Sprintf("session %d sends a registration with %s: %s", s.idx, k.label, k.reason)
}

// refusedV1 tries a ztna-v1 session of a certificate that is not an
// agent's (a connector's of the original system, a gateway's): the
// gateway ends it and counts it as wrong_role, with no ingress.
func (m *dsModel) refusedV1() string {
	t := m.t
	t.Helper()
	req := tunnel.IssueRequest{Name: "conn-echo", NoIdentity: true, LegacySANs: []string{"connector.echo.ztna"}}
	kind := "a connector's certificate"
	if m.rng.IntN(2) == 0 {
		req, kind = tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleGateway, Name: "gw9"}, "a gateway's certificate"
	}
	creds := agentCreds(t, m.ca, m.dir, req)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := m.synths()
	s, err := tunnel.Dial(ctx, m.g.direct.Addr().String(), tunnel.DialConfig{
		Credentials: creds, ServerName: "127.0.0.1", ALPN: []string{tunnel.ALPNV1},
	}, nil)
	if err == nil {
		for err == nil { // QAD, then the end
			_, err = s.ReceiveDatagram(ctx)
		}
		s.Close("test")
		if ctx.Err() != nil {
			t.Errorf("ztna-v1 with %s: the session was not ended", kind)
		}
	}
	m.sessRef["wrong_role"]++
	if n := m.synths(); len(n) > len(old) {
		t.Errorf("ztna-v1 with %s: an ingress was added", kind)
	}
	return "refused on ztna-v1: " + kind
}

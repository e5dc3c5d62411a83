package gateway

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// dnsQueryFor builds a query for name (A or PTR) without EDNS.
func dnsQueryFor(id uint16, name string, qtype uint16) []byte {
	q := make([]byte, 12)
	binary.BigEndian.PutUint16(q, id)
	q[2], q[5] = 0x01, 1
	for label := range strings.SplitSeq(strings.TrimSuffix(name, "."), ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	return append(q, 0, byte(qtype>>8), byte(qtype), 0, 1)
}

// TestDirectDNSFollowsServiceRights: an agent whose certificate of the
// original system grants it web only (agent.web.ztna) may not reach db
// (TestRawIPNeedsServiceRights), so the gateway's DNS at 10.100.0.1, which
// such an agent reaches over its direct session, must not name db to it
// either: neither db's A record nor the PTR of db's VIP. Its directory
// (Gateway.directory) leaves db out already.
func TestDirectDNSFollowsServiceRights(t *testing.T) {
	port := startHold(t)
	toml, ca, dir := directConfig(t, port)
	h := newHarness(t, toml, func(o *Options) { o.HandshakeTimeout = 200 * time.Millisecond })
	addr := h.gw.direct.Addr().String()
	creds := agentCreds(t, ca, dir, tunnel.IssueRequest{Name: "web", LegacySANs: []string{"agent.web.ztna"}, NoIdentity: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := tunnel.Dial(ctx, addr, tunnel.DialConfig{
		Credentials: creds, ServerName: "127.0.0.1", ALPN: []string{tunnel.ALPNV2},
		Hello: tunnel.Hello{Role: tunnel.RoleAgent, Name: "web", InnerAddr: agentInner},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close("done")
	// The session's ingress, by its synthetic address: what the DNS at
	// 10.100.0.1 sees as the client (stackDirectory). It is asked directly,
	// as the netstack's replies to a tunnel ingress may leave by the wrong
	// link (TestDirectAgentDNSAnswered).
	var synth netip.Addr
	waitUntil := time.Now().Add(5 * time.Second)
	for !synth.IsValid() && time.Now().Before(waitUntil) {
		h.gw.ingresses.mu.RLock()
		for a, in := range h.gw.ingresses.bySynth {
			if in.peer.identity != "" {
				synth = a
			}
		}
		h.gw.ingresses.mu.RUnlock()
		time.Sleep(10 * time.Millisecond)
	}
	if !synth.IsValid() {
		t.Fatal("no ingress for the direct session")
	}
	crt, err := os.ReadFile(filepath.Join(dir, "agent.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if !h.gw.mayReach(mustIdentity(t, crt), "web") || h.gw.mayReach(mustIdentity(t, crt), "db") {
		t.Fatal("the agent should reach web and not db")
	}
	view := stackDirectory{h.gw}.View(synth)
	if view == nil {
		t.Fatal("no DNS view for the agent")
	}
	if _, ok := view.Lookup("web"); !ok {
		t.Error("web is not in the agent's DNS view")
	}
	if e, ok := view.Lookup("db"); ok {
		t.Errorf("db (%v) is in the DNS view of an agent that may reach web only", e.VIP)
	}
	if e, ok := view.Reverse(netip.MustParseAddr("10.100.0.11")); ok {
		t.Errorf("db's VIP reverses to %q for an agent that may reach web only", e.Name)
	}
}

// mustIdentity is the identity of the PEM certificate crt.
func mustIdentity(t *testing.T, crt []byte) tunnel.Identity {
	t.Helper()
	b, _ := pem.Decode(crt)
	if b == nil {
		t.Fatal("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	id, err := tunnel.IdentityFromCert(cert)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

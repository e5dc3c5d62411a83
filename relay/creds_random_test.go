package relay

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testseed"
	"github.com/ztgate/ztgate/tunnel"
)

// TestRelayReloadCredentialsRandom rewrites the relay's certificate, key
// and CA files in random ways between calls of ReloadCredentials (the
// SIGHUP), with agents of two CAs dialing and some staying connected, and
// checks after every step: the reload succeeds, or fails naming the file
// and keeps the credentials in use; a new agent is admitted when the CA
// file in use holds its CA, else refused at the handshake and counted as
// unknown_authority; the relay presents the certificate in use; every
// agent admitted before whose CA the CA file in use still holds is still
// registered and its session up, and the others' sessions end at the
// reload that dropped their CA ("revoked: unknown_authority"). The seed
// is logged; ZTGATE_CREDS_SEED replays it.
func TestRelayReloadCredentialsRandom(t *testing.T) {
	seed := testseed.Get(t, "ZTGATE_CREDS_SEED")
	rng := rand.New(rand.NewPCG(seed, seed^0x7e1a))
	p := newPKI(t)
	cfg := p.relayConfig(t.TempDir())
	r := startRelay(t, cfg)
	addr := r.Addr().String()
	cas := []*tunnel.CA{p.ca, p.other}
	both := p.write("both.crt", append(append([]byte(nil), p.ca.CertPEM()...), p.other.CertPEM()...))

	trust := uint8(1) // the model: the CAs of the CA file in use
	serving := r.creds.Certificate()
	type keptAgent struct {
		c  *client
		ca int
	}
	var kept []keptAgent
	names := 0
	caPEM := func(set uint8) []byte {
		var b []byte
		for i, ca := range cas {
			if set&(1<<i) != 0 {
				b = append(b, ca.CertPEM()...)
			}
		}
		return b
	}
	write := func(path string, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	relayCert := func(ca int) ([]byte, []byte) {
		names++
		c, k, err := cas[ca].Issue(tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleRelay, Name: fmt.Sprintf("relay-%d", names),
			DNSNames: []string{serverName}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	// reload calls ReloadCredentials; fault is the file its error must
	// name, "" when it must succeed with the CA set next.
	reload := func(step, fault string, next uint8) {
		err := r.ReloadCredentials()
		switch {
		case fault == "" && err != nil:
			t.Fatalf("%s: %v", step, err)
		case fault != "" && (err == nil || !strings.Contains(err.Error(), fault)):
			t.Fatalf("%s: %v, want an error naming %s", step, err, fault)
		case fault != "":
			if r.creds.Certificate() != serving {
				t.Fatalf("%s: a failed reload changed the certificate", step)
			}
			return
		}
		trust, serving = next, r.creds.Certificate()
		kept = slices.DeleteFunc(kept, func(k keptAgent) bool {
			if trust&(1<<k.ca) != 0 {
				return false
			}
			select {
			case <-k.c.s.Done():
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: the session of %s, whose CA the relay dropped, is still up", step, k.c.s.Hello().Name)
			}
			if err := k.c.s.Err(); err == nil || !strings.Contains(err.Error(), "revoked: "+tunnel.ReasonUnknownAuthority) {
				t.Fatalf("%s: the session of %s ended with %v, want \"revoked: %s\"", step, k.c.s.Hello().Name, err, tunnel.ReasonUnknownAuthority)
			}
			k.c.close()
			return true
		})
	}
	for step := range 40 {
		kind := testseed.Weighted(rng, 6, func(i int) int { return []int{2, 2, 1, 1, 4, 1}[i] })
		name := fmt.Sprintf("step %d (kind %d)", step, kind)
		switch kind {
		case 0: // a renewal, of either CA (the agents trust both)
			c, k := relayCert(rng.IntN(2))
			write(cfg.Cert, c)
			write(cfg.Key, k)
			reload(name, "", trust)
		case 1: // a new CA file: one CA, the other, or both
			set := uint8(1 + rng.IntN(3))
			write(cfg.CA, caPEM(set))
			reload(name, "", set)
		case 2: // a CA file cut short or garbage
			b := caPEM(3)
			write(cfg.CA, []byte(b[:len(b)-40-rng.IntN(200)]))
			reload(name, cfg.CA, 0)
			write(cfg.CA, caPEM(trust))
		case 3: // the key of another certificate
			_, k := relayCert(0)
			old, err := os.ReadFile(cfg.Key)
			if err != nil {
				t.Fatal(err)
			}
			write(cfg.Key, k)
			reload(name, cfg.Key, 0)
			write(cfg.Key, old)
		case 4, 5: // an agent of either CA dials; some stay
			ca := rng.IntN(2)
			names++
			id := fmt.Sprintf("a%d", names)
			certFile, keyFile := p.issue(cas[ca], tunnel.IssueRequest{Tenant: "acme", Role: tunnel.RoleAgent, Name: id})
			creds, err := tunnel.NewCredentials(tunnel.CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: both, Role: tunnel.RoleAgent}, nil)
			if err != nil {
				t.Fatal(err)
			}
			before := handshakeRefusals(r, tunnel.ReasonUnknownAuthority)
			c, err := dial(t, addr, creds, agentHello(id))
			if trust&(1<<ca) == 0 {
				if err == nil {
					t.Fatalf("%s: an agent of CA %d admitted with CA file %b", name, ca, trust)
				}
				waitFor(t, "unknown_authority counted", func() bool { return handshakeRefusals(r, tunnel.ReasonUnknownAuthority) == before+1 })
				continue
			}
			if err != nil {
				t.Fatalf("%s: an agent of CA %d refused with CA file %b: %v", name, ca, trust, err)
			}
			next[tunnel.Directory](c)
			if c.s.Peer().Name != serving.Subject.CommonName {
				t.Fatalf("%s: the relay presented %s, want %s", name, c.s.Peer(), serving.Subject.CommonName)
			}
			if kind == 4 && len(kept) < 6 {
				kept = append(kept, keptAgent{c, ca})
			} else {
				c.close()
			}
		}
		for _, k := range kept {
			select {
			case <-k.c.s.Done():
				t.Fatalf("%s: the session of %s ended: %v", name, k.c.s.Hello().Name, k.c.s.Err())
			default:
			}
		}
		if n := agentCount(r); n < len(kept) {
			t.Fatalf("%s: %d agents registered, %d kept", name, n, len(kept))
		}
	}
}

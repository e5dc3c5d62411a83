package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// admitted counts the relay's "session admitted" lines for identity.
func (r *relayTopo) admitted(identity string) int {
	return strings.Count(r.relayProc.out.String(), "identity="+identity+" ")
}

// hup sends SIGHUP to p and waits until it logged what.
func hup(t *testing.T, p *proc, what string) {
	t.Helper()
	before := strings.Count(p.out.String(), what)
	p.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 10*time.Second, p.name+" logs "+what, func() error {
		if strings.Count(p.out.String(), what) == before {
			return fmt.Errorf("not yet")
		}
		return nil
	})
}

// TestCredentialRotationOnSIGHUP rotates to a second CA with SIGHUP while
// an agent downloads: first every CA file becomes a bundle of the old and
// the new CA, then the relay gets a certificate of the new CA. No session
// is re-established by the SIGHUPs and the download completes intact; an
// agent of the new CA, refused before, gets in; and after a relay restart
// the gateway and the agent verify its new certificate with the CA bundle
// they reloaded.
func TestCredentialRotationOnSIGHUP(t *testing.T) {
	needTools(t, "curl", "dig")
	r, agents, vip := runningRelayTopo(t, []string{"a1"}, "a2")
	a1 := agents["a1"]
	const size = 8 << 20
	url, want := r.blob(t, r.agents["a1"], vip, 5, size)
	out := filepath.Join(r.dir, "download")
	dlStart := time.Now()
	dl := r.start(r.agents["a1"], "slow download", "curl", "-sS", "--max-time", "120", "--limit-rate", "300K", "-o", out, url)
	// Lines logged close together reach the output within 100 ms: count
	// those of the sessions up so far once they are all there.
	time.Sleep(200 * time.Millisecond)
	gwSessions, a1Sessions := r.admitted("infra/gateway/gw1"), r.admitted("acme/agent/a1")

	// Phase 1: trust both CAs everywhere (the files all name pki/ca.crt).
	bundle := append(mustRead(t, filepath.Join(r.pki, "ca.crt")), mustRead(t, filepath.Join(r.otherPKI, "ca.crt"))...)
	writeAtomic(t, filepath.Join(r.pki, "ca.crt"), bundle)
	hup(t, r.relayProc, "tunnel credentials reloaded")
	hup(t, r.gwProc, "tunnel credentials reloaded")
	hup(t, a1, "tunnel credentials reloaded")
	r.startAgent("a2", "otherca") // refused in TestRelayAgents; trusted now
	eventually(t, 20*time.Second, "the agent of the new CA reaches web", func() error {
		out, err := r.curl(r.agents["a2"], "--max-time", "3", "http://"+vip+"/new-ca")
		if err != nil || !strings.Contains(out, "/new-ca") {
			return fmt.Errorf("%v %q", err, out)
		}
		return nil
	})

	// Phase 2: the relay presents a certificate of the new CA.
	r.ztg("pki", "issue", "-dir", r.otherPKI, "-role", "relay", "-tenant", "infra", "-name", "relay1",
		"-dns", "relay.test", "-ip", "203.0.113.1,203.0.113.5,203.0.113.9,203.0.113.13", "-out", filepath.Join(r.dir, "relay1-new"))
	writeAtomic(t, filepath.Join(r.pki, "relay1.key"), mustRead(t, filepath.Join(r.dir, "relay1-new.key")))
	writeAtomic(t, filepath.Join(r.pki, "relay1.crt"), mustRead(t, filepath.Join(r.dir, "relay1-new.crt")))
	hup(t, r.relayProc, "tunnel credentials reloaded")
	select {
	case <-dl.done:
		t.Fatal("the download ended before the SIGHUPs were done: it proves nothing")
	default:
	}

	if err := dl.wait(120 * time.Second); err != nil {
		t.Fatalf("the download across the SIGHUPs: %v\n%s", err, dl.out.String())
	}
	if got := mustRead(t, out); len(got) != size || sha256Hex(got) != want {
		t.Fatalf("the download across the SIGHUPs is corrupt: %d bytes", len(got))
	}
	t.Logf("8 MiB intact across four SIGHUPs in %v", time.Since(dlStart).Round(100*time.Millisecond))
	if g, a := r.admitted("infra/gateway/gw1"), r.admitted("acme/agent/a1"); g != gwSessions || a != a1Sessions {
		t.Fatalf("sessions re-established by the SIGHUPs: gateway %d → %d, agent %d → %d", gwSessions, g, a1Sessions, a)
	}

	// The relay restarts with its new certificate: the gateway and the
	// agents must verify it with the bundle they reloaded.
	r.relayProc.stop(6 * time.Second)
	r.startRelay()
	eventually(t, 20*time.Second, "both agents work through the relay's new certificate", func() error {
		for _, a := range []string{"a1", "a2"} {
			out, err := r.curl(r.agents[a], "--max-time", "2", "http://"+vip+"/rotated")
			if err != nil || !strings.Contains(out, "/rotated") {
				return fmt.Errorf("%s: %v %q", a, err, out)
			}
		}
		return nil
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeAtomic replaces a file as deployment tools do: write, rename.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// withCaps runs a command under setpriv with only the given capabilities
// (e.g. "+net_admin,+net_raw") in every set, bounding set included.
func withCaps(caps string, cmd ...string) []string {
	return append([]string{"setpriv", "--inh-caps=-all," + caps, "--ambient-caps=-all," + caps,
		"--bounding-set=-all," + caps, "--"}, cmd...)
}

// Effective capability masks: CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13.
const (
	capsNetAdminRaw = "0000000000003000"
	capsNetAdmin    = "0000000000001000"
)

// TestRunsWithOnlyNetCaps runs the LAN gateway, and the relay with a
// gateway attached to it, with no capability but CAP_NET_ADMIN and
// CAP_NET_RAW; a gateway without CAP_NET_RAW serves flows and says that
// it cannot ping backends.
func TestRunsWithOnlyNetCaps(t *testing.T) {
	needTools(t, "curl", "ping", "setpriv", "dig")
	lan := []struct {
		name, caps, mask string
		pingWorks        bool
	}{
		{"LAN gateway with CAP_NET_ADMIN and CAP_NET_RAW", "+net_admin,+net_raw", capsNetAdminRaw, true},
		{"LAN gateway with CAP_NET_ADMIN only", "+net_admin", capsNetAdmin, false},
	}
	for _, tc := range lan {
		t.Run(tc.name, func(t *testing.T) {
			l := newLANTopo(t)
			l.startBackend("192.0.2.10")
			path := filepath.Join(l.dir, "gateway.toml")
			cfg := strings.ReplaceAll(lanConfig, "STATE_DIR", filepath.Join(l.dir, "state"))
			if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			gw := l.start(l.router, "ztgate gateway", withCaps(tc.caps, l.ztgate, "gateway", "-config", path, "-log-format", "text")...)
			gw.waitOutput(t, "gateway started", 15*time.Second)
			if got, err := capEff(gw.cmd.Process.Pid); err != nil || got != tc.mask {
				t.Fatalf("gateway's effective capabilities %s (%v), want %s", got, err, tc.mask)
			}
			if out, err := l.curl(l.acme, "--max-time", "5", "http://10.100.0.10/caps"); err != nil || !strings.Contains(out, "/caps") {
				t.Fatalf("curl through the gateway: %v %q", err, out)
			}
			_, err := l.try(l.acme, 10*time.Second, "ping", "-c", "2", "-W", "2", "10.100.0.20")
			if (err == nil) != tc.pingWorks {
				t.Fatalf("ping the VIP: %v, want working %v", err, tc.pingWorks)
			}
			if !tc.pingWorks && !strings.Contains(gw.out.String(), "ICMP echo to backends is unavailable") {
				t.Fatalf("the gateway did not say why pings get no reply:\n%s", gw.out.String())
			}
		})
	}
	t.Run("relay and gateway", func(t *testing.T) {
		r := newRelayTopo(t, "a1")
		r.startBackend("192.0.2.10")
		r.startRelay() // writes the configuration; restarted below with fewer capabilities
		r.relayProc.stop(6 * time.Second)
		r.relayProc = r.start(r.relay, "ztgate relay (caps)", withCaps("+net_admin,+net_raw", r.ztgate, "relay", "-config", r.relayConf, "-log-format", "text")...)
		r.relayProc.waitOutput(t, "relay started", 15*time.Second)
		r.gwConf = r.writeFile("gateway.toml", r.gatewayConfig())
		r.gwProc = r.start(r.gw, "ztgate gateway (caps)", withCaps("+net_admin,+net_raw", r.ztgate, "gateway", "-config", r.gwConf, "-log-format", "text")...)
		r.gwProc.waitOutput(t, "gateway started", 15*time.Second)
		for _, p := range []*proc{r.relayProc, r.gwProc} {
			if got, err := capEff(p.cmd.Process.Pid); err != nil || got != capsNetAdminRaw {
				t.Fatalf("%s's effective capabilities %s (%v), want %s", p.name, got, err, capsNetAdminRaw)
			}
		}
		r.startAgent("a1", "acme")
		r.waitVIP(t, "a1")
	})
}

// TestDroppedCACutsOffLiveAgent: the relay trusts a second CA for a while
// (a bundle, SIGHUP), an agent of that CA connects, then the CA file goes
// back to the first CA alone (SIGHUP): that agent's live session ends at
// once, counted as revoked, and it reaches nothing more; the agent and the
// gateway of the first CA go on. Before, dropping a CA refused only the
// next handshakes of its peers: a connected agent kept its session, and
// its access, for as long as it kept the session up.
func TestDroppedCACutsOffLiveAgent(t *testing.T) {
	needTools(t, "curl", "dig")
	r, _, vip := runningRelayTopo(t, []string{"a1"}, "a2")
	caFile := filepath.Join(r.pki, "ca.crt")
	first := mustRead(t, caFile)
	writeAtomic(t, caFile, append(append([]byte(nil), first...), mustRead(t, filepath.Join(r.otherPKI, "ca.crt"))...))
	hup(t, r.relayProc, "tunnel credentials reloaded")
	r.startAgent("a2", "otherca")
	reaches := func(agent, path string) error {
		out, err := r.curl(r.agents[agent], "--max-time", "2", "http://"+vip+path)
		if err != nil || !strings.Contains(out, path) {
			return fmt.Errorf("%s: %v %q", agent, err, out)
		}
		return nil
	}
	eventually(t, 20*time.Second, "the agent of the second CA reaches web", func() error { return reaches("a2", "/second-ca") })

	writeAtomic(t, caFile, first)
	hup(t, r.relayProc, "tunnel credentials reloaded")
	eventually(t, 10*time.Second, "the second CA's agent cut off", func() error {
		if n := r.relayCounter(t, "ztgate_tunnel_sessions_revoked_total", `reason="unknown_authority"`); n != 1 {
			return fmt.Errorf("ztgate_tunnel_sessions_revoked_total{reason=\"unknown_authority\"} = %v, want 1", n)
		}
		if err := reaches("a2", "/after-drop"); err == nil {
			return fmt.Errorf("it still reaches web")
		}
		return nil
	})
	if err := reaches("a1", "/first-ca"); err != nil {
		t.Fatalf("the agent of the first CA after the drop: %v", err)
	}
	if !strings.Contains(r.relayProc.out.String(), "tunnel session revoked") {
		t.Errorf("the relay's log does not say it revoked the session:\n%s", r.relayProc.out.String())
	}
}

// TestAgentDroppedRelayCACutsSession: an agent whose CA file, reloaded by
// SIGHUP, no longer holds the CA of the relay's certificate ends its live
// session to the relay at once, saying why, and its redials are refused
// until the CA is back; then it reaches its services again. Before, the
// agent kept the session for as long as keepalives kept it up: only its
// next handshake would have refused the relay.
func TestAgentDroppedRelayCACutsSession(t *testing.T) {
	needTools(t, "curl")
	r, procs, vip := runningRelayTopo(t, []string{"a1"})
	a1 := procs["a1"]
	reaches := r.reaches("a1", vip)
	eventually(t, 20*time.Second, "the agent reaches web", func() error { return reaches("/before") })

	// The agent's own CA file, so that the relay's and the gateway's stay.
	caFile := filepath.Join(r.pki, "ca.crt")
	agentCA := filepath.Join(r.dir, "a1-ca.crt")
	writeAtomic(t, agentCA, mustRead(t, caFile))
	conf := filepath.Join(r.dir, "a1.toml")
	writeAtomic(t, conf, bytes.ReplaceAll(mustRead(t, conf), []byte(caFile), []byte(agentCA)))
	hup(t, a1, "tunnel credentials reloaded")
	if err := reaches("/own-ca-file"); err != nil {
		t.Fatalf("the agent with its own copy of the CA file: %v", err)
	}

	writeAtomic(t, agentCA, mustRead(t, filepath.Join(r.otherPKI, "ca.crt")))
	hup(t, a1, "tunnel credentials reloaded")
	eventually(t, 10*time.Second, "the agent's session to the relay cut", func() error {
		if !strings.Contains(a1.out.String(), "its server's certificate is refused now") {
			return fmt.Errorf("the agent does not log why yet")
		}
		if err := reaches("/after-drop"); err == nil {
			return fmt.Errorf("it still reaches web")
		}
		return nil
	})

	writeAtomic(t, agentCA, mustRead(t, caFile))
	hup(t, a1, "tunnel credentials reloaded")
	eventually(t, 40*time.Second, "the agent back once its CA file trusts the relay again", func() error { return reaches("/back") })
}

// TestAgentIdentityChangeBySIGHUP: an agent whose certificate is replaced,
// by SIGHUP, with one of another tenant ends its relay session at once and
// comes back as that tenant: within seconds it neither resolves nor
// reaches web (a service of acme only), with no restart and no backoff,
// and the log says why. Back on a certificate of acme, it reaches web
// again as quickly. Before, the session went on with acme's rights until
// it happened to reconnect.
func TestAgentIdentityChangeBySIGHUP(t *testing.T) {
	needTools(t, "curl", "dig")
	r, procs, vip := runningRelayTopo(t, []string{"a1"})
	a1 := procs["a1"]
	reaches := r.reaches("a1", vip)
	eventually(t, 20*time.Second, "the agent reaches web", func() error { return reaches("/before") })

	conf := filepath.Join(r.dir, "a1.toml")
	acme := mustRead(t, conf)
	globex := filepath.Join(r.dir, "a1-globex")
	r.ztg("pki", "issue", "-dir", r.pki, "-role", "agent", "-tenant", "globex", "-name", "a1", "-out", globex)
	writeAtomic(t, conf, bytes.ReplaceAll(acme, []byte(filepath.Join(r.pki, "a1.")), []byte(globex+".")))
	hup(t, a1, "tunnel credentials reloaded")
	eventually(t, 5*time.Second, "the agent, now of globex, neither resolves nor reaches web", func() error {
		if got := r.resolve("a1", "web.ztna.internal"); got != "" {
			return fmt.Errorf("web.ztna.internal resolves to %s", got)
		}
		if err := reaches("/as-globex"); err == nil {
			return fmt.Errorf("it still reaches web")
		}
		return nil
	})
	if !strings.Contains(a1.out.String(), "own identity changed: acme/agent/a1 -> globex/agent/a1") {
		t.Error("the agent does not log why its session ended")
	}

	writeAtomic(t, conf, acme)
	hup(t, a1, "tunnel credentials reloaded")
	eventually(t, 5*time.Second, "the agent, of acme again, reaches web", func() error {
		if got := r.resolve("a1", "web.ztna.internal"); got != vip {
			return fmt.Errorf("web.ztna.internal resolves to %q, want %s", got, vip)
		}
		return reaches("/as-acme")
	})
}

// reaches returns a check that agent gets path from web at vip: curl
// within 2 s, and the backend's answer names the path.
func (r *relayTopo) reaches(agent, vip string) func(path string) error {
	return func(path string) error {
		out, err := r.curl(r.agents[agent], "--max-time", "2", "http://"+vip+path)
		if err != nil || !strings.Contains(out, path) {
			return fmt.Errorf("%v %q", err, out)
		}
		return nil
	}
}

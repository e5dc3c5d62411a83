package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestBackendKilledMidFlow holds an echo flow through the VIP and kills
// the backend with SIGKILL: the client sees the flow end within a second
// (the backend's FIN, passed on), and once the backend is back new flows
// work.
func TestBackendKilledMidFlow(t *testing.T) {
	needTools(t, "curl")
	l := newLANTopo(t)
	be := l.startBackend("192.0.2.10")
	l.startGateway(lanConfig)
	hold := l.start(l.acme, "held echo flow", l.backendBin, "-hold", "10.100.0.20:7")
	time.Sleep(time.Second)
	select {
	case <-hold.done:
		t.Fatalf("the held flow failed before the kill: %v\n%s", hold.err, hold.out.String())
	default:
	}
	killed := time.Now()
	be.kill()
	if err := hold.wait(5 * time.Second); err == nil {
		t.Fatalf("the held flow ended without an error after its backend died:\n%s", hold.out.String())
	}
	took := time.Since(killed)
	t.Logf("the client saw the backend's end after %v: %s", took.Round(time.Millisecond), strings.TrimSpace(hold.out.String()))
	if took > 1500*time.Millisecond {
		t.Fatalf("the client saw the backend's end after %v, want about a second at most", took)
	}
	l.startBackend("192.0.2.10")
	eventually(t, 10*time.Second, "a new flow after the backend restarted", func() error {
		out, err := l.curl(l.acme, "--max-time", "3", "http://10.100.0.10/back")
		if err != nil || !strings.Contains(out, "/back") {
			return fmt.Errorf("%v %q", err, out)
		}
		return nil
	})
}

// TestGatewaySIGKILLOnLAN kills the LAN gateway mid-traffic: the kernel
// removes its TUN device and routes with it, and a restart serves the
// same VIPs from the state it wrote.
func TestGatewaySIGKILLOnLAN(t *testing.T) {
	needTools(t, "curl")
	l := newLANTopo(t)
	l.startBackend("192.0.2.10")
	gw := l.startGateway(lanConfig)
	before := l.vips(t)
	dl := l.start(l.acme, "download", "curl", "-sS", "-o", "/dev/null", "--limit-rate", "1M", "http://10.100.0.10/big")
	time.Sleep(time.Second)
	gw.kill()
	if err := dl.wait(2 * time.Second); err == nil {
		t.Fatal("the download finished although the gateway was killed")
	}
	dl.stop(time.Second) // its client may retransmit until the gateway is back
	if out, err := l.try(l.router, 5*time.Second, "ip", "link", "show", "ztgate0"); err == nil {
		t.Fatalf("TUN device still present after SIGKILL:\n%s", out)
	}
	p := l.start(l.router, "ztgate gateway (restarted)", l.ztgate, "gateway", "-config", l.dir+"/gateway.toml", "-log-format", "text")
	p.waitOutput(t, "gateway started", 15*time.Second)
	eventually(t, 10*time.Second, "serving after the restart", func() error {
		out, err := l.curl(l.acme, "--max-time", "3", "http://10.100.0.10/again")
		if err != nil || !strings.Contains(out, "/again") {
			return fmt.Errorf("%v %q", err, out)
		}
		return nil
	})
	if after := l.vips(t); after != before {
		t.Fatalf("VIPs changed across SIGKILL: %s → %s", before, after)
	}
}

// vips lists the services' VIPs from the gateway's API.
func (l *lanTopo) vips(t *testing.T) string {
	t.Helper()
	out, err := l.curl(l.router, "http://127.0.0.1:7780/v1/services")
	if err != nil {
		t.Fatalf("services: %v", err)
	}
	var vips []string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.Contains(line, `"vip"`) {
			vips = append(vips, strings.TrimSpace(line))
		}
	}
	if len(vips) == 0 {
		t.Fatalf("no VIPs in %s", out)
	}
	return strings.Join(vips, " ")
}

// TestSIGKILLMidTraffic kills the gateway and then the relay with SIGKILL
// while an agent downloads: after each restart both agents work again,
// the VIP is unchanged and nothing was lost of the relay's state.
func TestSIGKILLMidTraffic(t *testing.T) {
	needTools(t, "curl", "dig")
	r, _, vip := runningRelayTopo(t, []string{"a1", "a2"})
	for _, role := range []string{"gateway", "relay"} {
		t.Run(role, func(t *testing.T) {
			dl := r.start(r.agents["a1"], "download", "curl", "-sS", "-o", "/dev/null", "--max-time", "30",
				"--limit-rate", "1M", fmt.Sprintf("http://%s/blob?seed=3&n=%d", vip, 64<<20))
			time.Sleep(time.Second)
			killed := time.Now()
			if role == "gateway" {
				r.gwProc.kill()
				r.startGateway()
			} else {
				r.relayProc.kill()
				r.startRelay()
			}
			eventually(t, 20*time.Second, "agents work again after the "+role+" was killed", func() error {
				for _, a := range []string{"a1", "a2"} {
					out, err := r.curl(r.agents[a], "--max-time", "2", "http://"+vip+"/after-kill")
					if err != nil || !strings.Contains(out, "/after-kill") {
						return fmt.Errorf("%s: %v %q", a, err, out)
					}
				}
				return nil
			})
			t.Logf("agents recovered %v after the %s was killed", time.Since(killed).Round(100*time.Millisecond), role)
			if got := r.resolve("a1", "web.ztna.internal"); got != vip {
				t.Fatalf("VIP changed from %s to %s", vip, got)
			}
			dl.stop(time.Second) // the flow broke with its gateway or relay; make sure it is gone
		})
	}
}

// TestLossyAgentPath puts 5 % loss and 50 ms delay (tc netem) on both
// directions of an agent's link to the relay: a 4 MiB download through
// relay and gateway completes intact. Without netem in the kernel, the
// loss is made with nftables and the delay is left out.
func TestLossyAgentPath(t *testing.T) {
	needTools(t, "curl", "dig", "tc")
	r, _, vip := runningRelayTopo(t, []string{"a1"})
	const size = 4 << 20
	url, want := r.blob(t, r.agents["a1"], vip, 11, size)
	r.impair(t, r.relay, "203.0.113.1")
	r.impair(t, r.agents["a1"], "203.0.113.2")
	start := time.Now()
	got, err := r.curl(r.agents["a1"], "--max-time", "120", url)
	if err != nil {
		t.Fatalf("download over the lossy path: %v (%d bytes)", err, len(got))
	}
	if len(got) != size || sha256Hex([]byte(got)) != want {
		t.Fatalf("download over the lossy path corrupted: %d bytes", len(got))
	}
	t.Logf("4 MiB intact over the lossy path in %v", time.Since(start).Round(100*time.Millisecond))
}

// impair makes the link of ns that has addr lose 5 % of the packets and
// delay them by 50 ms, with netem on the way out; without netem, 5 % loss
// with nftables on the way in.
func (r *relayTopo) impair(t *testing.T, ns, addr string) {
	t.Helper()
	dev := strings.Fields(r.exec(ns, "ip", "-o", "addr", "show", "to", addr+"/32"))
	if len(dev) < 2 {
		t.Fatalf("no interface with %s in %s", addr, ns)
	}
	netem := []string{"tc", "qdisc", "add", "dev", dev[1], "root", "netem", "loss", "5%", "delay", "50ms"}
	out, err := r.try(ns, 10*time.Second, netem...)
	if err != nil && strings.Contains(out, "qdisc") {
		exec.Command("modprobe", "sch_netem").Run() // the module may just not be loaded
		out, err = r.try(ns, 10*time.Second, netem...)
	}
	if err == nil {
		return
	}
	t.Logf("netem unavailable (%s): this kernel lacks sch_netem; testing 5%% loss with nftables, without the 50 ms delay",
		strings.TrimSpace(out))
	needTools(t, "nft")
	// Dropped on the way in: a drop on the way out would fail the
	// sender's sendmsg with EPERM, which no lossy network does.
	r.exec(ns, "nft", "add", "table", "inet", "lossy")
	r.exec(ns, "nft", "add", "chain", "inet", "lossy", "in", "{ type filter hook input priority 0; }")
	r.exec(ns, "nft", "add", "rule", "inet", "lossy", "in", "iifname", dev[1], "numgen", "random", "mod", "100", "<", "5", "drop")
}

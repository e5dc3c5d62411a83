package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cpuTimes are the CPU seconds of the role processes.
type cpuTimes map[string]float64

func (c cpuTimes) minus(o cpuTimes) cpuTimes {
	out := cpuTimes{}
	for k, v := range c {
		out[k] = float64(int((v-o[k])*100)) / 100
	}
	return out
}

// procCPU reads the user+system CPU seconds of the relay, the gateway and
// the agent a1 from /proc.
func (r *relayTopo) procCPU() cpuTimes {
	out := cpuTimes{}
	for name, p := range map[string]*proc{"relay": r.relayProc, "gateway": r.gwProc, "agent": r.agentProcs["a1"]} {
		if s, ok := cpuSeconds(p); ok {
			out[name] = s
		}
	}
	return out
}

// cpuSeconds reads the user+system CPU seconds of p from /proc.
func cpuSeconds(p *proc) (float64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100, true
}

// latencyResult is what `testbackend -latency` prints.
type latencyResult struct {
	P50 float64 `json:"p50_us"`
	P99 float64 `json:"p99_us"`
}

// quicCeiling runs the tunnel package's DatagramCeiling benchmarks (quic-go
// DATAGRAMs on loopback, nothing else) and returns their delivered Gbit/s:
// with the tunnel's connection settings, and with quic-go's defaults.
func quicCeiling(t *testing.T) (tunnel, defaults float64) {
	t.Helper()
	out, err := exec.Command("go", "test", "-run=^$", "-bench=DatagramCeiling", "-benchtime=3s", "../tunnel").CombinedOutput()
	if err != nil {
		t.Fatalf("ceiling benchmark: %v\n%s", err, out)
	}
	rate := func(name string) float64 {
		m := regexp.MustCompile(`(?m)^` + name + `-\d+\s.*?([0-9.]+) delivered_Gbit/s`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no %s in the ceiling benchmark's output:\n%s", name, out)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	return rate("BenchmarkDatagramCeiling"), rate("BenchmarkDatagramCeilingQUICDefaults")
}

// TestBenchAgent: TCP throughput and round trips from an agent through the
// relay and the gateway, then over the direct path to the gateway, next to the quic-go DATAGRAM ceiling, the kernel
// forwarding the agent's namespace to the backend over the same
// namespaces, and wireguard-go between the agent and the gateway.
func TestBenchAgent(t *testing.T) {
	requireBench(t)
	needTools(t, "iperf3", "wg")
	// The direct link of docs/direct-path.md, blocked by the agent's
	// firewall until the direct path is measured.
	r := newDirectTopo(t)
	r.startBackend("192.0.2.10")
	srv := r.start(r.backends, "iperf3 server", "iperf3", "-s", "-B", "192.0.2.10", "-p", "5201")
	defer srv.stop(2 * time.Second)
	r.gwConf = r.writeFile("gateway.toml", fmt.Sprintf(`
[gateway]
name = "gw1"
state_dir = "%s/gw-state"
[tunnel]
relay = "203.0.113.13:4433"
listen = "0.0.0.0:4434"
server_name = "relay.test"
cert = "%s/gw1.crt"
key = "%s/gw1.key"
ca = "%s/ca.crt"
[api]
listen = "127.0.0.1:7780"
[limits]
new_flows_per_second = 0
[[service]]
name = "bench"
tenants = ["acme"]
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "tcp"
  port = 5201
  [[service.port]]
  protocol = "tcp"
  port = 7
  [service.health]
  type = "none"
`, r.dir, r.pki, r.pki, r.pki))
	r.relayExtra = `forward_ports = "4440-4443"`
	r.startRelay()
	r.startGateway()
	// The relay's tunnel path first: neither the gateway's listener nor
	// the relay's forwarder.
	r.agentFirewall(t, "udp dport { 4434, 4440-4443 }")
	agent := r.startAgent("a1", "acme")
	a1 := r.agents["a1"]
	vip := r.waitResolve(t, "a1", "bench.ztna.internal")
	eventually(t, 10*time.Second, "the agent path carries TCP", func() error {
		_, err := r.try(a1, 5*time.Second, r.backendBin, "-latency", vip+":7", "-n", "10")
		return err
	})

	// The kernel path: the same namespaces, routed.
	r.exec(a1, "ip", "route", "add", "192.0.2.0/24", "via", "203.0.113.1")
	r.exec(a1, "ip", "route", "add", "203.0.113.12/30", "via", "203.0.113.1") // the gateway's side, for wireguard-go
	r.exec(r.relay, "ip", "route", "add", "192.0.2.0/24", "via", "203.0.113.14")
	r.exec(r.relay, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	r.exec(r.gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	r.exec(r.gw, "ip", "route", "add", "203.0.113.0/24", "via", "203.0.113.13")
	r.exec(r.backends, "ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.1")

	d := 5 * time.Second
	latency := func(addr string) latencyResult {
		var l latencyResult
		r.clientJSON(t, a1, &l, "-latency", addr+":7", "-n", "3000")
		return l
	}
	kernelUp, err := r.iperf3(a1, "192.0.2.10", 5201, d, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	kernelDown, err := r.iperf3(a1, "192.0.2.10", 5201, d, true, 1)
	if err != nil {
		t.Fatal(err)
	}
	kernelLat := latency("192.0.2.10")
	if q := os.Getenv("ZTGATE_BENCH_TXQ"); q != "" {
		r.exec(a1, "ip", "link", "set", "ztagent0", "txqueuelen", q)
	}
	t.Log(r.exec(a1, "ip", "link", "show", "ztagent0"))
	// profile saves a 4-second CPU profile of each role, when asked for.
	profile := func(path string) {
		if dir := os.Getenv("ZTGATE_BENCH_PROFILE"); dir != "" {
			for name, ns := range map[string]string{"relay": r.relay, "gateway": r.gw, "agent": a1} {
				go r.try(ns, 20*time.Second, "curl", "-s", "-o", filepath.Join(dir, "agentpath-"+path+"-"+name+".pprof"), "http://127.0.0.1:6060/debug/pprof/profile?seconds=4")
			}
		}
	}
	// verboseLosses logs where the inner TCP's losses are, when asked:
	// the roles' drop counters, the TUN's drops, UDP socket drops and TCP
	// recovery counters per namespace.
	verboseLosses := func() {
		if os.Getenv("ZTGATE_BENCH_VERBOSE") == "" {
			return
		}
		for _, m := range []struct{ ns, url string }{{r.relay, "http://127.0.0.1:7781/metrics"}, {r.gw, "http://127.0.0.1:7780/metrics"}} {
			out, _ := r.curl(m.ns, m.url)
			for _, line := range strings.Split(out, "\n") {
				if (strings.Contains(line, "dropped") || strings.Contains(line, "netstack")) && !strings.HasPrefix(line, "#") && !strings.HasSuffix(line, " 0") {
					t.Log(line)
				}
			}
		}
		t.Log(r.exec(a1, "ip", "-s", "link", "show", "ztagent0"))
		for _, ns := range []string{a1, r.relay, r.gw} {
			t.Log(ns, r.exec(ns, "sh", "-c", "nstat -as | grep -iE 'Udp(In|Out|Rcv)|retrans|loss|probe|timeout|reord|sack|spurious|OFO|Drop|Prune|Collapse'"))
		}
	}
	// measure runs the upload (with each role's CPU time, and a profile
	// when asked), the download and the round trips of the path new flows
	// take now.
	measure := func(path string) (up, down float64, lat latencyResult) {
		cpu0 := r.procCPU()
		profile(path)
		up, err := r.iperf3(a1, vip, 5201, d, false, 1)
		t.Logf("CPU seconds during the %s upload: %v", path, r.procCPU().minus(cpu0))
		verboseLosses()
		if err != nil {
			t.Fatal(err)
		}
		profile(path + "-down")
		cpu0 = r.procCPU()
		if down, err = r.iperf3(a1, vip, 5201, d, true, 1); err != nil {
			t.Fatal(err)
		}
		t.Logf("CPU seconds during the %s download: %v", path, r.procCPU().minus(cpu0))
		return up, down, latency(vip)
	}
	// measureBesideRelay is measure for a path the relay's own tunnel
	// path must carry nothing of.
	measureBesideRelay := func(path string) (up, down float64, lat latencyResult) {
		relayUp, relayDown := r.relayData(t)
		up, down, lat = measure(path)
		if up2, down2 := r.relayData(t); up2 != relayUp || down2 != relayDown {
			t.Fatalf("the relay's tunnel path carried data of the %s path: %v/%v → %v/%v datagrams", path, relayUp, relayDown, up2, down2)
		}
		return up, down, lat
	}

	agentUp, agentDown, agentLat := measure("relay")
	up, down := r.relayData(t)
	if up == 0 || down == 0 {
		t.Fatalf("the relay path was measured, but the relay forwarded %v/%v datagrams", up, down)
	}
	t.Logf("the relay forwarded %v datagrams up and %v down", up, down)

	// The forwarded path: agent → gateway over one end-to-end QUIC
	// session that the relay forwards as UDP. New flows offer a path once
	// the agent's backoff has passed; the gateway's listener stays out of
	// reach.
	r.agentFirewall(t, "udp dport 4434")
	r.waitPath(t, agent, vip, 1, "relay forwarder")
	fwdUp, fwdDown, fwdLat := measureBesideRelay("forwarded")

	// The direct path: agent → gateway over one QUIC hop on their own
	// link, the relay only signalling. Closing the forwarder's ports ends
	// the forwarded path (its sends fail); the gateway's address behind
	// the relay (which the kernel path's routes reach) stays closed.
	r.agentFirewall(t, "ip daddr 203.0.113.1 udp dport 4440-4443", "ip daddr 203.0.113.14 udp dport 4434")
	r.waitPath(t, agent, vip, 2, "direct")
	directUp, directDown, directLat := measureBesideRelay("direct")

	ceiling, defaults := quicCeiling(t)
	wgUp, wgDown, wgLat := r.wireguardPath(t, d, latency)

	recordBench(t,
		benchResult{Case: "agent_tcp_up", Path: "quic_datagram_ceiling", Value: ceiling, Unit: "Gbit/s"},
		benchResult{Case: "agent_tcp_up", Path: "quic_datagram_ceiling_quic_go_defaults", Value: defaults, Unit: "Gbit/s", Reference: "quic_datagram_ceiling", Ratio: defaults / ceiling},
		benchResult{Case: "agent_tcp_up", Path: "kernel_forwarding", Value: kernelUp / 1e9, Unit: "Gbit/s"},
		benchResult{Case: "agent_tcp_up", Path: "wireguard_go", Value: wgUp / 1e9, Unit: "Gbit/s", Reference: "quic_datagram_ceiling", Ratio: wgUp / 1e9 / ceiling},
		benchResult{Case: "agent_tcp_up", Path: "ztgate_agent_relay", Value: agentUp / 1e9, Unit: "Gbit/s", Reference: "quic_datagram_ceiling", Ratio: agentUp / 1e9 / ceiling},
		benchResult{Case: "agent_tcp_up", Path: "ztgate_agent_forwarded", Value: fwdUp / 1e9, Unit: "Gbit/s", Reference: "quic_datagram_ceiling", Ratio: fwdUp / 1e9 / ceiling},
		benchResult{Case: "agent_tcp_up", Path: "ztgate_agent_direct", Value: directUp / 1e9, Unit: "Gbit/s", Reference: "quic_datagram_ceiling", Ratio: directUp / 1e9 / ceiling},
		benchResult{Case: "agent_tcp_down", Path: "kernel_forwarding", Value: kernelDown / 1e9, Unit: "Gbit/s"},
		benchResult{Case: "agent_tcp_down", Path: "wireguard_go", Value: wgDown / 1e9, Unit: "Gbit/s", Reference: "quic_datagram_ceiling", Ratio: wgDown / 1e9 / ceiling},
		benchResult{Case: "agent_tcp_down", Path: "ztgate_agent_relay", Value: agentDown / 1e9, Unit: "Gbit/s", Reference: "quic_datagram_ceiling", Ratio: agentDown / 1e9 / ceiling},
		benchResult{Case: "agent_tcp_down", Path: "ztgate_agent_forwarded", Value: fwdDown / 1e9, Unit: "Gbit/s", Reference: "quic_datagram_ceiling", Ratio: fwdDown / 1e9 / ceiling},
		benchResult{Case: "agent_tcp_down", Path: "ztgate_agent_direct", Value: directDown / 1e9, Unit: "Gbit/s", Reference: "quic_datagram_ceiling", Ratio: directDown / 1e9 / ceiling},
		benchResult{Case: "agent_rtt_p50", Path: "kernel_forwarding", Value: kernelLat.P50, Unit: "µs"},
		benchResult{Case: "agent_rtt_p50", Path: "wireguard_go", Value: wgLat.P50, Unit: "µs", Reference: "kernel_forwarding", Ratio: wgLat.P50 / kernelLat.P50},
		benchResult{Case: "agent_rtt_p50", Path: "ztgate_agent_relay", Value: agentLat.P50, Unit: "µs", Reference: "kernel_forwarding", Ratio: agentLat.P50 / kernelLat.P50},
		benchResult{Case: "agent_rtt_p99", Path: "ztgate_agent_relay", Value: agentLat.P99, Unit: "µs", Reference: "kernel_forwarding", Ratio: agentLat.P99 / kernelLat.P99},
		benchResult{Case: "agent_rtt_p50", Path: "ztgate_agent_forwarded", Value: fwdLat.P50, Unit: "µs", Reference: "kernel_forwarding", Ratio: fwdLat.P50 / kernelLat.P50},
		benchResult{Case: "agent_rtt_p99", Path: "ztgate_agent_forwarded", Value: fwdLat.P99, Unit: "µs", Reference: "kernel_forwarding", Ratio: fwdLat.P99 / kernelLat.P99},
		benchResult{Case: "agent_rtt_p50", Path: "ztgate_agent_direct", Value: directLat.P50, Unit: "µs", Reference: "kernel_forwarding", Ratio: directLat.P50 / kernelLat.P50},
		benchResult{Case: "agent_rtt_p99", Path: "ztgate_agent_direct", Value: directLat.P99, Unit: "µs", Reference: "kernel_forwarding", Ratio: directLat.P99 / kernelLat.P99},
		benchResult{Case: "agent_rtt_added_by_tunnel", Path: "ztgate_agent_relay", Value: agentLat.P50 - kernelLat.P50, Unit: "µs"},
		benchResult{Case: "agent_rtt_added_by_tunnel", Path: "ztgate_agent_forwarded", Value: fwdLat.P50 - kernelLat.P50, Unit: "µs"},
		benchResult{Case: "agent_rtt_added_by_tunnel", Path: "ztgate_agent_direct", Value: directLat.P50 - kernelLat.P50, Unit: "µs"},
	)
}

// agentFirewall replaces the agent's nftables rules with one dropping
// rule per match on its output ("udp dport 4434"); none removes them.
// Dropped sends fail at once.
func (r *relayTopo) agentFirewall(t *testing.T, matches ...string) {
	t.Helper()
	ns := r.agents["a1"]
	r.try(ns, 5*time.Second, "nft", "delete", "table", "inet", "ztdirect")
	if len(matches) == 0 {
		return
	}
	r.exec(ns, "nft", "add", "table", "inet", "ztdirect")
	r.exec(ns, "nft", "add", "chain", "inet", "ztdirect", "c", "{ type filter hook output priority 0 ; }")
	for _, m := range matches {
		r.exec(ns, append([]string{"nft", "add", "rule", "inet", "ztdirect", "c"}, append(strings.Fields(m), "drop")...)...)
	}
}

// waitPath pokes the service with new flows until the agent's log shows
// its n-th "direct path up" and that one is via ("direct" or "relay
// forwarder"), for up to 60 s.
func (r *relayTopo) waitPath(t *testing.T, agent *proc, vip string, n int, via string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out := agent.out.String()
		if strings.Count(out, "direct path up") >= n {
			lines := strings.Split(out[strings.LastIndex(out, "direct path up"):], "\n")
			if !strings.Contains(lines[0], `via="`+via+`"`) && !strings.Contains(lines[0], "via="+via) {
				t.Fatalf("path %d is not via %s: %s", n, via, lines[0])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no path via %s:\n%s", via, out)
		}
		r.try(r.agents["a1"], 3*time.Second, r.backendBin, "-latency", vip+":7", "-n", "1")
		time.Sleep(200 * time.Millisecond)
	}
}

// wireguardPath sets up wireguard-go between the agent's namespace and the
// gateway's (built from the module cache: golang.zx2c4.com/wireguard is a
// dependency of ztgate), routes the agent to the backend through it and
// measures the same things. Inner addresses: 198.51.100.201 (agent),
// 198.51.100.202 (gateway end).
func (r *relayTopo) wireguardPath(t *testing.T, d time.Duration, latency func(string) latencyResult) (up, down float64, lat latencyResult) {
	t.Helper()
	bin := filepath.Join(r.dir, "wireguard-go")
	if out, err := exec.Command("go", "build", "-o", bin, "golang.zx2c4.com/wireguard").CombinedOutput(); err != nil {
		t.Fatalf("build wireguard-go: %v\n%s", err, out)
	}
	keys := map[string][2]string{}
	for _, side := range []string{"agent", "gw"} {
		priv, err := exec.Command("wg", "genkey").Output()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("wg", "pubkey")
		cmd.Stdin = strings.NewReader(string(priv))
		pub, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(r.dir, side+".wgkey")
		os.WriteFile(path, priv, 0o600)
		keys[side] = [2]string{path, strings.TrimSpace(string(pub))}
	}
	a1 := r.agents["a1"]
	for _, s := range []struct{ ns, dev, addr, peer, allowed, endpoint string }{
		{a1, "wga", "198.51.100.201/32", keys["gw"][1], "192.0.2.0/24", "203.0.113.14:51820"},
		{r.gw, "wgg", "198.51.100.202/32", keys["agent"][1], "198.51.100.201/32", ""},
	} {
		side := "agent"
		if s.ns == r.gw {
			side = "gw"
		}
		p := r.start(s.ns, "wireguard-go "+s.dev, bin, "-f", s.dev)
		defer p.stop(3 * time.Second)
		eventually(t, 5*time.Second, "wireguard-go up", func() error {
			_, err := r.try(s.ns, 2*time.Second, "wg", "show", s.dev)
			return err
		})
		args := []string{"wg", "set", s.dev, "private-key", keys[side][0], "listen-port", "51820", "peer", s.peer, "allowed-ips", s.allowed}
		if s.endpoint != "" {
			args = append(args, "endpoint", s.endpoint)
		}
		r.exec(s.ns, args...)
		r.exec(s.ns, "ip", "addr", "add", s.addr, "dev", s.dev)
		r.exec(s.ns, "ip", "link", "set", s.dev, "mtu", "1420", "up")
	}
	r.exec(a1, "ip", "route", "replace", "192.0.2.0/24", "dev", "wga", "src", "198.51.100.201")
	r.exec(r.gw, "ip", "route", "add", "198.51.100.201/32", "dev", "wgg")
	r.exec(r.backends, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1")
	var err error
	if up, err = r.iperf3(a1, "192.0.2.10", 5201, d, false, 1); err != nil {
		t.Fatal(err)
	}
	if down, err = r.iperf3(a1, "192.0.2.10", 5201, d, true, 1); err != nil {
		t.Fatal(err)
	}
	lat = latency("192.0.2.10")
	return up, down, lat
}

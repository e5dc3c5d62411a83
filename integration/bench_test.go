package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The end-to-end benchmarks are tests gated by ZTGATE_BENCH=1 (`make bench`)
// so that they never run in `make test`. Every figure is reported next to
// a reference path measured in the same run, as a ratio.

func requireBench(t *testing.T) {
	t.Helper()
	if os.Getenv("ZTGATE_BENCH") == "" {
		t.Skip("end-to-end benchmark: run with `make bench`")
	}
}

// benchResult is one machine-readable line of bench-results/e2e.jsonl.
type benchResult struct {
	Case      string  `json:"case"`
	Path      string  `json:"path"`
	Value     float64 `json:"value"`
	Unit      string  `json:"unit"`
	Reference string  `json:"reference,omitempty"`
	Ratio     float64 `json:"ratio,omitempty"`
}

// recordBench appends results to bench-results/e2e.jsonl and logs them.
func recordBench(t *testing.T, rs ...benchResult) {
	t.Helper()
	dir := os.Getenv("ZTGATE_BENCH_DIR")
	if dir == "" {
		dir = "../bench-results"
	}
	os.MkdirAll(dir, 0o755)
	f, err := os.OpenFile(filepath.Join(dir, "e2e.jsonl"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, r := range rs {
		b, _ := json.Marshal(r)
		f.Write(append(b, '\n'))
		line := fmt.Sprintf("%-28s %-22s %12.3f %s", r.Case, r.Path, r.Value, r.Unit)
		if r.Reference != "" {
			line += fmt.Sprintf("   %.3f× %s", r.Ratio, r.Reference)
		}
		t.Log(line)
	}
}

// iperf3 runs a client in ns against server for d and returns bits/s as
// received by the receiver.
func (l *lanTopo) iperf3(ns, server string, port int, d time.Duration, reverse bool, streams int) (float64, error) {
	args := []string{"iperf3", "-J", "-c", server, "-p", fmt.Sprint(port), "-t", fmt.Sprint(int(d.Seconds())), "-P", fmt.Sprint(streams)}
	if reverse {
		args = append(args, "-R")
	}
	var out string
	var err error
	// A test right after another may find the server still closing the
	// last one (its control connection's end crosses the path under test):
	// iperf3 says "the server is busy". Five tries a second apart.
	for try := 0; ; try++ {
		out, _, err = l.tryOut(ns, d+30*time.Second, args...)
		if try == 4 || !strings.Contains(out, "the server is busy") {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, fmt.Errorf("iperf3 output: %v\n%s", err, out)
	}
	if res.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", res.Error)
	}
	if n := res.End.SumSent.Retransmits; n > 0 && os.Getenv("ZTGATE_BENCH_VERBOSE") != "" {
		l.t.Logf("iperf3 to %s (reverse %v): %d retransmits", server, reverse, n)
	}
	return res.End.SumReceived.BitsPerSecond, nil
}

const benchConfig = `
[gateway]
state_dir = "STATE_DIR"
[tun]
mtu = 1500
[api]
listen = "127.0.0.1:7780"
[limits]
max_flows = 100000
new_flows_per_second = 0
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
[[service]]
name = "iperf"
tenants = ["acme"]
vip = "10.100.0.10"
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "tcp"
  port = 5201
  [[service.port]]
  protocol = "udp"
  port = 5201
  [[service.port]]
  protocol = "tcp"
  port = 7
  [[service.port]]
  protocol = "udp"
  port = 5202
  [[service.port]]
  protocol = "udp"
  port = 5203
  [service.health]
  type = "none"
`

// benchTopo is the LAN topology with the reference paths of the suite:
// the kernel forwarding the client to the backend (192.0.2.10 directly),
// and nftables DNAT of a stand-in VIP (203.0.113.200) in the router.
func newBenchTopo(t *testing.T) *lanTopo {
	requireBench(t)
	needTools(t, "iperf3", "nft")
	l := newLANTopo(t)
	l.exec(l.acme, "ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
	l.exec(l.acme, "ip", "route", "add", "203.0.113.200/32", "via", "198.51.100.1")
	l.exec(l.backends, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1")
	// Connection-rate and many-flow cases need the client's ports back
	// quickly, on every path alike.
	l.exec(l.acme, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=10000 65000")
	l.exec(l.router, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
	rules := filepath.Join(l.dir, "dnat.nft")
	if err := os.WriteFile(rules, []byte(dnatRule), 0o644); err != nil {
		t.Fatal(err)
	}
	l.exec(l.router, "nft", "-f", rules)
	return l
}

// startSlirp gives a new client namespace a slirp4netns user-mode network
// (a userspace TCP/IP stack, the peer the suite compares with) whose
// connections leave from the router namespace. It returns the namespace.
func (l *lanTopo) startSlirp(t *testing.T) string {
	t.Helper()
	needTools(t, "slirp4netns")
	ns := l.ns("slirp")
	p := l.start(l.router, "slirp4netns", "slirp4netns", "--configure", "--mtu=1500", "--disable-host-loopback",
		"--cidr=203.0.113.128/25", "--netns-type=path", "/run/netns/"+ns, "tap0")
	eventually(t, 5*time.Second, "slirp4netns up", func() error {
		_, err := l.try(ns, 2*time.Second, "ip", "route", "get", "192.0.2.10")
		return err
	})
	_ = p
	return ns
}

// dnatRule makes the router DNAT the stand-in VIP to the backend.
const dnatRule = `table ip ztgbench {
  chain pre {
    type nat hook prerouting priority dstnat;
    ip daddr 203.0.113.200 dnat to 192.0.2.10
  }
}`

// profileDuring captures a CPU profile of the gateway for d when
// ZTGATE_BENCH_PROFILE names a directory (performance work: inspect with
// go tool pprof). It returns at once; wait on the channel for the file.
func (l *lanTopo) profileDuring(t *testing.T, name string, d time.Duration) <-chan struct{} {
	done := make(chan struct{})
	dir := os.Getenv("ZTGATE_BENCH_PROFILE")
	if dir == "" {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		out := filepath.Join(dir, name+".pprof")
		if _, err := l.curl(l.router, "--max-time", fmt.Sprint(int(d.Seconds())+10), "-o", out,
			fmt.Sprintf("http://127.0.0.1:7780/debug/pprof/profile?seconds=%d", int(d.Seconds()))); err != nil {
			t.Logf("profile %s: %v", name, err)
		}
	}()
	return done
}

// gatewayMetric reads one sample of the gateway's /metrics in the router.
func (l *lanTopo) gatewayMetric(t *testing.T, name string) float64 {
	t.Helper()
	out, err := l.curl(l.router, "http://127.0.0.1:7780/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, name+" ") {
			var v float64
			fmt.Sscanf(strings.TrimPrefix(line, name+" "), "%g", &v)
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// TestBenchTCP measures iperf3 throughput through the VIP next to the
// kernel forwarding the same client to the same backend, nftables DNAT of a
// stand-in VIP, and slirp4netns (a userspace TCP/IP stack), in one run.
func TestBenchTCP(t *testing.T) {
	l := newBenchTopo(t)
	srv := l.start(l.backends, "iperf3 server", "iperf3", "-s", "-B", "192.0.2.10", "-p", "5201")
	defer srv.stop(2 * time.Second)
	time.Sleep(300 * time.Millisecond)
	l.startGateway(benchConfig)
	slirp := l.startSlirp(t)

	d := 5 * time.Second
	for _, c := range []struct {
		name    string
		reverse bool
		streams int
	}{{"tcp_up_1", false, 1}, {"tcp_down_1", true, 1}, {"tcp_up_4", false, 4}, {"tcp_down_4", true, 4}} {
		kernel, err := l.iperf3(l.acme, "192.0.2.10", 5201, d, c.reverse, c.streams)
		if err != nil {
			t.Fatal(err)
		}
		results := []benchResult{{Case: c.name, Path: "kernel_forwarding", Value: kernel / 1e9, Unit: "Gbit/s"}}
		for _, p := range []struct{ name, ns, addr string }{
			{"nftables_dnat", l.acme, "203.0.113.200"},
			{"slirp4netns", slirp, "192.0.2.10"},
			{"ztgate_vip", l.acme, "10.100.0.10"},
		} {
			v, err := l.iperf3(p.ns, p.addr, 5201, d, c.reverse, c.streams)
			if err != nil {
				t.Fatal(err)
			}
			results = append(results, benchResult{Case: c.name, Path: p.name, Value: v / 1e9, Unit: "Gbit/s", Reference: "kernel_forwarding", Ratio: v / kernel})
		}
		recordBench(t, results...)
	}
}

// udpRate floods server:port with 64-byte datagrams at pps from ns for
// 3 s, segments datagrams per UDP_SEGMENT send (1: each its own), and
// returns the packets per second the backend's sink counted and the loss.
func (l *lanTopo) udpRate(t *testing.T, ns, server string, pps, segments int) (float64, float64) {
	t.Helper()
	l.curl(l.router, "http://192.0.2.10:8080/udpcount") // reset
	var r struct {
		Sent    float64 `json:"sent"`
		Seconds float64 `json:"seconds"`
	}
	l.clientJSON(t, ns, &r, "-udpflood", server+":5202", "-pps", fmt.Sprint(pps), "-d", "3s", "-dgram", "64", "-flows", "4", "-segments", fmt.Sprint(segments))
	time.Sleep(200 * time.Millisecond) // the last packets in flight
	out, err := l.curl(l.router, "http://192.0.2.10:8080/udpcount")
	if err != nil {
		t.Fatal(err)
	}
	var got float64
	fmt.Sscanf(out, "%g", &got)
	return got / r.Seconds, 1 - got/max(r.Sent, 1)
}

// udpDownRate asks the backend's blast server (reached at server:5203)
// from ns for 64-byte datagrams at pps for 3 s and returns the packets per
// second that arrived and the loss.
func (l *lanTopo) udpDownRate(t *testing.T, ns, server string, pps int) (float64, float64) {
	t.Helper()
	var r struct {
		Received float64 `json:"received"`
		Sent     float64 `json:"sent"`
		Seconds  float64 `json:"seconds"`
	}
	l.clientJSON(t, ns, &r, "-udpdrain", server+":5203", "-pps", fmt.Sprint(pps), "-d", "3s", "-dgram", "64")
	return r.Received / r.Seconds, 1 - r.Received/max(r.Sent, 1)
}

// maxRate finds the highest offered rate that measure delivers with under
// 1 % loss: it doubles the rate until loss appears, then bisects twice.
func maxRate(measure func(pps int) (got, loss float64)) float64 {
	best, lo, hi := 0.0, 0, 0
	for rate := 50_000; rate <= 1_600_000; rate *= 2 {
		got, loss := measure(rate)
		if loss >= 0.01 {
			hi = rate
			break
		}
		lo, best = rate, got
	}
	for range 2 {
		if hi == 0 {
			break
		}
		mid := (lo + hi) / 2
		if got, loss := measure(mid); loss < 0.01 {
			lo, best = mid, got
		} else {
			hi = mid
		}
	}
	return best
}

// TestBenchUDP: 64-byte UDP packets per second delivered under 1 % loss,
// from a batching sender to a batching sink (recvmmsg), twice: udp_64B
// sends each datagram as its own sendmmsg entry; udp_64B_gso sends 16 per
// entry with UDP_SEGMENT, as QUIC stacks do. The GSO sender costs little,
// and the gateway gets a flow's 16 datagrams in one TUN read and cuts them
// apart itself; the kernel path carries them as one packet as far as the
// sink's socket.
func TestBenchUDP(t *testing.T) {
	l := newBenchTopo(t)
	l.startBackend("192.0.2.10", "-udpsink", "192.0.2.10:5202")
	gw := l.startGateway(benchConfig)
	for _, c := range []struct {
		name     string
		segments int
	}{{"udp_64B", 1}, {"udp_64B_gso", 16}} {
		l.benchUDP(t, c.name, gw, func(server string, pps int) (float64, float64) {
			return l.udpRate(t, l.acme, server, pps, c.segments)
		})
	}
}

// TestBenchUDPDown: the same from the backend to the client (the replies
// of a flow the client opened), from a batching sender to a batching
// receiver.
func TestBenchUDPDown(t *testing.T) {
	l := newBenchTopo(t)
	l.startBackend("192.0.2.10", "-udpblast", "192.0.2.10:5203")
	gw := l.startGateway(benchConfig)
	l.benchUDP(t, "udp_64B_down", gw, func(server string, pps int) (float64, float64) {
		return l.udpDownRate(t, l.acme, server, pps)
	})
}

// benchUDP records a UDP case: the highest rate delivered under 1 % loss
// through the kernel's forwarding and through the VIP. On a small machine
// the sender itself is the limit (it runs the kernel's forwarding in its
// own system calls), so the gateway's share is recorded too: the loss at
// 200 k packets/s offered, and the gateway's CPU time per delivered packet
// (measure sends for 3 s), which bounds what one core of it forwards.
func (l *lanTopo) benchUDP(t *testing.T, name string, gw *proc, measure func(server string, pps int) (got, loss float64)) {
	t.Helper()
	kernel := maxRate(func(pps int) (float64, float64) { return measure("192.0.2.10", pps) })
	vip := maxRate(func(pps int) (float64, float64) { return measure("10.100.0.10", pps) })
	cpu0, _ := cpuSeconds(gw)
	at200, loss200 := measure("10.100.0.10", 200_000)
	cpu1, _ := cpuSeconds(gw)
	perPacket := (cpu1 - cpu0) / (at200 * 3) * 1e6
	if os.Getenv("ZTGATE_BENCH_PROFILE") != "" {
		prof := l.profileDuring(t, name, 2*time.Second)
		got, loss := measure("10.100.0.10", 200_000)
		<-prof
		t.Logf("profiled at 200k offered: %.0f delivered, loss %.3f", got, loss)
	}
	recordBench(t,
		benchResult{Case: name, Path: "kernel_forwarding", Value: kernel, Unit: "packets/s"},
		benchResult{Case: name, Path: "ztgate_vip", Value: vip, Unit: "packets/s", Reference: "kernel_forwarding", Ratio: vip / kernel},
		benchResult{Case: name + "_200k_offered", Path: "ztgate_vip", Value: at200, Unit: "packets/s"},
		benchResult{Case: name + "_200k_offered", Path: "ztgate_vip_loss", Value: loss200 * 100, Unit: "%"},
		benchResult{Case: name + "_gateway_cpu", Path: "ztgate_per_packet", Value: perPacket, Unit: "µs"},
		benchResult{Case: name + "_gateway_cpu", Path: "ztgate_one_core", Value: 1e6 / perPacket, Unit: "packets/s"},
	)
}

// clientJSON runs a testbackend client mode in ns and decodes its line.
func (l *lanTopo) clientJSON(t *testing.T, ns string, v any, args ...string) {
	t.Helper()
	out, _, err := l.tryOut(ns, 90*time.Second, append([]string{l.backendBin}, args...)...)
	if err != nil {
		t.Fatalf("testbackend %v: %v\n%s", args, err, out)
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), v); err != nil {
		t.Fatalf("testbackend %v output: %v\n%s", args, err, out)
	}
}

// TestBenchLatency: 1-byte TCP round trips, idle and under load (iperf3
// through the same path), p50 and p99. Each figure is the median of three
// rounds that alternate between the kernel path and ztgate, so that a
// noisy moment of the machine does not decide a ratio.
func TestBenchLatency(t *testing.T) {
	l := newBenchTopo(t)
	l.startBackend("192.0.2.10")
	srv := l.start(l.backends, "iperf3 server", "iperf3", "-s", "-B", "192.0.2.10", "-p", "5201")
	defer srv.stop(2 * time.Second)
	l.startGateway(benchConfig)
	measure := func(addr string, load bool) latencyResult {
		if load {
			bg := l.start(l.acme, "iperf3 load", "iperf3", "-c", addr, "-p", "5201", "-t", "20", "-b", "1G")
			defer bg.stop(2 * time.Second)
			time.Sleep(500 * time.Millisecond)
		}
		var r latencyResult
		l.clientJSON(t, l.acme, &r, "-latency", addr+":7", "-n", "3000")
		return r
	}
	var rs []benchResult
	for _, load := range []bool{false, true} {
		name := "latency_idle"
		if load {
			name = "latency_loaded"
		}
		var k50, k99, v50, v99 []float64
		for range 3 {
			k, v := measure("192.0.2.10", load), measure("10.100.0.10", load)
			k50, k99, v50, v99 = append(k50, k.P50), append(k99, k.P99), append(v50, v.P50), append(v99, v.P99)
		}
		for _, q := range []struct {
			suffix string
			k, v   float64
		}{{"_p50", median(k50), median(v50)}, {"_p99", median(k99), median(v99)}} {
			rs = append(rs,
				benchResult{Case: name + q.suffix, Path: "kernel_forwarding", Value: q.k, Unit: "µs"},
				benchResult{Case: name + q.suffix, Path: "ztgate_vip", Value: q.v, Unit: "µs", Reference: "kernel_forwarding", Ratio: q.v / q.k})
		}
	}
	recordBench(t, rs...)
}

// median returns the middle of xs (which it sorts).
func median(xs []float64) float64 {
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// TestBenchConnRate: connect, 1-byte echo, close with 32 workers; errors
// must be 0. Like the latency case, each figure is the median of three
// rounds (3 s each) that alternate between the kernel path and ztgate.
// The gateway's CPU time per connection is recorded too (the clients'
// `-d` of 3 s is the round's length).
func TestBenchConnRate(t *testing.T) {
	l := newBenchTopo(t)
	l.startBackend("192.0.2.10")
	gw := l.startGateway(benchConfig)
	type rate struct {
		CPS    float64 `json:"conns_per_s"`
		Errors int     `json:"errors"`
		First  string  `json:"first_error"`
	}
	var ks, vs, cpu []float64
	kErrs, vErrs, first := 0, 0, ""
	for round := range 3 {
		var k, v rate
		l.clientJSON(t, l.acme, &k, "-connrate", "192.0.2.10:7", "-c", "32", "-d", "3s")
		prof := make(<-chan struct{})
		if round == 1 {
			prof = l.profileDuring(t, "connrate", 2*time.Second)
		}
		cpu0, _ := cpuSeconds(gw)
		l.clientJSON(t, l.acme, &v, "-connrate", "10.100.0.10:7", "-c", "32", "-d", "3s")
		cpu1, _ := cpuSeconds(gw)
		if round == 1 {
			<-prof
		}
		cpu = append(cpu, (cpu1-cpu0)/max(v.CPS*3, 1)*1e6)
		ks, vs = append(ks, k.CPS), append(vs, v.CPS)
		kErrs, vErrs = kErrs+k.Errors, vErrs+v.Errors
		if first == "" {
			first = k.First + v.First
		}
	}
	k, v := median(ks), median(vs)
	recordBench(t,
		benchResult{Case: "conns_per_s", Path: "kernel_forwarding", Value: k, Unit: "conns/s"},
		benchResult{Case: "conns_per_s", Path: "ztgate_vip", Value: v, Unit: "conns/s", Reference: "kernel_forwarding", Ratio: v / k},
		benchResult{Case: "conns_errors", Path: "ztgate_vip", Value: float64(vErrs), Unit: "errors"},
		benchResult{Case: "conns_gateway_cpu", Path: "ztgate_per_connection", Value: median(cpu), Unit: "µs"},
	)
	if kErrs > 0 || vErrs > 0 {
		t.Errorf("connection errors: kernel %d, ztgate %d (%s)", kErrs, vErrs, first)
	}
}

// TestBenchIdleFlows: 10 000 idle TCP flows through the VIP: the
// gateway's RSS and goroutines per flow, and both back to baseline after
// the flows close.
func TestBenchIdleFlows(t *testing.T) {
	l := newBenchTopo(t)
	l.startBackend("192.0.2.10")
	l.startGateway(benchConfig)
	settle := func() { time.Sleep(2 * time.Second) }
	// collect runs a garbage collection in the gateway before the heap is
	// read: the heap figures are then what is live, not what the collector
	// has yet to reach (an idle gateway may not collect for minutes).
	collect := func() {
		t.Helper()
		if out, err := l.curl(l.router, "-f", "-o", "/dev/null", "http://127.0.0.1:7780/debug/pprof/heap?gc=1"); err != nil {
			t.Fatalf("garbage collection in the gateway: %v %s", err, out)
		}
	}
	// Warm up: the first flows allocate what the gateway keeps for good
	// (packet buffers, GRO tables, pools); the baseline comes after them.
	warm := l.start(l.acme, "warm-up", l.backendBin, "-hold-many", "10.100.0.10:7", "-n", "500")
	warm.waitOutput(t, `"open"`, 20*time.Second)
	warm.stop(10 * time.Second)
	settle()
	collect()
	rss0, gor0 := l.gatewayMetric(t, "process_resident_memory_bytes"), l.gatewayMetric(t, "go_goroutines")
	stack0, heap0 := l.gatewayMetric(t, "go_memstats_stack_inuse_bytes"), l.gatewayMetric(t, "go_memstats_heap_inuse_bytes")
	if dir := os.Getenv("ZTGATE_BENCH_PROFILE"); dir != "" {
		l.curl(l.router, "-o", filepath.Join(dir, "base.heap"), "http://127.0.0.1:7780/debug/pprof/heap?gc=1")
	}
	const n = 10000
	hold := l.start(l.acme, "hold-many", l.backendBin, "-hold-many", "10.100.0.10:7", "-n", fmt.Sprint(n))
	hold.waitOutput(t, `"open"`, 50*time.Second)
	settle()
	if dir := os.Getenv("ZTGATE_BENCH_PROFILE"); dir != "" {
		l.curl(l.router, "-o", filepath.Join(dir, "idle.heap"), "http://127.0.0.1:7780/debug/pprof/heap")
		l.curl(l.router, "-o", filepath.Join(dir, "idle.goroutine"), "http://127.0.0.1:7780/debug/pprof/goroutine?debug=1")
	}
	collect()
	rss1, gor1 := l.gatewayMetric(t, "process_resident_memory_bytes"), l.gatewayMetric(t, "go_goroutines")
	stack1, heap1 := l.gatewayMetric(t, "go_memstats_stack_inuse_bytes"), l.gatewayMetric(t, "go_memstats_heap_inuse_bytes")
	hold.stop(10 * time.Second)
	eventually(t, 30*time.Second, "flows closed", func() error {
		if a := l.gatewayMetric(t, "go_goroutines"); a > gor0+20 {
			return fmt.Errorf("%v goroutines, baseline %v", a, gor0)
		}
		return nil
	})
	time.Sleep(8 * time.Second) // past gVisor's TIME-WAIT (5 s) and a trim
	collect()
	rss2, gor2 := l.gatewayMetric(t, "process_resident_memory_bytes"), l.gatewayMetric(t, "go_goroutines")
	heap2 := l.gatewayMetric(t, "go_memstats_heap_inuse_bytes")
	t.Logf("netstack TCP after close: %v connected, %v established",
		l.gatewayMetric(t, "ztgate_netstack_tcp_connected"), l.gatewayMetric(t, "ztgate_netstack_tcp_established"))
	if dir := os.Getenv("ZTGATE_BENCH_PROFILE"); dir != "" {
		l.curl(l.router, "-o", filepath.Join(dir, "after.heap"), "http://127.0.0.1:7780/debug/pprof/heap?gc=1")
	}
	recordBench(t,
		benchResult{Case: "idle_flows_10k", Path: "ztgate_rss_per_flow", Value: (rss1 - rss0) / n / 1024, Unit: "KiB"},
		benchResult{Case: "idle_flows_10k", Path: "ztgate_goroutines_per_flow", Value: (gor1 - gor0) / n, Unit: "goroutines"},
		benchResult{Case: "idle_flows_10k", Path: "ztgate_stack_per_flow", Value: (stack1 - stack0) / n / 1024, Unit: "KiB"},
		benchResult{Case: "idle_flows_10k", Path: "ztgate_heap_per_flow", Value: (heap1 - heap0) / n / 1024, Unit: "KiB"},
		benchResult{Case: "idle_flows_10k", Path: "ztgate_rss_after_close", Value: (rss2 - rss0) / 1024 / 1024, Unit: "MiB over baseline"},
		benchResult{Case: "idle_flows_10k", Path: "ztgate_heap_after_close", Value: (heap2 - heap0) / 1024 / 1024, Unit: "MiB over baseline"},
		benchResult{Case: "idle_flows_10k", Path: "ztgate_goroutines_after_close", Value: gor2 - gor0, Unit: "over baseline"},
	)
}

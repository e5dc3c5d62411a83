package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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
	out, _, err := l.tryOut(ns, d+30*time.Second, args...)
	if err != nil {
		return 0, fmt.Errorf("iperf3 %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return 0, fmt.Errorf("iperf3 output: %v\n%s", err, out)
	}
	if res.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", res.Error)
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
  [service.health]
  type = "none"
`

// TestBenchTCP measures iperf3 throughput through the VIP and through the
// kernel's own forwarding of the same client to the same backend.
func TestBenchTCP(t *testing.T) {
	requireBench(t)
	needTools(t, "iperf3")
	l := newLANTopo(t)
	// The kernel path: the same client reaches the backend by routing.
	l.exec(l.acme, "ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
	l.exec(l.backends, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1")
	srv := l.start(l.backends, "iperf3 server", "iperf3", "-s", "-B", "192.0.2.10", "-p", "5201")
	defer srv.stop(2 * time.Second)
	time.Sleep(300 * time.Millisecond)
	l.startGateway(benchConfig)

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
		vip, err := l.iperf3(l.acme, "10.100.0.10", 5201, d, c.reverse, c.streams)
		if err != nil {
			t.Fatal(err)
		}
		recordBench(t,
			benchResult{Case: c.name, Path: "kernel_forwarding", Value: kernel / 1e9, Unit: "Gbit/s"},
			benchResult{Case: c.name, Path: "ztgate_vip", Value: vip / 1e9, Unit: "Gbit/s", Reference: "kernel_forwarding", Ratio: vip / kernel},
		)
	}
}

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dnsperf runs dnsperf in ns against server:port for d and returns the
// queries per second it reports.
func (l *lanTopo) dnsperf(ns, queries, server string, port int, d time.Duration) (float64, error) {
	out, err := l.try(ns, d+30*time.Second, "dnsperf", "-s", server, "-p", strconv.Itoa(port),
		"-d", queries, "-l", strconv.Itoa(int(d.Seconds())), "-c", "8", "-q", "200")
	if err != nil {
		return 0, fmt.Errorf("dnsperf: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Queries per second:\s+([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("dnsperf output:\n%s", out)
	}
	lost := regexp.MustCompile(`Queries lost:\s+(\d+)`).FindStringSubmatch(out)
	if lost != nil && lost[1] != "0" {
		l.t.Logf("dnsperf against %s:%d lost %s queries", server, port, lost[1])
	}
	return strconv.ParseFloat(m[1], 64)
}

// TestBenchDNS compares the built-in DNS inside the netstack (through the
// TUN) and on a host listener with unbound serving the same names as
// local-data through the kernel path, in the same run.
func TestBenchDNS(t *testing.T) {
	requireBench(t)
	needTools(t, "dnsperf", "unbound")
	l := newLANTopo(t)
	const n = 50
	var cfg, unboundData, queries strings.Builder
	cfg.WriteString(`
[gateway]
state_dir = "STATE_DIR"
[dns]
listen = ["198.51.100.1:5353"]
[api]
listen = "127.0.0.1:7780"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
`)
	for i := range n {
		name := fmt.Sprintf("svc%d", i)
		vip := fmt.Sprintf("10.100.0.%d", 10+i)
		fmt.Fprintf(&cfg, "[[service]]\nname = %q\ntenants = [\"acme\"]\nvip = %q\nbackends = [\"192.0.2.10\"]\n  [[service.port]]\n  protocol = \"tcp\"\n  port = 80\n  [service.health]\n  type = \"none\"\n", name, vip)
		fmt.Fprintf(&unboundData, "  local-data: \"%s.ztna.internal. 30 IN A %s\"\n", name, vip)
		fmt.Fprintf(&queries, "%s.ztna.internal A\n", name)
	}
	qfile := filepath.Join(l.dir, "queries.txt")
	os.WriteFile(qfile, []byte(queries.String()), 0o644)
	ucfg := filepath.Join(l.dir, "unbound.conf")
	os.WriteFile(ucfg, []byte(fmt.Sprintf(`server:
  username: ""
  chroot: ""
  directory: "%s"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  interface: 198.51.100.1@5300
  access-control: 198.51.100.0/24 allow
  do-ip6: no
  num-threads: 2
  so-reuseport: yes
  local-zone: "ztna.internal." static
%s
remote-control:
  control-enable: no
`, l.dir, unboundData.String())), 0o644)
	ub := l.start(l.router, "unbound", "unbound", "-d", "-c", ucfg)
	defer ub.stop(3 * time.Second)
	l.startGateway(cfg.String())
	eventually(t, 5*time.Second, "unbound answers", func() error {
		_, err := l.try(l.acme, 3*time.Second, "dig", "+time=1", "+tries=1", "@198.51.100.1", "-p", "5300", "svc1.ztna.internal")
		return err
	})

	d := 10 * time.Second
	unbound, err := l.dnsperf(l.acme, qfile, "198.51.100.1", 5300, d)
	if err != nil {
		t.Fatal(err)
	}
	host, err := l.dnsperf(l.acme, qfile, "198.51.100.1", 5353, d)
	if err != nil {
		t.Fatal(err)
	}
	prof := l.profileDuring(t, "dns-netstack", d/2)
	stack, err := l.dnsperf(l.acme, qfile, "10.100.0.1", 53, d)
	<-prof
	if err != nil {
		t.Fatal(err)
	}
	recordBench(t,
		benchResult{Case: "dns_qps", Path: "unbound_local_data", Value: unbound, Unit: "queries/s"},
		benchResult{Case: "dns_qps", Path: "ztgate_host_listener", Value: host, Unit: "queries/s", Reference: "unbound_local_data", Ratio: host / unbound},
		benchResult{Case: "dns_qps", Path: "ztgate_netstack", Value: stack, Unit: "queries/s", Reference: "unbound_local_data", Ratio: stack / unbound},
	)
}

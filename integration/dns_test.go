package integration

import (
	"strings"
	"testing"
	"time"
)

const dnsConfig = `
[gateway]
state_dir = "STATE_DIR"
[tun]
pool = "10.100.0.0/24"
[dns]
zone = "ztna.internal"
listen = ["0.0.0.0:5353"]
ttl = "30s"
[api]
listen = "127.0.0.1:7780"
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
[[tenant]]
name = "globex"
sources = ["203.0.113.0/24"]
[[service]]
name = "web"
tenants = ["acme"]
vip = "10.100.0.10"
backends = ["192.0.2.10"]
  [[service.port]]
  name = "http"
  protocol = "tcp"
  port = 80
  target = 8080
  [service.health]
  type = "none"
[[service]]
name = "echo"
tenants = ["*"]
vip = "10.100.0.20"
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "udp"
  port = 7
`

// dig runs dig in ns and returns its output.
func (l *lanTopo) dig(ns string, args ...string) string {
	l.t.Helper()
	out, err := l.try(ns, 15*time.Second, append([]string{"dig", "+time=2", "+tries=1"}, args...)...)
	if err != nil {
		l.t.Fatalf("dig %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// checkNegative checks dig's output of a negative answer (NXDOMAIN or
// NODATA): an empty answer section and the zone's SOA in the authority
// section.
func checkNegative(t *testing.T, out string) {
	t.Helper()
	if !strings.Contains(out, " ANSWER: 0,") || strings.Contains(out, ";; ANSWER SECTION:") {
		t.Fatalf("negative answer with records in the answer section:\n%s", out)
	}
	_, auth, ok := strings.Cut(out, ";; AUTHORITY SECTION:\n")
	if !ok {
		t.Fatalf("negative answer without an authority section:\n%s", out)
	}
	auth, _, _ = strings.Cut(auth, "\n\n")
	for line := range strings.Lines(auth) {
		if f := strings.Fields(line); len(f) >= 5 && f[0] == "ztna.internal." && f[3] == "SOA" {
			return
		}
	}
	t.Fatalf("negative answer without the zone's SOA in the authority section:\n%s", out)
}

// TestDNS drives the built-in DNS with dig as a LAN client would, inside
// the netstack at 10.100.0.1 and on a host listener.
func TestDNS(t *testing.T) {
	needTools(t, "dig", "curl", "socat")
	l := newLANTopo(t)
	l.startBackend("192.0.2.10")
	l.startGateway(dnsConfig)

	short := func(ns string, args ...string) string {
		return strings.TrimSpace(l.dig(ns, append([]string{"+short"}, args...)...))
	}
	status := func(out string) string {
		i := strings.Index(out, "status: ")
		if i < 0 {
			return "?"
		}
		return strings.TrimRight(strings.Fields(out[i+8:])[0], ",")
	}

	cases := []struct {
		name, ns string
		args     []string
		want     string // substring of +short output, or status when wantStatus
		isStatus bool
	}{
		{"A", l.acme, []string{"@10.100.0.1", "web.ztna.internal"}, "10.100.0.10", false},
		{"A mixed case", l.acme, []string{"@10.100.0.1", "WeB.ZtNa.InTeRnAl"}, "10.100.0.10", false},
		{"A over TCP", l.acme, []string{"@10.100.0.1", "+tcp", "web.ztna.internal"}, "10.100.0.10", false},
		{"PTR", l.acme, []string{"@10.100.0.1", "-x", "10.100.0.10"}, "web.ztna.internal.", false},
		{"SRV named port", l.acme, []string{"@10.100.0.1", "SRV", "_http._tcp.web.ztna.internal"}, "0 0 80 web.ztna.internal.", false},
		{"SRV numbered port", l.acme, []string{"@10.100.0.1", "SRV", "_7._udp.echo.ztna.internal"}, "0 0 7 echo.ztna.internal.", false},
		{"SOA", l.acme, []string{"@10.100.0.1", "SOA", "ztna.internal"}, "ns.ztna.internal.", false},
		{"NXDOMAIN", l.acme, []string{"@10.100.0.1", "nope.ztna.internal"}, "NXDOMAIN", true},
		{"NODATA", l.acme, []string{"@10.100.0.1", "AAAA", "web.ztna.internal"}, "NOERROR", true},
		{"view hides other tenant's service", l.globex, []string{"@10.100.0.1", "web.ztna.internal"}, "NXDOMAIN", true},
		{"view shows shared service", l.globex, []string{"@10.100.0.1", "echo.ztna.internal"}, "10.100.0.20", false},
		{"outside the zone without upstreams", l.acme, []string{"@10.100.0.1", "example.com"}, "REFUSED", true},
		{"host listener by source prefix", l.acme, []string{"@198.51.100.1", "-p", "5353", "web.ztna.internal"}, "10.100.0.10", false},
		{"host listener view", l.globex, []string{"@203.0.113.1", "-p", "5353", "web.ztna.internal"}, "NXDOMAIN", true},
		{"loopback operator sees all", l.router, []string{"@127.0.0.1", "-p", "5353", "web.ztna.internal"}, "10.100.0.10", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.isStatus {
				out := l.dig(tc.ns, tc.args...)
				if got := status(out); got != tc.want {
					t.Fatalf("status %s, want %s\n%s", got, tc.want, out)
				}
				if tc.want == "NXDOMAIN" || tc.name == "NODATA" {
					checkNegative(t, out)
				}
				return
			}
			if got := short(tc.ns, tc.args...); !strings.Contains(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}

	t.Run("aa flag and TTL", func(t *testing.T) {
		out := l.dig(l.acme, "@10.100.0.1", "web.ztna.internal")
		if !strings.Contains(out, " aa") || !strings.Contains(out, "30\tIN\tA\t10.100.0.10") {
			t.Fatalf("want aa and TTL 30:\n%s", out)
		}
	})

	t.Run("garbage then a good query", func(t *testing.T) {
		l.try(l.acme, 5*time.Second, "sh", "-c", "head -c 300 /dev/urandom | socat -t 1 - UDP:10.100.0.1:53")
		l.try(l.acme, 5*time.Second, "sh", "-c", "head -c 300 /dev/urandom | socat -t 1 - TCP:10.100.0.1:53")
		if got := short(l.acme, "@10.100.0.1", "web.ztna.internal"); got != "10.100.0.10" {
			t.Fatalf("after garbage: %q", got)
		}
	})

	t.Run("curl by name", func(t *testing.T) {
		addr := short(l.acme, "@10.100.0.1", "web.ztna.internal")
		out, err := l.curl(l.acme, "--resolve", "web.ztna.internal:80:"+addr, "http://web.ztna.internal/hello")
		if err != nil || !strings.Contains(out, "/hello") {
			t.Fatalf("curl: %v %q", err, out)
		}
	})
}

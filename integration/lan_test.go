package integration

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// lanTopo is a Linux router namespace running the gateway, two LAN client
// namespaces in the prefixes of two tenants, and a backend namespace:
//
//	acme 198.51.100.10 ─┐
//	                    ├─ router (ztgate, TUN, 10.100.0.0/24) ── backends 192.0.2.10, .11
//	globex 203.0.113.10 ┘
type lanTopo struct {
	*topo
	router, acme, globex, backends string
	ztgate, backendBin             string
	dir                            string
}

func newLANTopo(t *testing.T) *lanTopo {
	dir := t.TempDir() // first, so that it is removed after the topology's processes are stopped
	tp := newTopo(t)
	l := &lanTopo{topo: tp, dir: dir}
	l.ztgate, l.backendBin = binaries(t)
	l.router = tp.ns("rt")
	l.acme = tp.ns("acme")
	l.globex = tp.ns("glx")
	l.backends = tp.ns("be")
	tp.link(l.router, "198.51.100.1/24", l.acme, "198.51.100.10/24")
	tp.link(l.router, "203.0.113.1/24", l.globex, "203.0.113.10/24")
	tp.link(l.router, "192.0.2.1/24", l.backends, "192.0.2.10/24")
	be := tp.exec(l.backends, "sh", "-c", "ip -o link show | awk -F': ' '/@/{print $2}' | cut -d@ -f1")
	tp.exec(l.backends, "ip", "addr", "add", "192.0.2.11/24", "dev", strings.TrimSpace(be))
	// The clients reach the VIP pool only through the router, whose route
	// for the pool leads into the gateway's TUN device.
	tp.exec(l.acme, "ip", "route", "add", "10.100.0.0/24", "via", "198.51.100.1")
	tp.exec(l.globex, "ip", "route", "add", "10.100.0.0/24", "via", "203.0.113.1")
	tp.exec(l.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return l
}

// startBackend runs the test backend on addr (HTTP on 8080, UDP and TCP
// echo on 7).
func (l *lanTopo) startBackend(addr string, extra ...string) *proc {
	args := []string{l.backendBin, "-name", addr, "-http", addr + ":8080", "-udp", addr + ":7", "-tcp", addr + ":7"}
	p := l.start(l.backends, "backend "+addr, append(args, extra...)...)
	p.waitOutput(l.t, "ready", 10*time.Second)
	return p
}

// startGateway writes the config and runs `ztgate gateway` in the router
// namespace until its TUN device is up.
func (l *lanTopo) startGateway(config string) *proc {
	l.t.Helper()
	path := filepath.Join(l.dir, "gateway.toml")
	config = strings.ReplaceAll(config, "STATE_DIR", filepath.Join(l.dir, "state"))
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		l.t.Fatal(err)
	}
	p := l.start(l.router, "ztgate gateway", append(gatewayEnv(), l.ztgate, "gateway", "-config", path, "-log-format", "text")...)
	p.waitOutput(l.t, "gateway started", 15*time.Second)
	return p
}

// curl runs curl in a client namespace and returns stdout and its error.
func (l *lanTopo) curl(ns string, args ...string) (string, error) {
	return l.curlWithin(ns, 30*time.Second, args...)
}

// curlWithin is curl with d for --max-time.
func (l *lanTopo) curlWithin(ns string, d time.Duration, args ...string) (string, error) {
	out, _, err := l.tryOut(ns, d+30*time.Second, append([]string{"curl", "-sS", "--max-time", strconv.Itoa(int(d.Seconds()))}, args...)...)
	return out, err
}

const lanConfig = `
[gateway]
name = "it-gw"
state_dir = "STATE_DIR"

[tun]
name = "ztgate0"
mtu = 1420
pool = "10.100.0.0/24"

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
  [[service.port]]
  protocol = "tcp"
  port = 7
`

// downloadBig fetches the backend's 16 MiB /big from base in ns and checks
// it against /big.sha256.
func (l *lanTopo) downloadBig(t *testing.T, ns, base string) {
	t.Helper()
	want, err := l.curl(ns, base+"/big.sha256")
	if err != nil {
		t.Fatalf("fetch checksum: %v", err)
	}
	got, err := l.curl(ns, "-o", "/dev/stdout", base+"/big")
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	if len(got) != 16<<20 {
		t.Fatalf("downloaded %d bytes, want %d", len(got), 16<<20)
	}
	if sum := sha256Hex([]byte(got)); sum != strings.TrimSpace(want) {
		t.Fatalf("checksum %s, want %s", sum, want)
	}
}

// uploadBig sends 16 MiB of random bytes to the backend's /digest through
// base from ns and checks the digest it answers: a client's TCP sends reach
// a TUN device as super-packets, which a gateway takes whole and an agent
// sends on cut into datagram-sized packets.
func (l *lanTopo) uploadBig(t *testing.T, ns, base string) {
	l.upload(t, ns, base, 16<<20, 30*time.Second)
}

// upload sends size random bytes to the backend's /digest through base
// from ns within d and checks the digest the backend computed.
func (l *lanTopo) upload(t *testing.T, ns, base string, size int, d time.Duration) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	file := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := l.curlWithin(ns, d, "--data-binary", "@"+file, "-H", "Content-Type: application/octet-stream", base+"/digest")
	if err != nil {
		t.Fatalf("upload of %d KiB: %v", size>>10, err)
	}
	if want := sha256Hex(data); strings.TrimSpace(got) != want {
		t.Fatalf("the backend got digest %q, want %s", got, want)
	}
}

// udpGSOEcho sends 20 datagrams of 1,000 bytes to addr from ns in one
// UDP_SEGMENT send (one super-packet at the TUN) and checks each comes
// back from the echo service intact.
func (l *lanTopo) udpGSOEcho(t *testing.T, ns, addr string) {
	t.Helper()
	var r struct{ Sent, Echoed, Intact int }
	l.clientJSON(t, ns, &r, "-udpgso", addr, "-n", "20", "-dgram", "1000")
	if r.Echoed != r.Sent || r.Intact != r.Sent {
		t.Fatalf("sent %d datagrams in one GSO send: %d echoed, %d of them intact", r.Sent, r.Echoed, r.Intact)
	}
}

// TestLANDataPath is the first-run experience of issue 2: LAN clients of
// two tenants, routed through the router namespace into the gateway.
func TestLANDataPath(t *testing.T) {
	needTools(t, "curl", "socat", "ping")
	l := newLANTopo(t)
	l.startBackend("192.0.2.10")
	gw := l.startGateway(lanConfig)

	t.Run("TUN queue length", func(t *testing.T) {
		if q := strings.TrimSpace(l.exec(l.router, "cat", "/sys/class/net/ztgate0/tx_queue_len")); q != "2000" {
			t.Errorf("ztgate0 queue length %s, want 2000", q)
		}
	})

	t.Run("16 MiB download intact", func(t *testing.T) { l.downloadBig(t, l.acme, "http://10.100.0.10") })
	t.Run("16 MiB upload intact", func(t *testing.T) { l.uploadBig(t, l.acme, "http://10.100.0.10") })
	t.Run("UDP GSO send echoed intact", func(t *testing.T) { l.udpGSOEcho(t, l.acme, "10.100.0.20:7") })

	t.Run("50 parallel fetches", func(t *testing.T) {
		args := []string{"--parallel", "--parallel-max", "50", "-w", "%{http_code}\n", "-o", "/dev/null"}
		for i := range 50 {
			args = append(args, fmt.Sprintf("http://10.100.0.10/p%d", i))
		}
		out, err := l.curl(l.acme, args...)
		if err != nil {
			t.Fatalf("parallel fetch: %v\n%s", err, out)
		}
		if n := strings.Count(out, "200"); n != 50 {
			t.Fatalf("%d of 50 fetches returned 200:\n%s", n, out)
		}
	})

	t.Run("UDP echo from both tenants", func(t *testing.T) {
		for _, ns := range []string{l.acme, l.globex} {
			out, err := l.try(ns, 10*time.Second, "sh", "-c", "echo hello-udp | socat -t 2 - UDP:10.100.0.20:7")
			if err != nil || strings.TrimSpace(out) != "hello-udp" {
				t.Fatalf("%s: udp echo: %q %v", ns, out, err)
			}
		}
	})

	t.Run("ping the VIP", func(t *testing.T) {
		out, err := l.try(l.acme, 10*time.Second, "ping", "-c", "2", "-W", "2", "10.100.0.20")
		if err != nil {
			t.Fatalf("ping: %v\n%s", err, out)
		}
	})

	t.Run("refusals are fast", func(t *testing.T) {
		cases := []struct{ name, ns, url string }{
			{"other tenant", l.globex, "http://10.100.0.10/"},
			{"unmapped port", l.acme, "http://10.100.0.10:81/"},
			{"VIP without service", l.acme, "http://10.100.0.99/"},
		}
		for _, tc := range cases {
			start := time.Now()
			_, err := l.curl(tc.ns, "--max-time", "5", tc.url)
			d := time.Since(start)
			if err == nil {
				t.Errorf("%s: request succeeded", tc.name)
				continue
			}
			if d > time.Second {
				t.Errorf("%s: refused after %v, want well under 2s", tc.name, d)
			}
		}
		out, err := l.try(l.globex, 10*time.Second, "sh", "-c", "echo x | socat -t 2 - UDP:10.100.0.10:80")
		if err == nil || !strings.Contains(out, "refused") {
			t.Errorf("refused UDP flow: %q %v, want connection refused", out, err)
		}
	})

	// The backend closes each connection first (HTTP/1.0 and a body of
	// unknown length: curl reads to the end), so the gateway's side of the
	// client's waits in TIME-WAIT and the client's own is closed; a new
	// flow from the same port is a new connection at once (Linux's rule),
	// not a SYN dropped until the TIME-WAIT ends (some 7 s with the
	// client's backoff).
	t.Run("a new flow from the port of one just closed", func(t *testing.T) {
		before := l.gatewayMetric(t, "ztgate_netstack_tcp_time_wait_reused_total")
		for i := range 3 {
			start := time.Now()
			out, err := l.curlWithin(l.acme, 4*time.Second, "--http1.0", "--local-port", "40321",
				"-w", "%{http_code}", "-o", "/dev/null", "http://10.100.0.10/bytes?n=65536")
			if took := time.Since(start); err != nil || out != "200" || took > 2*time.Second {
				t.Fatalf("fetch %d from port 40321: %q %v after %v, want 200 at once", i, out, err, took)
			}
		}
		if n := l.gatewayMetric(t, "ztgate_netstack_tcp_time_wait_reused_total") - before; n < 2 {
			t.Fatalf("ztgate_netstack_tcp_time_wait_reused_total grew by %v, want at least 2", n)
		}
	})

	// The client's firewall drops the first two SYN-ACKs that reach it:
	// the gateway's first one, then the first of its two answers after a
	// second (the one to the client's SYN sent again, the one its timer
	// sends again). With both it connects after about a second; with the
	// timer's alone, as gVisor answers a SYN sent again with a bare ACK,
	// after three.
	t.Run("a lost SYN-ACK and its first retransmission", func(t *testing.T) {
		l.exec(l.acme, "nft", "add", "table", "inet", "ztsynack")
		defer l.exec(l.acme, "nft", "delete", "table", "inet", "ztsynack")
		l.exec(l.acme, "nft", "add", "chain", "inet", "ztsynack", "c", "{ type filter hook input priority 0 ; }")
		l.exec(l.acme, "nft", "add", "rule", "inet", "ztsynack", "c", "tcp", "sport", "80", "tcp", "flags", "&", "(syn|ack)", "==", "syn|ack",
			"numgen", "inc", "mod", "3", "<", "2", "drop")
		before := l.gatewayMetric(t, "ztgate_netstack_tcp_syn_again_answered_total")
		out, err := l.curlWithin(l.acme, 10*time.Second, "-w", "%{time_connect}", "-o", "/dev/null", "http://10.100.0.10/")
		connect, _ := strconv.ParseFloat(out, 64)
		if err != nil || connect < 0.9 || connect > 2 {
			t.Fatalf("connected after %q s (%v), want about 1 s: two SYN-ACKs lost, the third at once", out, err)
		}
		if n := l.gatewayMetric(t, "ztgate_netstack_tcp_syn_again_answered_total") - before; n != 1 {
			t.Fatalf("ztgate_netstack_tcp_syn_again_answered_total grew by %v, want 1", n)
		}
	})

	t.Run("metrics and API", func(t *testing.T) {
		out, err := l.curl(l.router, "http://127.0.0.1:7780/v1/services")
		if err != nil || !strings.Contains(out, `"vip": "10.100.0.10"`) {
			t.Fatalf("services: %v\n%s", err, out)
		}
		out, err = l.try(l.router, 10*time.Second, l.ztgate, "status")
		if err != nil || !strings.Contains(out, "web") || !strings.Contains(out, "10.100.0.10") || !strings.Contains(out, "tcp/80→8080") {
			t.Fatalf("ztgate status: %v\n%s", err, out)
		}
		out, err = l.curl(l.router, "http://127.0.0.1:7780/metrics")
		if err != nil || !strings.Contains(out, `ztgate_flows_total{protocol="tcp",service="web",tenant="acme"}`) {
			t.Fatalf("metrics: %v\n%s", err, out)
		}
		// The uploads, downloads and GSO sends above came through the
		// TUN's reader: none of its reads may have been refused.
		if n := l.gatewayMetric(t, "ztgate_tun_read_errors_total"); n != 0 {
			t.Fatalf("%v TUN reads refused", n)
		}
	})

	t.Run("SIGTERM exits cleanly and removes the TUN", func(t *testing.T) {
		took, err := gw.stop(6 * time.Second)
		if err != nil {
			t.Fatalf("gateway exit: %v\n%s", err, gw.out.String())
		}
		if took > 5*time.Second {
			t.Fatalf("shutdown took %v", took)
		}
		if out, err := l.try(l.router, 5*time.Second, "ip", "link", "show", "ztgate0"); err == nil {
			t.Fatalf("TUN device still present:\n%s", out)
		}
		if out := l.exec(l.router, "ip", "route", "show", "10.100.0.0/24"); strings.TrimSpace(out) != "" {
			t.Fatalf("route still present: %s", out)
		}
	})
}

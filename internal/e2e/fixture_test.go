package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/agent"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/gateway"
	"github.com/ztgate/ztgate/netstack/netstacktest"
	"github.com/ztgate/ztgate/relay"
	"github.com/ztgate/ztgate/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	// waitLimit bounds every wait: generous, so that a slow shared machine
	// only makes the test slower, never wrong.
	waitLimit  = 60 * time.Second
	serverName = "relay.test"
	zone       = "ztna.internal."
	// clientMTU is the MTU of the agents' client stacks and of their [tun]:
	// below what any QUIC path carries with the tunnel's framing, so the
	// agents never lower it and no packet of the client is too large.
	clientMTU = 1000
)

// innerAddr is the inner address of every agent: the acme agents share it.
var innerAddr = netip.MustParseAddr("100.64.0.1")

// pki is a throwaway CA whose files live in a temporary directory.
type pki struct {
	t      *testing.T
	dir    string
	ca     *tunnel.CA
	caFile string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := tunnel.NewCA("e2e test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{t: t, dir: t.TempDir(), ca: ca}
	p.caFile = p.write("ca.crt", ca.CertPEM())
	return p
}

func (p *pki) write(name string, data []byte) string {
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// issue writes a certificate and key for req and returns the TOML lines
// that name them and the CA.
func (p *pki) issue(req tunnel.IssueRequest) string {
	crt, key, err := p.ca.Issue(req)
	if err != nil {
		p.t.Fatal(err)
	}
	base := req.Tenant + "-" + string(req.Role) + "-" + req.Name
	return fmt.Sprintf("cert = %q\nkey = %q\nca = %q\n",
		p.write(base+".crt", crt), p.write(base+".key", key), p.caFile)
}

// startRelay starts a relay on an ephemeral loopback port, with its API on
// loopback; it is closed when the test ends.
func startRelay(t *testing.T, p *pki) *relay.Relay {
	t.Helper()
	creds := p.issue(tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleRelay, Name: "relay1",
		DNSNames: []string{serverName}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	cfg, err := conf.ParseRelay("relay.toml", []byte(fmt.Sprintf(`
[relay]
name = "relay1"
listen = "127.0.0.1:0"
state_dir = %q
pool = "10.100.0.0/24"
zone = %q
ttl = "30s"
%s
[api]
listen = "127.0.0.1:0"
`, t.TempDir(), zone, creds)))
	if err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(cfg, relay.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// nopPinger stands in for ICMP sockets: the test's services have no ICMP
// health check.
type nopPinger struct{}

func (nopPinger) Ping(context.Context, netip.Addr, []byte) error { return nil }
func (nopPinger) Close() error                                   { return nil }

// startGateway starts a gateway attached to the relay at relayAddr,
// publishing web (tcp 80 and udp 7 → backendPort on loopback) to acme,
// with no LAN ingress and no VIP of its own: the relay assigns it.
func startGateway(t *testing.T, p *pki, relayAddr string, backendPort int) *gateway.Gateway {
	t.Helper()
	creds := p.issue(tunnel.IssueRequest{Tenant: "ops", Role: tunnel.RoleGateway, Name: "gw1"})
	cfg, err := conf.ParseGateway("gateway.toml", []byte(fmt.Sprintf(`
[gateway]
name = "gw1"
state_dir = %q
[api]
listen = "off"
[tunnel]
relay = %q
server_name = %q
%s
[[service]]
name = "web"
tenants = ["acme"]
backends = ["127.0.0.1"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = %d
  [[service.port]]
  protocol = "udp"
  port = 7
  target = %d
  [service.health]
  type = "none"
`, t.TempDir(), relayAddr, serverName, creds, backendPort, backendPort)))
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(cfg, gateway.Options{Pinger: nopPinger{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	return gw
}

// testAgent is an agent whose TUN is a client stack the test drives.
type testAgent struct {
	name   string
	a      *agent.Agent
	client *netstacktest.Client
	reg    *prometheus.Registry
	once   sync.Once
}

// startAgent starts an agent of tenant with the inner address innerAddr,
// connecting to server; it is closed when the test ends, if not before.
func startAgent(t *testing.T, p *pki, tenant, name, server string) *testAgent {
	t.Helper()
	creds := p.issue(tunnel.IssueRequest{Tenant: tenant, Role: tunnel.RoleAgent, Name: name})
	cfg, err := conf.ParseAgent(name+".toml", []byte(fmt.Sprintf(`
[agent]
name = %q
[tunnel]
server = %q
server_name = %q
%s
[tun]
address = %q
mtu = %d
[api]
listen = "off"
`, name, server, serverName, creds, innerAddr, clientMTU)))
	if err != nil {
		t.Fatal(err)
	}
	client, err := netstacktest.NewClient(clientMTU, innerAddr)
	if err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{name: name, client: client, reg: prometheus.NewRegistry()}
	ta.a, err = agent.New(cfg, agent.Options{Device: client, Registry: ta.reg}, nil)
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	if err := ta.a.Start(); err != nil {
		t.Fatal(err) // Start closed the agent and its device
	}
	t.Cleanup(ta.close)
	return ta
}

// close stops the agent, which closes its client stack.
func (ta *testAgent) close() { ta.once.Do(func() { ta.a.Close() }) }

// resolver asks the agent's DNS at the gateway address through the client
// stack, as a program behind the agent's TUN would.
func (ta *testAgent) resolver(gatewayAddr netip.Addr) *net.Resolver {
	dns := netip.AddrPortFrom(gatewayAddr, 53)
	return &net.Resolver{
		PreferGo:     true,
		StrictErrors: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			if network == "tcp" || network == "tcp4" {
				return ta.client.DialTCP(ctx, innerAddr, dns)
			}
			return ta.client.DialUDP(innerAddr, dns)
		},
	}
}

// payload is what the backend sends for a request naming name: a stream
// of pseudo-random bytes seeded by the name.
func payload(name string, size int) []byte {
	b := make([]byte, size)
	rand.NewChaCha8(sha256.Sum256([]byte(name))).Read(b)
	return b
}

// startBackend serves, on a loopback TCP port, payload(line, size) for a
// request line, then closes the connection. It returns the port.
func startBackend(t *testing.T, size int) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(waitLimit))
				line, err := bufio.NewReader(io.LimitReader(c, 128)).ReadString('\n')
				if err != nil {
					return
				}
				c.Write(payload(line[:len(line)-1], size))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// serviceVIP waits until the relay lists service with a VIP and returns
// it, read from the relay's API.
func serviceVIP(t *testing.T, r *relay.Relay, service string) netip.Addr {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	var vip netip.Addr
	waitFor(t, "the relay to assign "+service+" a VIP", func() bool {
		resp, err := hc.Get("http://" + r.APIAddr() + "/v1/services")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var body struct {
			Services []struct {
				Name string `json:"name"`
				VIP  string `json:"vip"`
			} `json:"services"`
		}
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil {
			return false
		}
		for _, s := range body.Services {
			if a, err := netip.ParseAddr(s.VIP); s.Name == service && err == nil {
				vip = a
				return true
			}
		}
		return false
	})
	return vip
}

// waitFor polls cond until it holds, failing the test after waitLimit.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric sums the values of every series of a gauge or counter family.
func metric(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return sum
}

// waitMetric waits until a metric sums to want.
func waitMetric(t *testing.T, g prometheus.Gatherer, name string, want float64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s = %v", name, want), func() bool { return metric(t, g, name) == want })
}

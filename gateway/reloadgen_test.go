package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// reloadingClock is a clock that, once armed, runs fire on the next
// reading: the moment a new flow's classification charges the source's
// rate, after it loaded the table and before it looked the VIP up.
type reloadingClock struct {
	armed atomic.Bool
	fire  func()
}

func (c *reloadingClock) now() time.Time {
	if c.armed.CompareAndSwap(true, false) {
		c.fire()
	}
	return time.Now()
}

// TestFlowDecidedByOneGeneration: a reload swaps the table while a new
// flow is being classified against the one before. Before, web was for
// acme only, to 127.0.0.1 on port a; after, for globex only, to 127.0.0.2
// on port b. The flow must be decided by one of the two: refused, as
// after, or sent to 127.0.0.1:a, as before. The reload had already given
// the service's state the new backends when the flow picked one, and the
// flow went to 127.0.0.2 on port a, which no configuration names (there,
// another service's backend), and acme's ping to 127.0.0.2.
func TestFlowDecidedByOneGeneration(t *testing.T) {
	echoes := startTaggedEchoes(t)
	tcpA := startLineEchoPair(t, "127.0.0.1", "a", "127.0.0.2", "wrong") // a on .1, and the mixed target on .2
	tcpB := startLineEchoAt(t, "127.0.0.2", "b")
	vip := netip.MustParseAddr("10.100.0.50")
	config := func(proto, tenant, backend string, target int) string {
		return fmt.Sprintf(`
[gateway]
state_dir = "STATE"
[api]
listen = "off"
`+twoTenants+`
[[service]]
name = "web"
tenants = [%q]
vip = %q
backends = [%q]
icmp = true
  [[service.port]]
  protocol = %q
  port = 7
  target = %d
  [service.health]
  type = "none"
`, tenant, vip, backend, proto, target)
	}
	cases := []struct {
		proto        string
		portA, portB int
	}{
		{"udp", int(echoes.ports[0]), int(echoes.ports[1])},
		{"tcp", tcpA, tcpB},
		{"icmp", int(echoes.ports[0]), int(echoes.ports[1])},
	}
	for _, tc := range cases {
		t.Run(tc.proto, func(t *testing.T) {
			proto := tc.proto
			if proto == "icmp" {
				proto = "udp"
			}
			before := config(proto, "acme", "127.0.0.1", tc.portA)
			after := config(proto, "globex", "127.0.0.2", tc.portB)
			var (
				h         *fileHarness
				reloadErr atomic.Pointer[error]
			)
			clock := &reloadingClock{fire: func() {
				// Written here, not before: the file watcher would apply it.
				err := os.WriteFile(h.path, []byte(after), 0o644)
				if err == nil {
					_, err = h.gw.Reload()
				}
				reloadErr.Store(&err)
			}}
			pinger := &recordingPinger{}
			h = newFileHarness(t, before, func(o *Options) { o.Now = clock.now; o.Pinger = pinger })
			after = strings.ReplaceAll(after, "STATE", filepath.Join(h.dir, "state"))
			clock.armed.Store(true)

			var outcome string // "refused", or the backend that answered
			switch tc.proto {
			case "udp":
				c, err := h.client.DialUDPFrom(netip.AddrPortFrom(acmeClient, 4100), netip.AddrPortFrom(vip, 7))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.Write([]byte("x"))
				res, ok := readAnswer(c, time.Now().Add(5*time.Second))
				switch {
				case !ok:
					t.Fatal("neither an answer nor a refusal")
				case res.refused:
					outcome = "refused"
				case len(res.data) < randTagLen:
					t.Fatalf("answer %q", res.data)
				default:
					outcome = echoes.target(res.data[1]).String()
				}
			case "tcp":
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, err := h.client.DialTCP(ctx, acmeClient, netip.AddrPortFrom(vip, 7))
				if err != nil {
					outcome = "refused"
					break
				}
				defer c.Close()
				l := &lineConn{c: c, r: bufio.NewReader(c)}
				outcome = l.roundTrip(t, "x")
			case "icmp":
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_, err := h.client.Ping(ctx, h.gw.lan, acmeClient, vip, 7, 1, []byte("x"))
				var unreach *netstacktest.UnreachableError
				switch {
				case errors.As(err, &unreach):
					outcome = "refused"
				case err != nil:
					t.Fatal(err)
				default:
					outcome = fmt.Sprint(pinger.sent())
				}
			}
			if p := reloadErr.Load(); p == nil || *p != nil {
				t.Fatalf("the reload during the classification: %v", p)
			}
			want := map[string]string{
				"udp":  netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), echoes.ports[0]).String(),
				"tcp":  "a: x",
				"icmp": "[127.0.0.1]",
			}[tc.proto]
			if outcome != "refused" && outcome != want {
				t.Fatalf("acme's new flow, classified as the reload swapped the table: %s; want refused (as after) or %s (as before)", outcome, want)
			}
		})
	}
}

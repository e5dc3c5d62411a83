package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// TestEchoLimitReason: a ping refused because every echo token is taken
// is counted as echo_limit, not as flow_limit ([limits] max_flows).
func TestEchoLimitReason(t *testing.T) {
	gw := startEchoGateway(t)
	for range cap(gw.echoTokens) { // every echo request slot in use
		gw.echoTokens <- struct{}{}
	}
	defer func() {
		for range cap(gw.echoTokens) {
			<-gw.echoTokens
		}
	}()
	pkt := netstacktest.EchoRequest(netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("10.100.0.10"), 1, 1, make([]byte, 56))
	gw.lan.Deliver(pkt)
	echoLimit := gw.m.flowsRefused.WithLabelValues("icmp", refuseEchoLimit)
	waitFor(t, 10*time.Second, "the ping to be refused as echo_limit", func() bool { return testutil.ToFloat64(echoLimit) == 1 })
	if n := testutil.ToFloat64(gw.m.flowsRefused.WithLabelValues("icmp", refuseLimit)); n != 0 {
		t.Errorf("flow_limit counted %v refused pings, want 0", n)
	}
}

// startEchoGateway starts a gateway on a device that reads nothing, with
// service web (acme only, echo on, backend 127.0.0.1) and a fake pinger.
func startEchoGateway(t *testing.T) *Gateway {
	t.Helper()
	cfg, err := conf.ParseGateway("test.toml", []byte(`
[gateway]
state_dir = "`+t.TempDir()+`"
[api]
listen = "off"
`+twoTenants+`[[service]]
name = "web"
tenants = ["acme"]
vip = "10.100.0.10"
backends = ["127.0.0.1"]
icmp = true
  [[service.port]]
  protocol = "tcp"
  port = 80
  [service.health]
  type = "none"
`))
	if err != nil {
		t.Fatal(err)
	}
	dev := &nullDevice{done: make(chan struct{})}
	gw, err := New(cfg, Options{Device: dev, Pinger: fakePinger{}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	return gw
}

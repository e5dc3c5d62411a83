package agent

import (
	"net/netip"
	"testing"
	"time"
)

// TestStatus follows an agent's Status through its life: connected to the
// relay with the directory's services on the relay's path, one service
// moved to a direct path, then the relay's session gone (disconnected,
// with the reason and the next dial) and back. GET /v1/status serves the
// same as JSON.
func TestStatus(t *testing.T) {
	f := newDirectFixture(t)
	st := f.a.Status()
	if st.Role != "agent" || st.Name != "laptop" || st.Identity != "acme/agent/laptop" || st.Server != f.relay.addr() ||
		st.Address != innerAddr || st.Pool != netip.MustParsePrefix("10.100.0.0/24") || st.MTU < minMTU {
		t.Fatalf("status %+v", st)
	}
	if tu := st.Tunnel; !tu.Connected || tu.Peer != "ops/relay/relay1" || tu.Remote.String() != f.relay.addr() ||
		tu.Version == "" || tu.MaxDatagram == 0 || tu.Since.IsZero() || tu.LastError != "" {
		t.Fatalf("tunnel %+v", tu)
	}
	if len(st.Services) != 2 || st.Services[0].Name != "up" || st.Services[1].Name != "web" {
		t.Fatalf("services %+v, want up and web in order", st.Services)
	}
	web := st.Services[1]
	if web.VIP != webVIP || !web.Healthy || web.Path != "relay" || web.Gateway != "" || len(web.Ports) != 2 ||
		web.Ports[0] != (PortStatus{Protocol: "tcp", Port: 80}) || web.Ports[1] != (PortStatus{Protocol: "udp", Port: 7}) {
		t.Errorf("web %+v", web)
	}
	if len(st.Paths) != 0 {
		t.Errorf("direct paths %+v before any", st.Paths)
	}

	t.Run("a direct path", func(t *testing.T) {
		f.flow("one")
		f.answer("ops/gateway/gw1", f.gw.addr())
		waitFor(t, "the direct path in the status", func() bool { return len(f.a.Status().Paths) == 1 })
		st := f.a.Status()
		p := st.Paths[0]
		if p.Gateway != "ops/gateway/gw1" || p.Remote.String() != f.gw.addr() || p.Via != "direct" || p.Since.IsZero() ||
			len(p.Services) != 1 || p.Services[0] != "web" {
			t.Errorf("path %+v", p)
		}
		if web := st.Services[1]; web.Path != "direct" || web.Gateway != "ops/gateway/gw1" || web.DirectFailure != "" {
			t.Errorf("web %+v, want direct to gw1", web)
		}
		if up := st.Services[0]; up.Path != "relay" {
			t.Errorf("up %+v, want the relay", up)
		}
	})

	t.Run("disconnected, then back", func(t *testing.T) {
		f.relay.session().Close("test: relay gone")
		waitFor(t, "the status to show the lost session", func() bool { return !f.a.Status().Tunnel.Connected })
		tu := f.a.Status().Tunnel
		if tu.LastError == "" || tu.Since.IsZero() || !tu.RetryAt.After(tu.Since) || tu.Peer != "" {
			t.Errorf("tunnel %+v, want the reason and the next dial", tu)
		}
		waitFor(t, "the agent back on the relay", func() bool { return f.a.Status().Tunnel.Connected })
		if tu := f.a.Status().Tunnel; tu.LastError != "" || time.Since(tu.Since) > testTimeout {
			t.Errorf("tunnel %+v after the redial", tu)
		}
	})
}

package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// TestDirectPathDownlinkOnlyNotIdle: a path no service starts flows on
// any more (retired) is closed after pathLinger without a packet, but the
// gateway's packets count as much as the agent's: a flow that only
// receives (a long download after its request, a server's push) keeps
// its path. The manager's clock is the test's: no minute is waited.
func TestDirectPathDownlinkOnlyNotIdle(t *testing.T) {
	f := newDirectFixture(t)
	d := f.manualDirect()
	now := time.Now()
	o, p := webDirectPath(t, f, d, now)
	d.tick(now)
	d.onError(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeDrained, SessionID: o.SessionID}, now)
	if len(p.services) != 0 {
		t.Fatalf("path still serves %v", p.services)
	}

	c := f.flow("one") // a socket for the gateway's packets (its own packet takes the relay)
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	closed := func() bool {
		select {
		case <-p.s.Done():
			return true
		default:
			return false
		}
	}
	const step = 20 * time.Second
	var at time.Time
	for i := 1; i <= 5; i++ {
		down := testutil.ToFloat64(f.a.m.downDirect)
		text := fmt.Sprintf("down-%d", i)
		f.gw.session().SendDatagram(udpReply(netip.AddrPortFrom(webVIP, 7), local, text))
		c.SetReadDeadline(time.Now().Add(testTimeout))
		buf := make([]byte, 64)
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != text {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, text)
		}
		waitFor(t, "the packet counted", func() bool { return testutil.ToFloat64(f.a.m.downDirect) > down })
		at = now.Add(time.Duration(i) * step)
		d.tick(at)
		if closed() {
			t.Fatalf("the path was closed as idle %v after the agent's last packet, while the gateway's packets crossed it", at.Sub(now))
		}
	}
	// Quiet both ways: closed after pathLinger, not before.
	d.tick(at.Add(pathLinger - time.Second))
	if closed() {
		t.Fatal("closed before pathLinger")
	}
	d.tick(at.Add(pathLinger))
	if !closed() {
		t.Fatal("a path quiet both ways for pathLinger was not closed")
	}
}

// TestDirectPathRetiredOnlyByRetireCodes: the relay retires a direct path
// with drained, service_down or not_authorized; another error naming the
// path's session (unknown_session, the answer of a relay restarted since
// to the path's result; peer_gone, expired) leaves the path to new flows.
// Before, any code retired it.
func TestDirectPathRetiredOnlyByRetireCodes(t *testing.T) {
	for _, tc := range []struct {
		code   string
		retire bool
	}{
		{tunnel.CodeDrained, true},
		{tunnel.CodeServiceDown, true},
		{tunnel.CodeNotAuthorized, true},
		{tunnel.CodeUnknownSession, false},
		{tunnel.CodePeerGone, false},
		{tunnel.CodeExpired, false},
		{tunnel.CodeBusy, false},
		{"no_such_code", false},
	} {
		t.Run(tc.code, func(t *testing.T) {
			f := newDirectFixture(t)
			d := f.manualDirect()
			now := time.Now()
			o, p := webDirectPath(t, f, d, now)
			d.onError(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tc.code, SessionID: o.SessionID}, now)
			if retired := len(p.services) == 0; retired != tc.retire {
				t.Fatalf("path retired %v, want %v", retired, tc.retire)
			}
			if routed := d.svcs["web"].phase == phaseDirect; routed == tc.retire {
				t.Fatalf("web's new flows on the direct path: %v, want %v", routed, !tc.retire)
			}
		})
	}
}

// webDirectPath brings up web's direct path to gw1 on the manual manager
// d: the offer, the relay's answer, the dial.
func webDirectPath(t *testing.T, f *directFixture, d *direct, now time.Time) (*tunnel.Offer, *path) {
	t.Helper()
	o := f.offerWeb(d, now)
	d.onAnswer(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: o.SessionID, Service: "web",
		Candidates: []netip.AddrPort{netip.MustParseAddrPort(f.gw.addr())}, Gateway: "ops/gateway/gw1"}, now)
	d.handle(dialOutcome(t, d), now)
	p := d.paths["ops/gateway/gw1"]
	if p == nil || len(p.services) != 1 {
		t.Fatal("no direct path for web")
	}
	return o, p
}

// TestDirectRefusalLoggedOnce: the relay refuses every offer for a service
// whose gateways have no [tunnel] listen (no_gateway), the deployment's
// choice: the agent logs the first refusal at info and the same one again
// at debug; another code, and the first after a path came up, at info.
func TestDirectRefusalLoggedOnce(t *testing.T) {
	f := newDirectFixture(t)
	d := f.manualDirect()
	var logs logBuffer
	d.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	now := time.Now()
	refuse := func(code string) string {
		t.Helper()
		now = now.Add(time.Hour) // past any backoff
		o := f.offerWeb(d, now)
		start := len(logs.String())
		d.onError(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: code, SessionID: o.SessionID}, now)
		line := logs.String()[start:]
		if !strings.Contains(line, "direct path refused") || !strings.Contains(line, "code="+code) {
			t.Fatalf("refusal %s not logged: %q", code, line)
		}
		return line
	}
	for i, tc := range []struct {
		code, level string
	}{
		{tunnel.CodeNoGateway, "INFO"},
		{tunnel.CodeNoGateway, "DEBUG"},
		{tunnel.CodeNoGateway, "DEBUG"},
		{tunnel.CodeBusy, "INFO"},
		{tunnel.CodeNoGateway, "INFO"},
	} {
		if line := refuse(tc.code); !strings.Contains(line, "level="+tc.level) {
			t.Errorf("refusal %d (%s): %q, want level %s", i, tc.code, line, tc.level)
		}
	}
	if got := d.failuresNow()["web"]; got != "refused: "+tunnel.CodeNoGateway {
		t.Errorf("failure for Status %q after the refusals", got)
	}
	o, p := webDirectPath(t, f, d, now.Add(time.Hour))
	if got := d.failuresNow()["web"]; got != "" {
		t.Errorf("failure for Status %q with the path up", got)
	}
	d.onError(&tunnel.ErrorMessage{Type: tunnel.MessageTypeError, Code: tunnel.CodeDrained, SessionID: o.SessionID}, now.Add(time.Hour))
	if len(p.services) != 0 {
		t.Fatal("path not retired")
	}
	now = now.Add(2 * time.Hour)
	if line := refuse(tunnel.CodeNoGateway); !strings.Contains(line, "level=INFO") {
		t.Errorf("first refusal after a path came up: %q, want level INFO", line)
	}
}

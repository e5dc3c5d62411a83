package agent

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/tunnel"
)

// TestCandidateSkip is the rule of the gateway candidates the agent dials:
// loopback only when its relay is on loopback, link-local only when its
// relay is on loopback or link-local, never an address that is not
// unicast or has no port.
func TestCandidateSkip(t *testing.T) {
	tests := []struct {
		cand, relay string // relay "" is no session
		dial        bool
	}{
		{"203.0.113.5:4433", "198.51.100.1", true},
		{"10.0.0.5:4433", "198.51.100.1", true},
		{"[2001:db8::5]:4433", "2001:db8::1", true},
		{"203.0.113.5:4433", "", true},
		{"127.0.0.1:4433", "198.51.100.1", false},
		{"127.0.0.2:4433", "10.0.0.1", false},
		{"[::1]:4433", "2001:db8::1", false},
		{"[::ffff:127.0.0.1]:4433", "198.51.100.1", false},
		{"127.0.0.1:4433", "", false},
		{"127.0.0.1:4433", "127.0.0.1", true},
		{"127.0.0.2:4433", "127.0.0.1", true},
		{"[::1]:4433", "127.0.0.1", true},
		{"127.0.0.1:4433", "::ffff:127.0.0.1", true},
		{"127.0.0.1:4433", "169.254.0.1", false},
		{"169.254.1.1:4433", "198.51.100.1", false},
		{"169.254.1.1:4433", "10.0.0.1", false},
		{"[fe80::1]:4433", "2001:db8::1", false},
		{"169.254.1.1:4433", "169.254.0.1", true},
		{"[fe80::1]:4433", "fe80::2", true},
		{"169.254.1.1:4433", "127.0.0.1", true},
		{"[fe80::1]:4433", "::1", true},
		{"0.0.0.0:4433", "127.0.0.1", false},
		{"[::]:4433", "127.0.0.1", false},
		{"224.0.0.1:4433", "127.0.0.1", false},
		{"[ff02::1]:4433", "127.0.0.1", false},
		{"255.255.255.255:4433", "127.0.0.1", false},
		{"203.0.113.5:0", "198.51.100.1", false},
		{"127.0.0.1:0", "127.0.0.1", false},
	}
	for _, tc := range tests {
		t.Run(tc.cand+" relay "+tc.relay, func(t *testing.T) {
			var relay netip.Addr
			if tc.relay != "" {
				relay = netip.MustParseAddr(tc.relay)
			}
			why := candidateSkip(netip.MustParseAddrPort(tc.cand), relay)
			if (why == "") != tc.dial {
				t.Fatalf("candidateSkip = %q, want dial %v", why, tc.dial)
			}
		})
	}
	if candidateSkip(netip.AddrPort{}, netip.MustParseAddr("127.0.0.1")) == "" {
		t.Error("the zero candidate would be dialled")
	}
}

// TestDirectLoopbackCandidateOfRemoteRelay: a gateway's answer naming a
// loopback address (here the listener of a gateway that would answer with
// the right identity) is not dialled when the agent's relay is not on
// loopback: the attempt fails at once, as one without candidates, and the
// skip is counted. With the relay on loopback, the same answer is dialled.
func TestDirectLoopbackCandidateOfRemoteRelay(t *testing.T) {
	for _, tc := range []struct {
		relay string
		dial  bool
	}{{"198.51.100.1", false}, {"127.0.0.1", true}} {
		t.Run("relay "+tc.relay, func(t *testing.T) {
			f := newDirectFixture(t)
			d := f.manualDirect()
			d.relayAddr = func() netip.Addr { return netip.MustParseAddr(tc.relay) }
			now := time.Now()
			o := f.offerWeb(d, now)
			skipped := testutil.ToFloat64(f.a.m.candidatesSkipped)
			d.onAnswer(&tunnel.Answer{Type: tunnel.MessageAnswer, SessionID: o.SessionID, Service: "web",
				Candidates: []netip.AddrPort{netip.MustParseAddrPort(f.gw.addr())}, Gateway: "ops/gateway/gw1"}, now)
			st := d.svcs["web"]
			if !tc.dial {
				if st.phase != phaseIdle || !st.retryAt.After(now) {
					t.Fatalf("phase %d, retry at %v: the loopback candidate is being dialled", st.phase, st.retryAt)
				}
				if res := next[tunnel.Result](t, f.relay); res.SessionID != o.SessionID || res.Success {
					t.Fatalf("result %+v, want a failure", res)
				}
				if n := testutil.ToFloat64(f.a.m.candidatesSkipped); n != skipped+1 {
					t.Errorf("skipped candidates counted %v, want %v", n, skipped+1)
				}
				time.Sleep(directDialTimeout / 2)
				f.gw.mu.Lock()
				dialled := f.gw.last != nil
				f.gw.mu.Unlock()
				if dialled {
					t.Fatal("the gateway's loopback listener got a session")
				}
				return
			}
			if st.phase != phaseDialing {
				t.Fatalf("phase %d, want dialling", st.phase)
			}
			r := dialOutcome(t, d)
			if r.s == nil || r.addr.String() != f.gw.addr() {
				t.Fatalf("dial %+v", r)
			}
			d.handle(r, now)
			if res := next[tunnel.Result](t, f.relay); !res.Success {
				t.Fatalf("result %+v", res)
			}
		})
	}
}

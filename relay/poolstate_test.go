package relay

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztgate/ztgate/conf"
)

// TestFailedNewFreesStateDir: a New that fails after opening the VIP pool
// (a pin on a VIP held for another service, a certificate that cannot be
// read) closes it, so that a New in the same process finds the state
// directory's lock free once the cause is fixed. Before, it failed with
// "state directory in use".
func TestFailedNewFreesStateDir(t *testing.T) {
	p := newPKI(t)
	for _, tc := range []struct {
		name  string
		spoil func(state string, cfg *conf.Relay)
		want  string
	}{
		{"pin on a held VIP", func(state string, cfg *conf.Relay) {
			// A run with mail pinned to 10.100.0.7 releases it when it
			// ends without it: the VIP is held for mail.
			first := p.relayConfig(state)
			first.Pins = []conf.Pin{{Service: "mail", VIP: netip.MustParseAddr("10.100.0.7")}}
			r, err := New(first, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			r.Close()
			cfg.Pins = []conf.Pin{{Service: "web", VIP: netip.MustParseAddr("10.100.0.7")}}
		}, "10.100.0.7"},
		{"certificate missing", func(_ string, cfg *conf.Relay) { cfg.Cert = cfg.Cert + ".missing" }, ".missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			cfg := p.relayConfig(state)
			tc.spoil(state, cfg)
			if _, err := New(cfg, Options{}, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error saying %q", err, tc.want)
			}
			r, err := New(p.relayConfig(state), Options{}, nil)
			if err != nil {
				t.Fatalf("New once the cause is gone: %v", err)
			}
			r.Close()
		})
	}
}

// TestPoolUsedGaugeLive: ztgate_vip_pool_used counts a released VIP while
// its hold-down lasts and stops when it ends, with no change of the
// registry in between. Before, the gauge was set at changes only and
// counted the hold until the next one.
func TestPoolUsedGaugeLive(t *testing.T) {
	p := newPKI(t)
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	cfg := p.relayConfig(t.TempDir())
	cfg.Pins = []conf.Pin{{Service: "mail", VIP: netip.MustParseAddr("10.100.0.7")}}
	r, err := New(cfg, Options{Now: func() time.Time { return time.Unix(0, now.Load()) }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	used := func() float64 { return testutil.ToFloat64(r.m.poolUsed) }
	if n := used(); n != 1 {
		t.Fatalf("ztgate_vip_pool_used = %v with mail's pin, want 1", n)
	}
	if err := r.pool.Release("mail"); err != nil {
		t.Fatal(err)
	}
	if n := used(); n != 1 {
		t.Fatalf("ztgate_vip_pool_used = %v with mail's VIP held, want 1", n)
	}
	now.Add(int64(cfg.VIPHoldDown + time.Second))
	if n := used(); n != 0 {
		t.Fatalf("ztgate_vip_pool_used = %v after the hold-down, want 0", n)
	}
}

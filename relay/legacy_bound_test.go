package relay

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// TestV1RegistrationsBounded: a ztna-v1 agent whose certificate grants its
// whole tenant (Services nil) must not grow the relay's memory with every
// service name it registers: a service the relay knows is registered,
// made-up names are NACKed and not kept.
func TestV1RegistrationsBounded(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	a := mustDial(t, addr, p.identity("default", tunnel.RoleAgent, "mac"), tunnel.Hello{}, tunnel.ALPNV1)
	if a.s.Version() != tunnel.V1 {
		t.Fatalf("version %v", a.s.Version())
	}
	// A service the relay knows is registered and kept.
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.register(svc("real", "default"))
	if err := a.s.SendDatagram([]byte("\x10\x04real")); err != nil {
		t.Fatal(err)
	}
	if got, want := a.datagram(), []byte("\x12\x00\x04real"); string(got) != string(want) {
		t.Fatalf("registration of a known service: % x, want % x", got, want)
	}
	const n = 200
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("bogus-%04d", i)
		req := append([]byte{0x10, byte(len(name))}, name...)
		if err := a.s.SendDatagram(req); err != nil {
			t.Fatal(err)
		}
		a.datagram() // its answer
	}
	r.mu.RLock()
	kept := 0
	for ag := range r.agents {
		kept += len(ag.registered)
	}
	r.mu.RUnlock()
	if kept != 1 {
		t.Fatalf("the relay keeps %d registrations, want only the known service's (made-up names, up to 255 bytes each, would grow it without bound)", kept)
	}
}

// TestV1RegistrationOtherTenant: a ztna-v1 agent whose certificate grants
// its whole tenant may register the services its tenant reaches, and no
// service that the relay serves to other tenants only: an ACK for those,
// where a name no one serves gets NACK, told the agent which services
// other tenants have, which a ztna-v2 agent's directory never shows.
func TestV1RegistrationOtherTenant(t *testing.T) {
	p := newPKI(t)
	r := startRelay(t, p.relayConfig(t.TempDir()))
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.register(svc("web", "acme"), svc("payroll", "globex"), svc("wiki", "*"))
	a := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "laptop"), tunnel.Hello{}, tunnel.ALPNV1)
	for _, tc := range []struct{ request, answer string }{
		{"\x10\x03web", "\x12\x00\x03web"},
		{"\x10\x04wiki", "\x12\x00\x04wiki"},
		{"\x10\x07payroll", "\x13\x02\x07payroll"},
		{"\x10\x04nope", "\x13\x02\x04nope"},
	} {
		if err := a.s.SendDatagram([]byte(tc.request)); err != nil {
			t.Fatal(err)
		}
		if got := a.datagram(); string(got) != tc.answer {
			t.Errorf("registration % x: answer % x, want % x", tc.request, got, tc.answer)
		}
	}
}

// TestV1RegistrationOfUnservedService: a service no gateway serves whose
// VIP is held after its gateway left is ACKed to a ztna-v1 agent of a
// whole tenant only when that tenant was admitted to it. The relay kept no
// tenants for it and ACKed an agent of any tenant: one of acme learnt that
// globex's payroll existed. The memory is dropped with the VIP's hold.
func TestV1RegistrationOfUnservedService(t *testing.T) {
	p := newPKI(t)
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	cfg := p.relayConfig(t.TempDir())
	r := startRelayWith(t, cfg, Options{Now: func() time.Time { return time.Unix(0, now.Load()).UTC() }})
	addr := r.Addr().String()
	gw := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw1"), gatewayHello("gw1"))
	gw.register(svc("payroll", "globex"), svc("wiki", "*"), svc("web", "acme"))
	// gw2 serves payroll to acme too, and stops first: the tenants are
	// those of the last gateway to serve it.
	gw2 := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw2"), gatewayHello("gw2"))
	gw2.register(svc("payroll", "acme"))
	gw2.register()
	gw.close()
	waitFor(t, "the services unserved", func() bool {
		r.mu.RLock()
		defer r.mu.RUnlock()
		return len(r.services) == 0
	})
	acme := mustDial(t, addr, p.identity("acme", tunnel.RoleAgent, "laptop"), tunnel.Hello{}, tunnel.ALPNV1)
	globex := mustDial(t, addr, p.identity("globex", tunnel.RoleAgent, "laptop"), tunnel.Hello{}, tunnel.ALPNV1)
	check := func(when string, a *client, name string, ack bool) {
		t.Helper()
		req := append([]byte{0x10, byte(len(name))}, name...)
		want := append([]byte{0x12, 0x00, byte(len(name))}, name...)
		if !ack {
			want = append([]byte{0x13, 0x02, byte(len(name))}, name...)
		}
		if err := a.s.SendDatagram(req); err != nil {
			t.Fatal(err)
		}
		if got := a.datagram(); string(got) != string(want) {
			t.Errorf("%s: registration of %s: % x, want % x", when, name, got, want)
		}
	}
	check("held", acme, "payroll", false) // globex's
	check("held", globex, "payroll", true)
	check("held", acme, "wiki", true) // every tenant's
	check("held", acme, "web", true)
	check("held", globex, "web", false)

	r.sweepAdmitted() // within the hold-down: kept
	now.Add(int64(cfg.VIPHoldDown + time.Second))
	check("hold-down passed", globex, "payroll", false)
	r.sweepAdmitted()
	r.mu.RLock()
	left := len(r.lastAdmitted)
	r.mu.RUnlock()
	if left != 0 {
		t.Errorf("the tenants of %d services with no VIP any more kept", left)
	}

	// Served again to acme: acme's now, and so when held again.
	gw3 := mustDial(t, addr, p.identity("ops", tunnel.RoleGateway, "gw3"), gatewayHello("gw3"))
	gw3.register(svc("payroll", "acme"))
	gw3.register()
	check("held again", acme, "payroll", true)
	check("held again", globex, "payroll", false)
}

package relay

import (
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// sigFixture is a state machine with two agents and two gateways; agent a
// offers (id 7) and the relay binds the session to gateway g.
type sigFixture struct {
	sg         *signaling
	a, other   *agent
	g, otherGW *gateway
	now        time.Time
	nextLeg    uint64
}

func newSigFixture() *sigFixture {
	f := &sigFixture{
		a: &agent{}, other: &agent{}, g: &gateway{name: "g"}, otherGW: &gateway{name: "g2"},
		now: time.Unix(1000, 0),
	}
	f.sg = newSignaling()
	f.sg.newID = func() uint64 { f.nextLeg++; return 100 + f.nextLeg }
	return f
}

// offer makes agent a offer id, bound to gateway g.
func (f *sigFixture) offer(t *testing.T, id uint64) *sigSession {
	t.Helper()
	s, reason := f.sg.offer(party{a: f.a}, id, []*gateway{f.g}, "web", f.now)
	if s == nil {
		t.Fatalf("offer %d rejected: %s", id, reason)
	}
	return s
}

// TestSignalingSenders sends every message of the direct path from every
// party, in every phase of a session, and checks who is heard: answers
// only from the bound gateway, results only from the bound agent, errors
// only from those two; a third party neither completes nor deletes.
func TestSignalingSenders(t *testing.T) {
	type msg uint8
	const (
		answer msg = iota
		result
		abort
	)
	names := [...]string{"answer", "result", "error"}
	const (
		offered  = "offered"
		answered = "answered"
	)
	tests := []struct {
		phase  string
		msg    msg
		sender string // agent, gateway, other agent, other gateway
		reason string // "" = accepted
	}{
		{offered, answer, "gateway", ""},
		{offered, answer, "agent", sigWrongRole},
		{offered, answer, "other agent", sigWrongRole},
		{offered, answer, "other gateway", sigNotOwner},
		{offered, result, "agent", sigWrongState},
		{offered, result, "gateway", sigWrongRole},
		{offered, result, "other agent", sigNotOwner},
		{offered, result, "other gateway", sigWrongRole},
		{offered, abort, "agent", ""},
		{offered, abort, "gateway", ""},
		{offered, abort, "other agent", sigNotOwner},
		{offered, abort, "other gateway", sigNotOwner},
		{answered, answer, "gateway", sigWrongState},
		{answered, answer, "other gateway", sigNotOwner},
		{answered, result, "agent", ""},
		{answered, result, "gateway", sigWrongRole},
		{answered, result, "other agent", sigNotOwner},
		{answered, abort, "agent", ""},
		{answered, abort, "gateway", ""},
		{answered, abort, "other agent", sigNotOwner},
		{answered, abort, "other gateway", sigNotOwner},
	}
	for _, tc := range tests {
		t.Run(tc.phase+"/"+names[tc.msg]+" from "+tc.sender, func(t *testing.T) {
			f := newSigFixture()
			s := f.offer(t, 7)
			if tc.phase == answered {
				if _, reason := f.sg.answer(party{g: f.g}, s.legID); reason != "" {
					t.Fatal(reason)
				}
			}
			from := map[string]party{
				"agent": {a: f.a}, "gateway": {g: f.g}, "other agent": {a: f.other}, "other gateway": {g: f.otherGW},
			}[tc.sender]
			// Each party names the session as it knows it: agents by their
			// id, gateways by the leg id (a third party guesses both right).
			id := s.agentID
			if from.g != nil {
				id = s.legID
			}
			var got *sigSession
			var reason string
			switch tc.msg {
			case answer:
				got, reason = f.sg.answer(from, id)
			case result:
				got, reason = f.sg.result(from, id)
			case abort:
				got, reason = f.sg.abort(from, id)
			}
			if reason != tc.reason || (reason == "") != (got == s) {
				t.Fatalf("got %v, %q; want reason %q", got, reason, tc.reason)
			}
			ends := reason == "" && tc.msg != answer
			if live := f.sg.byLeg[s.legID] == s; live == ends {
				t.Errorf("session live %v after the message", live)
			}
			if reason != "" && s.phase != map[string]sigPhase{offered: sigOffered, answered: sigAnswered}[tc.phase] {
				t.Errorf("a rejected message changed the phase to %d", s.phase)
			}
			if ends && (len(f.sg.idUsers) != 0 || len(f.sg.perAgent) != 0 || len(f.sg.perGW) != 0 || len(f.sg.perShare) != 0 || len(f.sg.byAgent) != 0) {
				t.Errorf("counts left behind: %v %v %v", f.sg.idUsers, f.sg.perAgent, f.sg.perGW)
			}
		})
	}
}

func TestSignalingOffers(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(f *sigFixture)
		from   func(f *sigFixture) party
		id     uint64
		reason string
	}{
		{"first offer", nil, func(f *sigFixture) party { return party{a: f.a} }, 7, ""},
		{"from a gateway", nil, func(f *sigFixture) party { return party{g: f.otherGW} }, 7, sigWrongRole},
		{"id 0", nil, func(f *sigFixture) party { return party{a: f.a} }, 0, sigBadMessage},
		{"duplicate id", func(f *sigFixture) { f.sg.offer(party{a: f.a}, 7, []*gateway{f.g}, "web", f.now) },
			func(f *sigFixture) party { return party{a: f.a} }, 7, sigDuplicate},
		{"same id, another agent: scoped per agent", func(f *sigFixture) { f.sg.offer(party{a: f.a}, 7, []*gateway{f.g}, "web", f.now) },
			func(f *sigFixture) party { return party{a: f.other} }, 7, ""},
		{"agent at its cap", func(f *sigFixture) {
			for i := range agentSignalCap {
				f.sg.offer(party{a: f.a}, uint64(100+i), []*gateway{f.otherGW}, "web", f.now)
			}
		}, func(f *sigFixture) party { return party{a: f.a} }, 7, sigBusy},
		{"another agent is not capped by it", func(f *sigFixture) {
			for i := range agentSignalCap {
				f.sg.offer(party{a: f.a}, uint64(100+i), []*gateway{f.otherGW}, "web", f.now)
			}
		}, func(f *sigFixture) party { return party{a: f.other} }, 7, ""},
		{"gateway at its cap", func(f *sigFixture) {
			f.sg.gatewayCap = 3
			for range 3 {
				f.sg.offer(party{a: &agent{}}, 1, []*gateway{f.g}, "web", f.now)
			}
		}, func(f *sigFixture) party { return party{a: f.a} }, 7, sigBusy},
		{"no leg id free", func(f *sigFixture) { f.sg.newID = func() uint64 { return 0 } },
			func(f *sigFixture) party { return party{a: f.a} }, 7, sigBusy},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newSigFixture()
			if tc.setup != nil {
				tc.setup(f)
			}
			s, reason := f.sg.offer(tc.from(f), tc.id, []*gateway{f.g}, "web", f.now)
			if reason != tc.reason || (reason == "") != (s != nil) {
				t.Fatalf("got %v, %q; want %q", s, reason, tc.reason)
			}
		})
	}
}

// TestSignalingTenantShare: one agent identity may hold
// tunnel.MaxIdentitySessions sessions of agentSignalCap offers each, as
// many as a gateway's cap: offering without end (never a result, each
// offer held until it expires), it left no room for another tenant's
// agents, whose direct paths to that gateway were all refused as busy.
// A tenant's agents hold half of a gateway's sessions at most.
func TestSignalingTenantShare(t *testing.T) {
	f := newSigFixture()
	mallory := tunnel.Identity{Tenant: "evil", Role: tunnel.RoleAgent, Name: "m"}
	accepted := 0
	for range tunnel.MaxIdentitySessions {
		a := &agent{peer: peer{id: mallory}}
		for id := range uint64(agentSignalCap) {
			if s, _ := f.sg.offer(party{a: a}, id+1, []*gateway{f.g}, "web", f.now); s != nil {
				accepted++
			}
		}
	}
	if accepted > gatewaySignalCap/2 {
		t.Errorf("one identity holds %d of the gateway's %d signaling sessions", accepted, gatewaySignalCap)
	}
	alice := &agent{peer: peer{id: tunnel.Identity{Tenant: "acme", Role: tunnel.RoleAgent, Name: "alice"}}}
	if _, reason := f.sg.offer(party{a: alice}, 1, []*gateway{f.g}, "web", f.now); reason != "" {
		t.Fatalf("another tenant's offer refused: %s", reason)
	}
	if _, reason := f.sg.offer(party{a: &agent{peer: peer{id: mallory}}}, 1, []*gateway{f.otherGW}, "web", f.now); reason != "" {
		t.Errorf("the share is per gateway: an offer to another refused: %s", reason)
	}
	f.sg.expire(f.now.Add(signalTTL))
	if len(f.sg.perShare) != 0 {
		t.Errorf("shares left behind: %v", f.sg.perShare)
	}
}

// TestSignalingLegIDs checks that gateways never see agents' ids and that
// two agents' sessions with the same id are told apart.
func TestSignalingLegIDs(t *testing.T) {
	f := newSigFixture()
	s1, _ := f.sg.offer(party{a: f.a}, 7, []*gateway{f.g}, "web", f.now)
	s2, _ := f.sg.offer(party{a: f.other}, 7, []*gateway{f.g}, "web", f.now)
	if s1.legID == s2.legID || s1.legID == 7 || s2.legID == 7 {
		t.Fatalf("leg ids %d, %d", s1.legID, s2.legID)
	}
	if got, _ := f.sg.answer(party{g: f.g}, s2.legID); got != s2 {
		t.Fatal("answer reached the wrong session")
	}
	if got, _ := f.sg.result(party{a: f.other}, 7); got != s2 {
		t.Fatal("result reached the wrong session")
	}
	if _, reason := f.sg.result(party{a: f.a}, 7); reason != sigWrongState {
		t.Fatalf("the first agent's session: %q", reason)
	}
}

func TestSignalingExpiry(t *testing.T) {
	f := newSigFixture()
	early := f.offer(t, 1)
	f.now = f.now.Add(signalTTL / 2)
	late := f.offer(t, 2)
	f.sg.answer(party{g: f.g}, late.legID)
	if got := f.sg.expire(f.now.Add(signalTTL/2 - time.Millisecond)); len(got) != 0 {
		t.Fatalf("expired too early: %v", got)
	}
	if got := f.sg.expire(f.now.Add(signalTTL / 2)); len(got) != 1 || got[0] != early {
		t.Fatalf("expired %v, want the first session", got)
	}
	if _, reason := f.sg.answer(party{g: f.g}, early.legID); reason != sigUnknown {
		t.Errorf("answer after expiry: %q", reason)
	}
	if got := f.sg.expire(f.now.Add(signalTTL)); len(got) != 1 || got[0] != late {
		t.Fatalf("expired %v, want the answered session too", got)
	}
	if _, reason := f.sg.result(party{a: f.a}, 2); reason != sigUnknown {
		t.Errorf("result after expiry: %q", reason)
	}
	// Expired sessions free the cap.
	for i := range agentSignalCap {
		f.offer(t, uint64(10+i))
	}
}

func TestSignalingPartiesLeave(t *testing.T) {
	f := newSigFixture()
	s1 := f.offer(t, 1)
	f.sg.answer(party{g: f.g}, s1.legID)
	f.sg.result(party{a: f.a}, 1)
	f.sg.addPath(s1)
	s2, _ := f.sg.offer(party{a: f.other}, 1, []*gateway{f.g}, "web", f.now)
	s3, _ := f.sg.offer(party{a: f.a}, 3, []*gateway{f.otherGW}, "web", f.now)

	if got := f.sg.dropParty(party{g: f.g}); len(got) != 1 || got[0] != s2 {
		t.Fatalf("gateway left: ended %v, want the other agent's session", got)
	}
	if len(f.sg.paths) != 0 {
		t.Errorf("paths through the gateway kept: %v", f.sg.paths)
	}
	if got := f.sg.dropParty(party{a: f.a}); len(got) != 1 || got[0] != s3 {
		t.Fatalf("agent left: ended %v", got)
	}
	if len(f.sg.byLeg)+len(f.sg.byAgent)+len(f.sg.idUsers)+len(f.sg.perAgent)+len(f.sg.perGW) != 0 {
		t.Errorf("state left behind")
	}
}

func TestSignalingPaths(t *testing.T) {
	f := newSigFixture()
	done := func(id uint64, g *gateway, service string) *sigSession {
		s, _ := f.sg.offer(party{a: f.a}, id, []*gateway{g}, service, f.now)
		f.sg.answer(party{g: g}, s.legID)
		f.sg.result(party{a: f.a}, id)
		f.sg.addPath(s)
		return s
	}
	done(1, f.g, "web")
	done(2, f.g, "db")
	done(3, f.otherGW, "mail")
	done(4, f.g, "web") // replaces 1
	if len(f.sg.paths) != 3 {
		t.Fatalf("paths %v", f.sg.paths)
	}
	if got := f.sg.takePaths(f.g, "web", func(a *agent) bool { return a == f.other }); len(got) != 0 {
		t.Fatalf("web paths of another agent %v", got)
	}
	if got := f.sg.takePaths(f.g, "web", func(a *agent) bool { return a == f.a }); len(got) != 1 || got[0].agentID != 4 {
		t.Fatalf("web paths %v", got)
	}
	if got := f.sg.takePaths(f.g, "", nil); len(got) != 1 || got[0].service != "db" {
		t.Fatalf("the gateway's paths %v", got)
	}
	if len(f.sg.paths) != 1 {
		t.Errorf("left %v", f.sg.paths)
	}
}

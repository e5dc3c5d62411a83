package catalog

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// change applies requests to t, a working copy of the state, and returns
// every problem it found (t is then to be discarded). exclusive means the
// requests are the whole set: services not requested are released.
//
// The order makes the result independent of the order of the requests and
// keeps every existing allocation stable:
//  1. expired holds are freed, and (exclusive) unrequested services released;
//  2. pins are applied (a service's previous VIP is held for it);
//  3. services keep their VIPs, or get back the ones held for them;
//  4. the rest get the free address nearest their name's home slot, in
//     order of service name.
func (p *Pool) change(t *table, reqs []Request, exclusive bool, now time.Time) []error {
	clean, errs := checkRequests(p.spaces, reqs)
	t.prune(now, p.holdDown, p.inUse)
	if exclusive {
		requested := make(map[string]bool, len(reqs))
		for _, r := range reqs {
			requested[r.Service] = true
		}
		for s := range t.allocs {
			if !requested[s] {
				t.release(s, now)
			}
		}
	}
	slices.SortFunc(clean, func(a, b Request) int { return cmp.Compare(a.Service, b.Service) })
	for _, r := range clean {
		errs = append(errs, p.pin(t, r, now)...)
	}
	for _, r := range clean {
		p.restore(t, r, now)
	}
	for f, s := range p.spaces {
		if err := fill(t, s, f, clean, now); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// pin gives r its pinned addresses. The address a service had before a new
// pin is held for it, like a released one: clients may still have it cached.
func (p *Pool) pin(t *table, r Request, now time.Time) []error {
	var errs []error
	for f, a := range r.pins() {
		cur := t.allocs[r.Service].addrs[f]
		if !a.IsValid() || a == cur {
			continue
		}
		owner, owned := t.owner[a]
		if owned && owner != r.Service {
			errs = append(errs, p.conflict(t, r.Service, a, owner, now))
			continue
		}
		if owned {
			t.unhold(a) // held for this very service
		}
		var old addrs
		old[f] = cur
		t.hold(r.Service, old, now)
		t.set(r.Service, f, a, now)
	}
	return errs
}

// conflict describes why service may not pin a, which owner has. A VIP
// held for a service that is allocated (another VIP) is one it had before
// a new pin, or before a release when it came back with a newer one.
func (p *Pool) conflict(t *table, service string, a netip.Addr, owner string, now time.Time) error {
	h, held := t.holdOf(a)
	if !held {
		return problem(ErrPinConflict, "service %q pins %s, which is allocated to %q", service, a, owner)
	}
	whose := fmt.Sprintf("the released service %q", owner)
	if _, ok := t.allocs[owner]; ok {
		whose = fmt.Sprintf("%q (its VIP before its current one)", owner)
	}
	until := h.releasedAt.Add(p.holdDown)
	if !now.Before(until) {
		return problem(ErrPinConflict, "service %q pins %s, which is held for %s while flows to it are alive", service, a, whose)
	}
	return problem(ErrPinConflict, "service %q pins %s, which is held for %s until %s (hold-down)",
		service, a, whose, until.Format(time.RFC3339))
}

// restore gives r back, for each family it does not pin and has no address
// in, the newest address held for it.
func (p *Pool) restore(t *table, r Request, now time.Time) {
	pins := r.pins()
	for f, s := range p.spaces {
		if !s.ok() || pins[f].IsValid() || t.allocs[r.Service].addrs[f].IsValid() {
			continue
		}
		if a := t.takeHeld(r.Service, f); a.IsValid() {
			t.set(r.Service, f, a, now)
		}
	}
}

// fill allocates an address of family f to every request without one, or
// reports how far the pool is from having room for them all.
func fill(t *table, s addrSpace, f int, reqs []Request, now time.Time) error {
	if !s.ok() {
		return nil
	}
	var need []string
	for _, r := range reqs {
		if !t.allocs[r.Service].addrs[f].IsValid() {
			need = append(need, r.Service)
		}
	}
	allocated, held := t.owned(f)
	if uint64(len(need)) > s.slots-allocated-held {
		return problem(ErrPoolExhausted, "%s pool %s exhausted: %d services need VIPs and %d addresses are held back after a release, but the pool has room for %d",
			familyName(f), s.prefix, allocated+uint64(len(need)), held, s.slots)
	}
	taken := func(a netip.Addr) bool { _, ok := t.owner[a]; return ok }
	for i, svc := range need {
		// Every owned address is a slot of s, so owned+1 probes find a free one.
		a, ok := s.probe(svc, allocated+held+uint64(i)+1, taken)
		if !ok {
			return problem(ErrPoolExhausted, "%s pool %s: no free address found for service %q", familyName(f), s.prefix, svc)
		}
		t.set(svc, f, a, now)
	}
	return nil
}

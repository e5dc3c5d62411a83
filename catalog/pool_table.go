package catalog

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// addrs holds one address per family (fam4, fam6); an invalid address
// means none.
type addrs [families]netip.Addr

// empty reports whether no family has an address.
func (a addrs) empty() bool { return !a[fam4].IsValid() && !a[fam6].IsValid() }

// allocRec is the allocation of one service.
type allocRec struct {
	addrs
	since time.Time // when its IPv4 VIP was assigned
}

// holdRec is a VIP held back after its service released it.
type holdRec struct {
	service string
	addrs
	releasedAt time.Time
	// seq is the release order: a hold made later has a larger one. It is
	// not stored: the state file lists the holds of one service and one
	// release time in release order, and a load numbers them in that order.
	seq uint64
}

// table is the allocator's state: what the state file stores. The pool
// changes a clone and swaps it in only when the whole change succeeded.
type table struct {
	allocs map[string]allocRec   // by service
	holds  []holdRec             // normalised order: see normalise
	owner  map[netip.Addr]string // every allocated or held address
	next   uint64                // the seq of the next hold
}

func newTable() *table {
	return &table{allocs: map[string]allocRec{}, owner: map[netip.Addr]string{}}
}

func (t *table) clone() *table {
	return &table{allocs: maps.Clone(t.allocs), holds: slices.Clone(t.holds), owner: maps.Clone(t.owner), next: t.next}
}

// set assigns a to service s in family f. A new allocation, or a new IPv4
// VIP, starts its since time now.
func (t *table) set(s string, f int, a netip.Addr, now time.Time) {
	rec, ok := t.allocs[s]
	if !ok || f == fam4 {
		rec.since = now
	}
	rec.addrs[f] = a
	t.allocs[s] = rec
	t.owner[a] = s
}

// own records every address of as as owned by s.
func (t *table) own(s string, as addrs) {
	for _, a := range as {
		if a.IsValid() {
			t.owner[a] = s
		}
	}
}

// hold records a as held for s from now on (a stays owned by s).
func (t *table) hold(s string, as addrs, now time.Time) {
	if !as.empty() {
		t.holds = append(t.holds, holdRec{service: s, addrs: as, releasedAt: now, seq: t.next})
		t.next++
	}
}

// release moves the allocation of s, if any, to the holds.
func (t *table) release(s string, now time.Time) {
	if rec, ok := t.allocs[s]; ok {
		delete(t.allocs, s)
		t.hold(s, rec.addrs, now)
	}
}

// unhold removes a from the hold that holds it; the caller takes it over.
func (t *table) unhold(a netip.Addr) {
	for i := range t.holds {
		h := &t.holds[i]
		for f := range h.addrs {
			if h.addrs[f] == a {
				h.addrs[f] = netip.Addr{}
			}
		}
	}
	t.holds = slices.DeleteFunc(t.holds, func(h holdRec) bool { return h.empty() })
}

// takeHeld returns the newest address of family f held for s, taking it
// out of its hold, or an invalid address. The newest is the one released
// last: the latest release time and, of holds with one release time (a
// coarse clock, or holds the clock going back restarted at one instant),
// the last made.
func (t *table) takeHeld(s string, f int) netip.Addr {
	best := -1
	for i, h := range t.holds {
		if h.service == s && h.addrs[f].IsValid() && (best < 0 || h.newer(t.holds[best])) {
			best = i
		}
	}
	if best < 0 {
		return netip.Addr{}
	}
	a := t.holds[best].addrs[f]
	t.unhold(a)
	return a
}

// newer reports whether h was released after o: later, or at the same
// time and after it.
func (h holdRec) newer(o holdRec) bool {
	return cmp.Or(h.releasedAt.Compare(o.releasedAt), cmp.Compare(h.seq, o.seq)) > 0
}

// holdOf returns the hold that holds a.
func (t *table) holdOf(a netip.Addr) (holdRec, bool) {
	for _, h := range t.holds {
		if h.addrs[fam4] == a || h.addrs[fam6] == a {
			return h, true
		}
	}
	return holdRec{}, false
}

// prune frees the holds whose hold-down has passed and whose addresses are
// not in use. A release time in the future (the clock went back) restarts
// the hold-down now rather than holding for the size of the jump.
func (t *table) prune(now time.Time, holdDown time.Duration, inUse func(netip.Addr) bool) {
	t.holds = slices.DeleteFunc(t.holds, func(h holdRec) bool {
		if h.kept(now, holdDown, inUse) {
			return false
		}
		for _, a := range h.addrs {
			delete(t.owner, a)
		}
		return true
	})
	for i := range t.holds {
		if t.holds[i].releasedAt.After(now) {
			t.holds[i].releasedAt = now
		}
	}
}

// kept reports whether h still holds its addresses at now: within the
// hold-down, or while one of them is in use.
func (h holdRec) kept(now time.Time, holdDown time.Duration, inUse func(netip.Addr) bool) bool {
	if now.Sub(h.releasedAt) < holdDown {
		return true
	}
	for _, a := range h.addrs {
		if a.IsValid() && inUse(a) {
			return true
		}
	}
	return false
}

// owned counts the addresses of family f that are allocated and held.
func (t *table) owned(f int) (allocated, held uint64) {
	for _, rec := range t.allocs {
		if rec.addrs[f].IsValid() {
			allocated++
		}
	}
	for _, h := range t.holds {
		if h.addrs[f].IsValid() {
			held++
		}
	}
	return allocated, held
}

// normalise sorts the holds by release time, service and release order,
// so that equal states encode to equal bytes and a reloaded state behaves
// exactly as the one that was saved: the order of one service's holds with
// one release time is the order they were made in (see takeHeld); the
// order of different services' holds is not state.
func (t *table) normalise() {
	slices.SortFunc(t.holds, func(a, b holdRec) int {
		return cmp.Or(a.releasedAt.Compare(b.releasedAt), cmp.Compare(a.service, b.service), cmp.Compare(a.seq, b.seq))
	})
}

// renumber gives the holds, in their current order, the release order
// 0, 1, 2, …: a load's order (see decodeState).
func (t *table) renumber() {
	for i := range t.holds {
		t.holds[i].seq = uint64(i)
	}
	t.next = uint64(len(t.holds))
}

// allocation returns the public form of the allocation of s.
func (t *table) allocation(s string) (Allocation, bool) {
	rec, ok := t.allocs[s]
	return Allocation{Service: s, VIP: rec.addrs[fam4], VIP6: rec.addrs[fam6]}, ok
}

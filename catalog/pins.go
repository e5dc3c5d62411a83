package catalog

import (
	"errors"
	"net/netip"
)

// Request asks for a VIP for one service. A valid VIP or VIP6 pins that
// address; an invalid one means "allocate automatically".
type Request struct {
	Service   string
	VIP, VIP6 netip.Addr
}

// pins returns the pinned address of each family.
func (r Request) pins() addrs { return addrs{r.VIP, r.VIP6} }

// CheckPins validates a pool and the pins of a set of requests without any
// state (for `ztgate check`): an invalid pool, services without a name or
// requested twice, two services pinning one address (naming both), pins
// outside the pool or on a reserved address, and a pool too small for the
// number of services. prefix6 is the optional IPv6 pool (invalid = none).
// Every problem is reported, joined into one error.
func CheckPins(prefix, prefix6 netip.Prefix, reqs []Request) error {
	spaces, err := newSpaces(prefix, prefix6)
	if err != nil {
		return err
	}
	_, errs := checkRequests(spaces, reqs)
	names := make(map[string]bool, len(reqs))
	for _, r := range reqs {
		if r.Service != "" {
			names[r.Service] = true
		}
	}
	for f, s := range spaces {
		if s.ok() && uint64(len(names)) > s.slots {
			errs = append(errs, problem(ErrPoolExhausted, "%s pool %s is too small: %d services need VIPs, the pool has room for %d",
				familyName(f), s.prefix, len(names), s.slots))
		}
	}
	return errors.Join(errs...)
}

// newSpaces validates the IPv4 pool and the optional IPv6 pool.
func newSpaces(prefix, prefix6 netip.Prefix) ([families]addrSpace, error) {
	var spaces [families]addrSpace
	var err4, err6 error
	spaces[fam4], err4 = newAddrSpace(prefix, fam4)
	if prefix6.IsValid() {
		spaces[fam6], err6 = newAddrSpace(prefix6, fam6)
	}
	return spaces, errors.Join(err4, err6)
}

// checkRequests finds the problems of a request set that need no state:
// missing or repeated service names, two services pinning one address,
// pins outside the pool or on a reserved address. It returns the requests
// that have none of these problems (the first of a repeated name).
func checkRequests(spaces [families]addrSpace, reqs []Request) ([]Request, []error) {
	var errs []error
	clean := make([]Request, 0, len(reqs))
	services := make(map[string]bool, len(reqs))
	pinnedBy := make(map[netip.Addr]string)
	for _, r := range reqs {
		switch {
		case r.Service == "":
			errs = append(errs, problem(ErrInvalidRequest, "a VIP request has no service name"))
			continue
		case services[r.Service]:
			errs = append(errs, problem(ErrInvalidRequest, "service %q is requested twice", r.Service))
			continue
		}
		services[r.Service] = true
		bad := false
		for f, a := range r.pins() {
			if !a.IsValid() {
				continue
			}
			err := checkPin(spaces[f], f, r.Service, a)
			if other, dup := pinnedBy[a]; dup && err == nil {
				err = problem(ErrPinConflict, "services %q and %q both pin %s", other, r.Service, a)
			}
			if err != nil {
				errs, bad = append(errs, err), true
				continue
			}
			pinnedBy[a] = r.Service
		}
		if !bad {
			clean = append(clean, r)
		}
	}
	return clean, errs
}

// checkPin reports why service may not pin a as its VIP of family f.
func checkPin(s addrSpace, f int, service string, a netip.Addr) error {
	switch {
	case (f == fam4 && !a.Is4()) || (f == fam6 && (!a.Is6() || a.Is4In6())):
		return problem(ErrPinOutsidePool, "service %q pins %s as its %s VIP, which is not an %s address", service, a, familyName(f), familyName(f))
	case !s.ok():
		return problem(ErrPinOutsidePool, "service %q pins %s, but no %s pool is configured", service, a, familyName(f))
	case !s.contains(a):
		return problem(ErrPinOutsidePool, "service %q pins %s, outside the %s pool %s", service, a, familyName(f), s.prefix)
	}
	if what := s.reservedName(a); what != "" {
		return problem(ErrReserved, "service %q pins %s, %s of the pool %s, which is never handed out", service, a, what, s.prefix)
	}
	return nil
}

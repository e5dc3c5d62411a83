package catalog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// stateVersion is the version of the state file format written and read.
const stateVersion = 1

// stateFile is the JSON form of the state file:
//
//	{
//	  "version": 1,
//	  "pool": "10.100.0.0/24",
//	  "pool6": "fd00:ab::/120",
//	  "allocations": [{"service": "web", "vip": "10.100.0.23", "vip6": "fd00:ab::17", "since": "2025-01-02T03:04:05Z"}],
//	  "held": [{"service": "old", "vip": "10.100.0.40", "released_at": "2025-01-02T03:04:05Z"}]
//	}
//
// pool and pool6 record the pools the state was saved with; vip6 and the
// held addresses are omitted when absent. held is in order of release time
// and service; the holds of one service with one release time are in the
// order they were released, which decides which one it gets back.
type stateFile struct {
	Version     int          `json:"version"`
	Pool        netip.Prefix `json:"pool,omitzero"`
	Pool6       netip.Prefix `json:"pool6,omitzero"`
	Allocations []stateAlloc `json:"allocations"`
	Held        []stateHold  `json:"held"`
}

type stateAlloc struct {
	Service string     `json:"service"`
	VIP     netip.Addr `json:"vip"`
	VIP6    netip.Addr `json:"vip6,omitzero"`
	Since   time.Time  `json:"since"`
}

type stateHold struct {
	Service    string     `json:"service"`
	VIP        netip.Addr `json:"vip,omitzero"`
	VIP6       netip.Addr `json:"vip6,omitzero"`
	ReleasedAt time.Time  `json:"released_at"`
}

// encodeState returns the state file contents of t (normalised).
func encodeState(t *table, spaces [families]addrSpace) ([]byte, error) {
	f := stateFile{
		Version:     stateVersion,
		Pool:        spaces[fam4].prefix,
		Pool6:       spaces[fam6].prefix,
		Allocations: make([]stateAlloc, 0, len(t.allocs)),
		Held:        make([]stateHold, 0, len(t.holds)),
	}
	for _, s := range slices.Sorted(maps.Keys(t.allocs)) {
		rec := t.allocs[s]
		f.Allocations = append(f.Allocations, stateAlloc{Service: s, VIP: rec.addrs[fam4], VIP6: rec.addrs[fam6], Since: rec.since})
	}
	for _, h := range t.holds {
		f.Held = append(f.Held, stateHold{Service: h.service, VIP: h.addrs[fam4], VIP6: h.addrs[fam6], ReleasedAt: h.releasedAt})
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("catalog: encode VIP state: %w", err)
	}
	return append(data, '\n'), nil
}

// decodeState parses and validates state file contents against the
// current pools. Entries outside the pools are dropped with a warning; the
// in-pool IPv6 VIP of an allocation whose IPv4 VIP was dropped is held for
// its service (from now), so that the service gets it back. The error lists
// every problem of a state that cannot be trusted.
func decodeState(data []byte, spaces [families]addrSpace, now time.Time) (*table, []string, error) {
	var f stateFile
	if err := decodeJSON(data, &f); err != nil {
		return nil, nil, err
	}
	if f.Version != stateVersion {
		return nil, nil, fmt.Errorf("version %d is not supported (this ztgate reads version %d)", f.Version, stateVersion)
	}
	if err := f.validate(); err != nil {
		return nil, nil, err
	}
	var warnings []string
	for fam, p := range []netip.Prefix{f.Pool, f.Pool6} {
		if p.IsValid() && p.Masked() != spaces[fam].prefix {
			warnings = append(warnings, fmt.Sprintf("it was saved with the %s pool %s, the pool is now %s", familyName(fam), p, describePool(spaces[fam])))
		}
	}
	t := newTable()
	var released []Allocation // allocations whose IPv4 VIP was dropped
	for _, a := range f.Allocations {
		kept := keepInPool(spaces, addrs{a.VIP, a.VIP6}, "service "+quote(a.Service), &warnings)
		t.own(a.Service, kept)
		if kept[fam4].IsValid() {
			t.allocs[a.Service] = allocRec{addrs: kept, since: a.Since}
		} else if !kept.empty() {
			released = append(released, Allocation{Service: a.Service, VIP6: kept[fam6]})
		}
	}
	for _, h := range f.Held {
		kept := keepInPool(spaces, addrs{h.VIP, h.VIP6}, "the VIP held for "+quote(h.Service), &warnings)
		t.own(h.Service, kept)
		t.hold(h.Service, kept, h.ReleasedAt)
	}
	// Released now, after every hold the file lists.
	for _, a := range released {
		t.hold(a.Service, addrs{fam6: a.VIP6}, now)
	}
	// The file lists one service's holds with one release time in release
	// order; a hand-edited one may list the others in any.
	slices.SortStableFunc(t.holds, func(a, b holdRec) int { return a.releasedAt.Compare(b.releasedAt) })
	t.renumber()
	t.normalise()
	return t, warnings, nil
}

// keepInPool returns the addresses of as that the current pools may hand
// out, and warns about the others.
func keepInPool(spaces [families]addrSpace, as addrs, whose string, warnings *[]string) addrs {
	for f, a := range as {
		if a.IsValid() && !spaces[f].usable(a) {
			*warnings = append(*warnings, fmt.Sprintf("%s: %s is not a usable address of the %s pool %s; dropped at the next change",
				whose, a, familyName(f), describePool(spaces[f])))
			as[f] = netip.Addr{}
		}
	}
	return as
}

// describePool names the pool of a family, or says there is none.
func describePool(s addrSpace) string {
	if !s.ok() {
		return "(none)"
	}
	return s.prefix.String()
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// decodeJSON decodes exactly one JSON object with known fields only.
func decodeJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fmt.Errorf("invalid JSON at byte %d: %w", se.Offset, err)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return fmt.Errorf("truncated JSON (%d bytes): %w", len(data), err)
		}
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("unexpected data after the JSON object at byte %d", dec.InputOffset())
	}
	return nil
}

// validate checks what no pool change explains: names, address families,
// addresses that appear twice, and holds without a release time.
func (f *stateFile) validate() error {
	var errs []error
	seen := make(map[netip.Addr]string)
	services := make(map[string]bool, len(f.Allocations))
	check := func(entry, service string, as addrs, need4 bool) {
		where := fmt.Sprintf("%s (%q)", entry, service)
		if service == "" {
			errs = append(errs, fmt.Errorf("%s: no service name", entry))
		}
		if need4 && !as[fam4].IsValid() {
			errs = append(errs, fmt.Errorf("%s: no vip", where))
		} else if as.empty() {
			errs = append(errs, fmt.Errorf("%s: no address", where))
		}
		for fam, a := range as {
			switch {
			case !a.IsValid():
			case (fam == fam4 && !a.Is4()) || (fam == fam6 && (!a.Is6() || a.Is4In6() || a.Zone() != "")):
				errs = append(errs, fmt.Errorf("%s: %s is not an %s VIP", where, a, familyName(fam)))
			case seen[a] != "":
				errs = append(errs, fmt.Errorf("%s is in both %s and %s", a, seen[a], where))
			default:
				seen[a] = where
			}
		}
	}
	for i, a := range f.Allocations {
		if services[a.Service] {
			errs = append(errs, fmt.Errorf("allocations[%d]: service %q is allocated twice", i, a.Service))
		}
		services[a.Service] = true
		check(fmt.Sprintf("allocations[%d]", i), a.Service, addrs{a.VIP, a.VIP6}, true)
	}
	for i, h := range f.Held {
		check(fmt.Sprintf("held[%d]", i), h.Service, addrs{h.VIP, h.VIP6}, false)
		if h.ReleasedAt.IsZero() {
			// A hold of unknown age would be freed at the next change.
			errs = append(errs, fmt.Errorf("held[%d] (%q): no released_at", i, h.Service))
		}
	}
	return errors.Join(errs...)
}

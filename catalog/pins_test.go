package catalog

import (
	"fmt"
	"math"
	"testing"
)

func TestCheckPins(t *testing.T) {
	many := func(n int) []Request {
		var rs []Request
		for i := range n {
			rs = append(rs, req(fmt.Sprint("s", i)))
		}
		return rs
	}
	tests := []struct {
		name     string
		pool     string
		pool6    string
		reqs     []Request
		wantErrs []error
		wantText []string
	}{
		{name: "valid pins", pool: "10.100.0.0/24", pool6: "fd00::/120", reqs: []Request{req("web", "10.100.0.10", "fd00::10"), req("db")}},
		{name: "no requests", pool: "10.100.0.0/29"},
		{name: "as many services as room", pool: "10.100.0.0/29", reqs: many(5)},
		{
			name: "two services pin one VIP", pool: "10.100.0.0/24",
			reqs:     []Request{req("web", "10.100.0.10"), req("db", "10.100.0.10")},
			wantErrs: []error{ErrPinConflict}, wantText: []string{`services "web" and "db" both pin 10.100.0.10`},
		},
		{
			name: "two services pin one IPv6 VIP", pool: "10.100.0.0/24", pool6: "fd00::/120",
			reqs:     []Request{req("web", "", "fd00::10"), req("db", "", "fd00::10")},
			wantErrs: []error{ErrPinConflict}, wantText: []string{`"web" and "db"`},
		},
		{
			name: "outside the pool", pool: "10.100.0.0/24", reqs: []Request{req("web", "10.100.1.10")},
			wantErrs: []error{ErrPinOutsidePool}, wantText: []string{`service "web" pins 10.100.1.10, outside the IPv4 pool 10.100.0.0/24`},
		},
		{
			name: "reserved", pool: "10.100.0.0/24", reqs: []Request{req("web", "10.100.0.1")},
			wantErrs: []error{ErrReserved}, wantText: []string{"gateway address"},
		},
		{
			name: "pool too small", pool: "10.100.0.0/29", reqs: many(7),
			wantErrs: []error{ErrPoolExhausted}, wantText: []string{"too small: 7 services need VIPs, the pool has room for 5"},
		},
		{
			name: "invalid pool", pool: "10.100.0.0/30",
			wantErrs: []error{ErrInvalidPool}, wantText: []string{"too small"},
		},
		{
			name: "invalid IPv6 pool", pool: "10.100.0.0/24", pool6: "fd00::/127",
			wantErrs: []error{ErrInvalidPool}, wantText: []string{"fd00::/127"},
		},
		{
			name: "all problems", pool: "10.100.0.0/29",
			reqs:     []Request{req("a", "10.100.0.2"), req("b", "10.100.0.2"), req("c", "10.100.0.7"), req("d"), req("e"), req("f"), req(""), req("d")},
			wantErrs: []error{ErrPinConflict, ErrReserved, ErrPoolExhausted, ErrInvalidRequest},
			wantText: []string{`"a" and "b"`, "broadcast address", "6 services need VIPs", `"d" is requested twice`, "no service name"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, CheckPins(pfx(tc.pool), pfx(tc.pool6), tc.reqs), tc.wantErrs, tc.wantText)
		})
	}
}

func TestAddrSpace(t *testing.T) {
	tests := []struct {
		pool        string
		fam         int
		slots       uint64
		first, last string
		reserved    []string
	}{
		{pool: "10.100.0.0/24", fam: fam4, slots: 253, first: "10.100.0.2", last: "10.100.0.254", reserved: []string{"10.100.0.0", "10.100.0.1", "10.100.0.255"}},
		{pool: "10.100.0.77/29", fam: fam4, slots: 5, first: "10.100.0.74", last: "10.100.0.78", reserved: []string{"10.100.0.72", "10.100.0.73", "10.100.0.79"}},
		{pool: "fd00:ab::/120", fam: fam6, slots: 254, first: "fd00:ab::2", last: "fd00:ab::ff", reserved: []string{"fd00:ab::", "fd00:ab::1"}},
		{pool: "fd00:ab::/64", fam: fam6, slots: math.MaxUint64 - 1, first: "fd00:ab::2", last: "fd00:ab::ffff:ffff:ffff:ffff", reserved: []string{"fd00:ab::", "fd00:ab::1"}},
		{pool: "fd00:ab::/48", fam: fam6, slots: math.MaxUint64 - 1, first: "fd00:ab::2", last: "fd00:ab::ffff:ffff:ffff:ffff", reserved: []string{"fd00:ab::", "fd00:ab::1"}},
	}
	for _, tc := range tests {
		t.Run(tc.pool, func(t *testing.T) {
			s, err := newAddrSpace(pfx(tc.pool), tc.fam)
			if err != nil {
				t.Fatal(err)
			}
			if s.slots != tc.slots || s.addr(0) != ip(tc.first) || s.addr(s.slots-1) != ip(tc.last) {
				t.Errorf("slots %d, first %s, last %s", s.slots, s.addr(0), s.addr(s.slots-1))
			}
			for _, r := range tc.reserved {
				if s.usable(ip(r)) || s.reservedName(ip(r)) == "" {
					t.Errorf("%s is not reserved", r)
				}
			}
			if !s.usable(ip(tc.first)) || !s.usable(ip(tc.last)) {
				t.Errorf("first or last not usable")
			}
		})
	}
}

package resolver

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestClientLookupHost(t *testing.T) {
	zone := serve(t, newTestServer(t, testConfig(), loopbackDir()))
	refusing := serve(t, newTestServer(t, testConfig(), &testDir{})) // no view for anyone
	zoneAddr := netip.MustParseAddrPort(zone.udp)
	up := startUpstream(t, false)
	dead := deadUpstream(t)
	tests := []struct {
		name    string
		servers []netip.AddrPort
		host    string
		want    []string
		ttl     time.Duration
		err     error // wrapped by the error; nil: success
	}{
		{name: "A and AAAA", servers: []netip.AddrPort{zoneAddr}, host: "web.ztna.internal", want: []string{"10.100.0.10", "fd00:ab::a"}, ttl: 30 * time.Second},
		{name: "A only", servers: []netip.AddrPort{zoneAddr}, host: "dns.ztna.internal.", want: []string{"10.100.0.11"}, ttl: 30 * time.Second},
		{name: "IP literal", servers: nil, host: "192.0.2.7", want: []string{"192.0.2.7"}},
		{name: "NXDOMAIN with the negative TTL", servers: []netip.AddrPort{zoneAddr}, host: "nope.ztna.internal", ttl: 30 * time.Second, err: ErrNotFound},
		{name: "the smallest TTL of a CNAME chain", servers: []netip.AddrPort{up.addr}, host: "alias.example", want: []string{"192.0.2.1"}, ttl: 10 * time.Second},
		{name: "fall over a dead nameserver", servers: []netip.AddrPort{dead, zoneAddr}, host: "web.ztna.internal", want: []string{"10.100.0.10", "fd00:ab::a"}, ttl: 30 * time.Second},
		{name: "fall over a refusing nameserver", servers: []netip.AddrPort{netip.MustParseAddrPort(refusing.udp), zoneAddr}, host: "web.ztna.internal",
			want: []string{"10.100.0.10", "fd00:ab::a"}, ttl: 30 * time.Second},
		{name: "every nameserver fails", servers: []netip.AddrPort{dead}, host: "web.ztna.internal", err: errAny},
		{name: "not a name", servers: []netip.AddrPort{zoneAddr}, host: strings.Repeat("a", 64) + ".example", err: errAny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &Client{Nameservers: tc.servers, Timeout: 500 * time.Millisecond}
			addrs, ttl, err := c.LookupHost(context.Background(), tc.host)
			if !matchErr(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			var got []string
			for _, a := range addrs {
				got = append(got, a.String())
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) || ttl != tc.ttl {
				t.Errorf("%v TTL %v, want %v TTL %v", got, ttl, tc.want, tc.ttl)
			}
		})
	}
}

// errAny stands for any error in test tables.
var errAny = errors.New("any error")

func matchErr(err, want error) bool {
	switch want {
	case nil:
		return err == nil
	case errAny:
		return err != nil
	}
	return errors.Is(err, want)
}

func TestClientLookupSRV(t *testing.T) {
	zone := serve(t, newTestServer(t, testConfig(), loopbackDir()))
	c := &Client{Nameservers: []netip.AddrPort{netip.MustParseAddrPort(zone.udp)}, Timeout: time.Second}
	tests := []struct {
		name  string
		qname string
		n     int
		first SRV
		err   error
	}{
		{name: "one record", qname: "_http._tcp.web.ztna.internal", n: 1, first: SRV{Target: "web.ztna.internal.", Port: 80}},
		{name: "a truncated answer is fetched over TCP", qname: "_svc._tcp.big.ztna.internal", n: 60, first: SRV{Target: "big.ztna.internal.", Port: 1000}},
		{name: "no such name", qname: "_x._tcp.web.ztna.internal", err: ErrNotFound},
		{name: "a name without SRV records", qname: "web.ztna.internal", err: ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srvs, ttl, err := c.LookupSRV(context.Background(), tc.qname)
			if !matchErr(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if ttl != 30*time.Second {
				t.Errorf("TTL %v, want 30s", ttl)
			}
			if len(srvs) != tc.n || tc.n > 0 && srvs[0] != tc.first {
				t.Errorf("%d records, first %+v; want %d, %+v", len(srvs), srvs, tc.n, tc.first)
			}
		})
	}
}

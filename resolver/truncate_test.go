package resolver

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztgate/ztgate/catalog"
)

// TestTruncateAdditional: a UDP answer too large for the client is cut by
// whole records, with TC set only when the answer or authority section lost
// records (RFC 2181 §9); additional records that do not fit (an SRV
// target's addresses) are left out without TC, and the client asks for
// them when it needs them. Before, an answer whose SRV records all fitted
// but not the target's AAAA had TC set, and sent the client to TCP for
// nothing (found by TestDNSRandom).
func TestTruncateAdditional(t *testing.T) {
	// An SRV record of svc.ztna.internal. takes 37 octets here, its A 16
	// and its AAAA 28: 12 ports fit in 512 octets with the A and not the
	// AAAA, 13 do not.
	for _, tc := range []struct {
		name     string
		ports    int
		edns     uint16
		tc       bool
		answers  int
		maxExtra int // additional records besides OPT, at most
	}{
		{name: "everything fits", ports: 10, answers: 10, maxExtra: 2},
		{name: "the AAAA does not fit", ports: 12, answers: 12, maxExtra: 1},
		{name: "neither address fits", ports: 12, edns: 512, answers: 12},
		{name: "an SRV record does not fit", ports: 13, tc: true, answers: 12},
		{name: "many SRV records", ports: 60, tc: true, answers: 12},
		{name: "EDNS room for all", ports: 60, edns: 4096, answers: 60, maxExtra: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := Entry{Name: "svc", VIP: netip.MustParseAddr("10.100.0.20"), VIP6: netip.MustParseAddr("fd00:ab::20")}
			for p := range tc.ports {
				e.Ports = append(e.Ports, catalog.Port{Name: "x", Protocol: catalog.TCP, Port: uint16(1000 + p)})
			}
			s := newTestServer(t, testConfig(), &testDir{def: newTestView(e)})
			raw := ask(t, s, mustPack(t, newQuery("_x._tcp.svc.ztna.internal.", dns.TypeSRV, tc.edns)), clientA, false)
			r := mustUnpack(t, raw)
			limit := max(int(tc.edns), dns.MinMsgSize)
			extra := len(r.Extra)
			if r.IsEdns0() != nil {
				extra--
			}
			if r.Truncated != tc.tc || len(raw) > limit || tc.tc && len(r.Answer) >= tc.ports || !tc.tc && len(r.Answer) != tc.ports || extra > tc.maxExtra {
				t.Errorf("TC %v, %d octets, %d SRV and %d additional records; want TC %v within %d octets, %d of %d SRV, at most %d additional",
					r.Truncated, len(raw), len(r.Answer), extra, tc.tc, limit, tc.answers, tc.ports, tc.maxExtra)
			}
		})
	}
}

package resolver

import (
	"slices"
	"strings"
	"testing"
)

func TestParseResolvConf(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string
	}{
		{name: "empty", text: "", want: nil},
		{name: "systemd-resolved", text: "# generated\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", want: []string{"127.0.0.53:53"}},
		{name: "several, in order", text: "nameserver 192.0.2.1\nnameserver 2001:db8::1\nnameserver 192.0.2.2\n",
			want: []string{"192.0.2.1:53", "[2001:db8::1]:53", "192.0.2.2:53"}},
		{name: "IPv6 with a zone", text: "nameserver fe80::1%eth0\n", want: []string{"[fe80::1%eth0]:53"}},
		{name: "comments and blanks", text: "  nameserver   192.0.2.1   # main\n;nameserver 192.0.2.9\n\n\tnameserver\t192.0.2.3;x\n",
			want: []string{"192.0.2.1:53", "192.0.2.3:53"}},
		{name: "bad addresses are skipped", text: "nameserver dns.example\nnameserver 300.1.1.1\nnameserver\nnameserver 192.0.2.4\n",
			want: []string{"192.0.2.4:53"}},
		{name: "IPv4-mapped is unmapped", text: "nameserver ::ffff:192.0.2.5\n", want: []string{"192.0.2.5:53"}},
		{name: "keyword must match exactly", text: "nameservers 192.0.2.1\nNAMESERVER 192.0.2.2\n", want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := parseResolvConf(strings.NewReader(tc.text))
			if got == nil {
				t.Fatal("nil slice, want an empty one")
			}
			var s []string
			for _, ap := range got {
				s = append(s, ap.String())
			}
			if !slices.Equal(s, tc.want) {
				t.Errorf("%v, want %v", s, tc.want)
			}
		})
	}
}

func TestSystemNameservers(t *testing.T) {
	// The file is the machine's: only the shape of the result can be checked.
	for _, ap := range SystemNameservers() {
		if !ap.IsValid() || ap.Port() != 53 || ap.Addr().Is4In6() {
			t.Errorf("nameserver %v, want a plain address on port 53", ap)
		}
	}
	if SystemNameservers() == nil {
		t.Error("nil, want a non-nil slice")
	}
}

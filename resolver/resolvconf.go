package resolver

import (
	"bufio"
	"io"
	"net/netip"
	"os"
	"strings"
)

// resolvConf is where the system's nameservers are configured.
const resolvConf = "/etc/resolv.conf"

// maxResolvConfLines bounds the lines read of a resolv.conf.
const maxResolvConfLines = 10000

// SystemNameservers returns the nameservers of /etc/resolv.conf, on port 53,
// in file order; an empty slice when the file is unreadable or names none.
func SystemNameservers() []netip.AddrPort {
	f, err := os.Open(resolvConf)
	if err != nil {
		return []netip.AddrPort{}
	}
	defer f.Close()
	return parseResolvConf(f)
}

// parseResolvConf returns the addresses of the "nameserver" lines of a
// resolv.conf (resolv.conf(5)); other lines and bad addresses are skipped.
func parseResolvConf(r io.Reader) []netip.AddrPort {
	out := []netip.AddrPort{}
	sc := bufio.NewScanner(r)
	for i := 0; i < maxResolvConfLines && sc.Scan(); i++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line, _, _ = strings.Cut(line, ";")
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil {
			out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
		}
	}
	return out
}

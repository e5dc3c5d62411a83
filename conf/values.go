package conf

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// validator converts raw values into typed ones, recording every error with
// its key path. dir is the directory relative file paths resolve against.
type validator struct {
	*errList
	dir string
	// tlsContent: look inside the TLS files (tlsFiles), as ztgate check
	// does; a role's start loads them itself (tunnel.NewCredentials).
	tlsContent bool
}

// duration parses a Go duration string; "" gives def. Negative durations are
// errors.
func (v *validator) duration(path, s string, def time.Duration) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		v.addf(path, "invalid duration %q (use a number with a unit: \"500ms\", \"5s\", \"2m\", \"1h\")", s)
		return def
	case d < 0:
		v.addf(path, "%s must not be negative", s)
		return def
	}
	return d
}

// positive checks that an explicitly set duration is greater than zero.
func (v *validator) positive(path string, d time.Duration) {
	if d <= 0 {
		v.addf(path, "must be greater than 0")
	}
}

// intOr returns *p, or def when the key is absent.
func intOr(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

// inRange checks lo ≤ n ≤ hi and reports whether it holds.
func (v *validator) inRange(path string, n, lo, hi int) bool {
	if n < lo || n > hi {
		v.addf(path, "%d is out of range %d..%d", n, lo, hi)
		return false
	}
	return true
}

// network parses a prefix that must be a network address (host bits zero).
// An IPv4-mapped prefix (::ffff:192.0.2.0/120) is read as its IPv4 one.
func (v *validator) network(path, s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err == nil {
		p = unmapPrefix(p)
	}
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			v.addf(path, "%q is an address, not a prefix (did you mean %s?)", s, netip.PrefixFrom(a, a.BitLen()))
		} else {
			v.addf(path, "invalid prefix %q", s)
		}
		return netip.Prefix{}, false
	}
	if m := p.Masked(); m != p {
		v.addf(path, "%s has host bits set (did you mean %s?)", s, m)
		return netip.Prefix{}, false
	}
	return p, true
}

// pool4 parses an IPv4 VIP pool of at least a /29; "" gives def.
func (v *validator) pool4(path, s string, def netip.Prefix) netip.Prefix {
	if s == "" {
		return def
	}
	p, ok := v.network(path, s)
	switch {
	case !ok:
		return def
	case !p.Addr().Is4():
		v.addf(path, "%s is not an IPv4 prefix (an IPv6 pool goes in pool6)", s)
		return def
	case p.Bits() > catalog.MaxPoolBits:
		v.addf(path, "%s is too small: a pool is at least a /29, which holds %d VIPs", s,
			poolRoom(netip.PrefixFrom(p.Addr(), catalog.MaxPoolBits).Masked()))
		return def
	case p.Bits() < catalog.MinPoolBits:
		v.addf(path, "%s is too large: a pool is at most a /8 (agents refuse a larger one)", s)
		return def
	}
	return p
}

// pool6 parses an optional IPv6 VIP pool, a /64 to a /126; "" gives an
// invalid prefix (no IPv6 pool).
func (v *validator) pool6(path, s string) netip.Prefix {
	if s == "" {
		return netip.Prefix{}
	}
	p, ok := v.network(path, s)
	switch {
	case !ok:
		return netip.Prefix{}
	case !p.Addr().Is6() || p.Addr().Is4In6():
		v.addf(path, "%s is not an IPv6 prefix", s)
		return netip.Prefix{}
	case !catalog.Pool6SizeOK(p):
		v.addf(path, "%s: an IPv6 pool is a /64 to a /126", s)
		return netip.Prefix{}
	}
	return p
}

// addr parses an IP address without zone; an IPv4-mapped IPv6 address
// (::ffff:192.0.2.1) is its IPv4 address.
func (v *validator) addr(path, s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		v.addf(path, "%q is not an IP address", s)
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// unmapPrefix returns the IPv4 prefix an IPv4-mapped IPv6 prefix of at least
// 96 bits covers, and any other prefix as it is.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if !p.Addr().Is4In6() || p.Bits() < 96 {
		return p
	}
	return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
}

// unmapAddrPort returns ap with an IPv4-mapped address replaced by its IPv4
// address: a socket bound to or dialling either reaches the same IPv4 peer.
func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// listenAddr parses ip:port of a local listener; port 0 picks a free port.
func (v *validator) listenAddr(path, s string) (netip.AddrPort, bool) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		v.addf(path, "%q is not ip:port (e.g. \"127.0.0.1:5353\" or \"[::1]:5353\")", s)
		return netip.AddrPort{}, false
	}
	return unmapAddrPort(ap), true
}

// listenAddrs parses a list of listeners, each once (compared parsed, so
// "127.0.0.1:053" is "127.0.0.1:53"). Port 0 may repeat: each picks its own.
func (v *validator) listenAddrs(path string, ss []string) []netip.AddrPort {
	var out []netip.AddrPort
	for i, s := range ss {
		p := index(path, i)
		ap, ok := v.listenAddr(p, s)
		switch {
		case !ok:
		case ap.Port() != 0 && slices.Contains(out, ap):
			v.listedTwice(p, s, ap.String())
		default:
			out = append(out, ap)
		}
	}
	return out
}

// servers parses a list of "ip" or "ip:port" entries of remote DNS servers,
// each once; the port defaults to 53.
func (v *validator) servers(path string, ss []string) []netip.AddrPort {
	var out []netip.AddrPort
	for i, s := range ss {
		p := index(path, i)
		ap, err := netip.ParseAddrPort(s)
		if a, aerr := netip.ParseAddr(s); aerr == nil && a.Zone() == "" {
			ap, err = netip.AddrPortFrom(a, 53), nil
		}
		if err != nil || ap.Port() == 0 {
			v.addf(p, "%q is not an IP address or ip:port", s)
			continue
		}
		ap = unmapAddrPort(ap)
		if slices.Contains(out, ap) {
			v.listedTwice(p, s, ap.String())
			continue
		}
		out = append(out, ap)
	}
	return out
}

// apiListen parses an admin API listener: "off" disables it (invalid
// AddrPort), "" gives def.
func (v *validator) apiListen(path, s string, def netip.AddrPort) netip.AddrPort {
	switch s {
	case "":
		return def
	case "off":
		return netip.AddrPort{}
	}
	ap, _ := v.listenAddr(path, s)
	return ap
}

// hostPortHint says how to write s, which is not host:port, when that is
// clear: a host name or IPv4 address without its port (the port of the
// docs' examples for path: 4434 for a gateway's listener, else the relay's
// 4433), a URL, or an IPv6 address without brackets.
func hostPortHint(path, s string) string {
	port := "4433"
	if path == "tunnel.listen" {
		port = "4434"
	}
	if _, rest, ok := strings.Cut(s, "://"); ok {
		return fmt.Sprintf(": write host:port without a scheme, as %q", strings.TrimSuffix(rest, "/"))
	}
	if strings.Count(s, ":") > 1 && !strings.Contains(s, "[") {
		return fmt.Sprintf(`: an IPv6 address and its port are written [ADDRESS]:PORT, e.g. "[2001:db8::1]:%s"`, port)
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is4() || !strings.ContainsAny(s, ":/") && s != "" && checkHostName(s) == nil {
		return fmt.Sprintf(": add the port, e.g. %q", net.JoinHostPort(s, port))
	}
	return ""
}

// hostPort checks a host:port string and returns its host. The port is a
// number 1..65535 (0 too for a listener); the host is an IP address or a host
// name, and may be empty only for a listener.
func (v *validator) hostPort(path, s string, listener bool) (string, bool) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		v.addf(path, "%q is not host:port%s", s, hostPortHint(path, s))
		return "", false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 && !listener {
		v.addf(path, "%q: port %q is not a number 1..65535", s, port)
		return "", false
	}
	if host == "" && listener {
		return "", true
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return host, true
	}
	if err := checkHostName(host); err != nil {
		v.addf(path, "%q: %w", s, err)
		return "", false
	}
	return host, true
}

// listedTwice reports an entry s equal to an earlier one of its list; canon
// is its normalised form, named when it differs from what was written.
func (v *validator) listedTwice(path, s, canon string) {
	if canon == s {
		v.addf(path, "%q is listed twice", s)
		return
	}
	v.addf(path, "%q is listed twice (as %s)", s, canon)
}

package conf

import (
	"fmt"
	"strings"
	"unicode"
)

// checkLabel reports why s is not a DNS label: 1..63 characters of a-z, 0-9
// and '-', neither first nor last a '-'. Upper case is accepted (callers
// lower-case it).
func checkLabel(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("must not be empty")
	case len(s) > 63:
		return fmt.Errorf("%q is longer than 63 characters", s)
	case s[0] == '-' || s[len(s)-1] == '-':
		return fmt.Errorf("%q must not start or end with '-'", s)
	}
	for _, r := range s {
		if !isLabelChar(r) {
			return fmt.Errorf("%q is not a DNS label: %q is not one of a-z, 0-9, '-'", s, r)
		}
	}
	return nil
}

func isLabelChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-'
}

// checkDomain reports why s (with or without a trailing dot) is not a domain
// name made of DNS labels (RFC 1123 host names: labels may start with a
// digit). The root "." is not accepted.
func checkDomain(s string) error {
	name := strings.TrimSuffix(s, ".")
	if name == "" {
		return fmt.Errorf("%q is not a domain name", s)
	}
	if len(name) > 253 {
		return fmt.Errorf("%q is longer than 253 characters", s)
	}
	for label := range strings.SplitSeq(name, ".") {
		if err := checkLabel(label); err != nil {
			return fmt.Errorf("%q is not a domain name: label %w", s, err)
		}
	}
	return nil
}

// checkHostName is checkDomain plus RFC 1123's rule that the last label is
// not all digits, so that a mistyped IPv4 address is not taken for a name.
func checkHostName(s string) error {
	if err := checkDomain(s); err != nil {
		return err
	}
	name := strings.TrimSuffix(s, ".")
	last := name[strings.LastIndexByte(name, '.')+1:]
	if strings.Trim(last, "0123456789") == "" {
		return fmt.Errorf("%q is neither an IP address nor a host name", s)
	}
	return nil
}

// checkSRVName reports why s is not an SRV owner name such as
// _http._tcp.app.corp.example.
func checkSRVName(s string) error {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) != 3 || !strings.HasPrefix(parts[0], "_") || !strings.HasPrefix(parts[1], "_") {
		return fmt.Errorf("%q is not an SRV name like _http._tcp.app.corp.example", s)
	}
	for _, l := range parts[:2] {
		if err := checkLabel(l[1:]); err != nil {
			return fmt.Errorf("%q is not an SRV name: %w", s, err)
		}
	}
	return checkHostName(parts[2])
}

// checkInterfaceName reports why s is not a valid Linux interface name
// (dev_valid_name: 1..15 bytes, not "." or "..", no '/', ':' or whitespace).
func checkInterfaceName(s string) error {
	switch {
	case s == "" || len(s) > 15:
		return fmt.Errorf("%q is not 1 to 15 characters long", s)
	case s == "." || s == "..":
		return fmt.Errorf("%q is not a valid interface name", s)
	case strings.ContainsFunc(s, func(r rune) bool { return r == '/' || r == ':' || r == 0 || unicode.IsSpace(r) }):
		return fmt.Errorf("%q contains '/', ':' or white space", s)
	}
	return nil
}

// fqdn lower-cases a domain name and adds the trailing dot.
func fqdn(s string) string {
	return strings.ToLower(strings.TrimSuffix(s, ".")) + "."
}

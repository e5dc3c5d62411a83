package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// runPKI makes the certificates of a deployment: a CA, and per peer a key
// and a certificate carrying its ztgate identity.
func runPKI(args []string, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprintln(stderr, `usage:
  ztgate pki init  -dir DIR [-name NAME] [-days N]
      create DIR/ca.crt and DIR/ca.key (the key never leaves DIR); an existing CA is never replaced
  ztgate pki issue -dir DIR -role agent|gateway|relay -tenant TENANT -name NAME [-dns NAMES] [-ip ADDRS] [-days N] [-out PREFIX] [-force]
      create PREFIX.crt and PREFIX.key (default DIR/NAME) for identity ztna://TENANT/ROLE/NAME;
      a relay needs the names its clients dial, a gateway with a [tunnel] listen those of its
      listener: -dns and/or -ip (comma-separated); an agent takes none.
      Existing files are replaced only with -force (a renewal).`)
	}
	if len(args) == 0 {
		usage()
		return 2
	}
	switch args[0] {
	case "init":
		return pkiInit(args[1:], stdout, stderr)
	case "issue":
		return pkiIssue(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		usage()
		return 0
	}
	usage()
	return 2
}

func pkiInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pki init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "pki", "`directory` for the CA")
	name := fs.String("name", "ztgate CA", "the CA's common name")
	days := fs.Int("days", 3650, "validity in days")
	if code, ok := parseFlags(fs, args, 0); !ok {
		return code
	}
	if !validDays("pki init", *days, stderr) {
		return 2
	}
	if strings.TrimSpace(*name) == "" {
		fmt.Fprintln(stderr, "ztgate pki init: -name: a CA needs a name")
		return 2
	}
	crt, key := filepath.Join(*dir, "ca.crt"), filepath.Join(*dir, "ca.key")
	// No -force: a new CA orphans every certificate the old one signed.
	for _, p := range []string{crt, key} {
		if exists(p) {
			fmt.Fprintf(stderr, "ztgate pki init: %s already exists: pki init never replaces a CA, "+
				"which would leave every certificate it signed unverifiable; make a new one with another -dir "+
				"(to move peers to it, see \"Certificates\" in docs/operations.md)\n", p)
			return 1
		}
	}
	ca, err := tunnel.NewCA(*name, time.Duration(*days)*24*time.Hour)
	if err == nil {
		err = writeNewPair(crt, key, ca.CertPEM(), ca.KeyPEM())
	}
	if err != nil {
		fmt.Fprintln(stderr, "ztgate pki init:", err)
		return 1
	}
	fmt.Fprintf(stdout, "created %s and %s, valid until %s\n", crt, key, ca.Certificate().NotAfter.UTC().Format(time.DateOnly))
	fmt.Fprintf(stdout, "%s signs every identity: keep it on this machine; peers get %s only\n", key, crt)
	return 0
}

func pkiIssue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pki issue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "pki", "`directory` of the CA")
	role := fs.String("role", "", "agent, gateway or relay")
	tenant := fs.String("tenant", "", "the tenant of the identity (agents reach the services that list it)")
	name := fs.String("name", "", "the peer's name")
	dns := fs.String("dns", "", "comma-separated DNS server names (relay, gateway listener)")
	ips := fs.String("ip", "", "comma-separated IP server addresses (relay, gateway listener)")
	days := fs.Int("days", 90, "validity in days")
	out := fs.String("out", "", "output `prefix` (default DIR/NAME)")
	force := fs.Bool("force", false, "replace PREFIX.crt and PREFIX.key if they exist (a renewal)")
	if code, ok := parseFlags(fs, args, 0); !ok {
		return code
	}
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "ztgate pki issue: "+format+"\n", a...)
		return code
	}
	if *role == "" || *tenant == "" || *name == "" {
		return fail(2, "-role, -tenant and -name are required")
	}
	if !validDays("pki issue", *days, stderr) {
		return 2
	}
	// Everything about the request is checked before the CA is read.
	req, err := issueRequest(*tenant, *role, *name, *dns, *ips)
	if err != nil {
		return fail(2, "%v", err)
	}
	req.Validity = time.Duration(*days) * 24 * time.Hour
	prefix := *out
	if prefix == "" {
		prefix = filepath.Join(*dir, strings.ToLower(*name)) // as the identity: validated ASCII
	} else if msg := checkPrefix(prefix); msg != "" {
		return fail(2, "-out %q: %s; -out DIR/laptop writes DIR/laptop.crt and DIR/laptop.key", prefix, msg)
	}
	crt, key := prefix+".crt", prefix+".key"
	caCrt, caKey := filepath.Join(*dir, "ca.crt"), filepath.Join(*dir, "ca.key")
	for _, p := range []string{crt, key} {
		if sameFile(p, caCrt) || sameFile(p, caKey) {
			return fail(2, "%s is a file of the CA; choose another -name or -out", p)
		}
	}
	if !*force {
		for _, p := range []string{crt, key} {
			if exists(p) {
				return fail(1, "%s already exists: pass -force to replace it (a renewal), or choose another -name or -out", p)
			}
		}
	}
	ca, err := tunnel.LoadCA(caCrt, caKey)
	if err != nil {
		if !exists(caCrt) && !exists(caKey) {
			return fail(1, "no CA in %s: run `ztgate pki init -dir %s` first", *dir, *dir)
		}
		return fail(1, "%v", err)
	}
	req.NotBefore = time.Now().Add(-tunnel.ClockSkew)
	if err := withinCA(ca.Certificate(), req, *dir); err != nil {
		return fail(1, "%v", err)
	}
	crtPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return fail(1, "%v", err)
	}
	if *force {
		err = writePair(filepath.Dir(prefix), crt, key, crtPEM, keyPEM)
	} else {
		err = writeNewPair(crt, key, crtPEM, keyPEM)
	}
	if err != nil {
		return fail(1, "%v", err)
	}
	if err := describeIssued(stdout, crt, key, crtPEM); err != nil {
		return fail(1, "written, but cannot be read back: %v", err)
	}
	return 0
}

// issueRequest builds the request of pki issue from its flags, refusing
// what no peer could use: an identity IdentityFromCert would not read back
// as given, server names a client could not match, a relay without them
// (every handshake would fail) and an agent with them (it never listens).
func issueRequest(tenant, role, name, dns, ips string) (tunnel.IssueRequest, error) {
	req := tunnel.IssueRequest{Tenant: tenant, Role: role, Name: name}
	if err := tunnel.ValidateIdentity(tenant, role, name); err != nil {
		return req, err
	}
	var err error
	if req.DNSNames, err = parseDNSNames(dns); err != nil {
		return req, err
	}
	if req.IPs, err = parseIPs(ips); err != nil {
		return req, err
	}
	servers := len(req.DNSNames) > 0 || len(req.IPs) > 0
	switch r := strings.ToLower(role); {
	case r == tunnel.RoleRelay && !servers:
		return req, errors.New("a relay's certificate needs the names its agents and gateways dial, which they verify: " +
			"-dns relay.example.net and/or -ip 203.0.113.1 (comma-separated, as many as it is reached by)")
	case r == tunnel.RoleAgent && servers:
		return req, errors.New("an agent is only ever a client: -dns and -ip are for relays and gateways that listen")
	}
	return req, nil
}

// withinCA checks that the CA certificate caCert is valid and outlives
// the certificate req asks for: peers refuse a certificate from the CA's
// end on, and an expired CA's certificates at once.
func withinCA(caCert *x509.Certificate, req tunnel.IssueRequest, dir string) error {
	end, notAfter := caCert.NotAfter, req.NotBefore.Add(req.Validity)
	left := int(end.Sub(req.NotBefore) / (24 * time.Hour))
	switch {
	case time.Now().After(end):
		return fmt.Errorf("the CA of %s expired on %s and signs nothing any more: make a new one "+
			"(\"Certificates\" in docs/operations.md)", dir, end.UTC().Format(time.DateOnly))
	case !notAfter.After(end):
		return nil
	case left < 1:
		return fmt.Errorf("the CA of %s expires on %s, in less than a day: rotate it "+
			"(\"Certificates\" in docs/operations.md)", dir, end.UTC().Format(time.RFC3339))
	}
	return fmt.Errorf("the CA of %s expires on %s, before a certificate of %d days would: pass -days %d or less "+
		"(peers refuse a certificate whose CA expired), and rotate the CA in time (\"Certificates\" in docs/operations.md)",
		dir, end.UTC().Format(time.DateOnly), int(req.Validity/(24*time.Hour)), left)
}

// describeIssued tells what the certificate just written carries, read
// back from it: the identity, the validity and the server names.
func describeIssued(w io.Writer, crt, key string, crtPEM []byte) error {
	block, _ := pem.Decode(crtPEM)
	if block == nil {
		return fmt.Errorf("%s: no PEM block", crt)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("%s: %w", crt, err)
	}
	id, err := tunnel.IdentityFromCert(cert)
	if err != nil {
		return fmt.Errorf("%s: %w", crt, err)
	}
	fmt.Fprintf(w, "created %s and %s for ztna://%s/%s/%s, valid until %s\n", crt, key,
		id.Tenant, id.Role, id.Name, cert.NotAfter.UTC().Format(time.DateOnly))
	names := slices.Clone(cert.DNSNames)
	for _, ip := range cert.IPAddresses {
		names = append(names, ip.String())
	}
	switch {
	case len(names) > 0:
		fmt.Fprintf(w, "server names (what its clients may dial): %s\n", strings.Join(names, ", "))
	case id.Role == tunnel.RoleGateway:
		fmt.Fprintln(w, "no server names: enough behind a relay and for its direct and forwarded paths (agents know the gateway by identity there); "+
			"agents that dial its [tunnel] listen as their tunnel.server verify the names they dial, which need -dns or -ip")
	}
	return nil
}

// parseDNSNames parses -dns: comma-separated host names.
func parseDNSNames(list string) ([]string, error) {
	var names []string
	for _, s := range splitList(list) {
		if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
			return nil, fmt.Errorf("-dns %s is an IP address: pass it with -ip %s", s, a.WithZone(""))
		}
		if host, port, err := net.SplitHostPort(s); err == nil && host != "" && port != "" && strings.Trim(port, "0123456789") == "" {
			flag := "-dns"
			if _, err := netip.ParseAddr(host); err == nil {
				flag = "-ip"
			}
			return nil, fmt.Errorf("-dns %s has a port: a certificate names the host alone: %s %s", s, flag, host)
		}
		name, err := tunnel.NormalizeDNSName(s)
		if err != nil {
			return nil, fmt.Errorf("-dns %w", err)
		}
		names = append(names, name)
	}
	return names, nil
}

// parseIPs parses -ip: comma-separated addresses without zone or port.
func parseIPs(list string) ([]netip.Addr, error) {
	var ips []netip.Addr
	for _, s := range splitList(list) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			if ap, perr := netip.ParseAddrPort(s); perr == nil {
				return nil, fmt.Errorf("-ip %s has a port: a certificate names the address alone: -ip %s", s, ap.Addr())
			}
			if a, perr := netip.ParseAddr(strings.Trim(s, "[]")); perr == nil {
				return nil, fmt.Errorf("-ip %s: give the address without brackets: -ip %s", s, a)
			}
			if name, derr := tunnel.NormalizeDNSName(s); derr == nil {
				return nil, fmt.Errorf("-ip %s is not an IP address: a DNS name goes with -dns %s", s, name)
			}
			return nil, fmt.Errorf("-ip %q is not an IP address", s)
		}
		if a.Zone() != "" {
			return nil, fmt.Errorf("-ip %s has a zone: a certificate names the address alone: -ip %s", s, a.WithZone(""))
		}
		ips = append(ips, a)
	}
	return ips, nil
}

// checkPrefix says what is wrong with an -out prefix, or "".
func checkPrefix(prefix string) string {
	base := filepath.Base(prefix)
	switch {
	case strings.HasSuffix(prefix, string(filepath.Separator)) || strings.HasSuffix(prefix, "/") || base == "." || base == "..":
		return "a prefix of file names, not a directory"
	case strings.HasSuffix(prefix, ".crt") || strings.HasSuffix(prefix, ".key"):
		return "a prefix, without .crt or .key"
	}
	return ""
}

// maxDays bounds -days: 100 years, far below where the validity would
// overflow a time.Duration (about 106,000 days) and wrap to minutes.
const maxDays = 36500

// validDays reports whether -days is a validity a certificate can have,
// saying why not on stderr.
func validDays(cmd string, days int, stderr io.Writer) bool {
	if days < 1 || days > maxDays {
		fmt.Fprintf(stderr, "ztgate %s: -days %d: the validity must be 1 to %d days\n", cmd, days, maxDays)
		return false
	}
	return true
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

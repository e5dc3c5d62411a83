package conf

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// OwnTLS are the TLS files a role loads as its own at start (its tunnel's
// or the relay's), as a valid file configures them.
type OwnTLS struct {
	Section       string // the keys' section: "relay" or "tunnel"
	Cert, Key, CA string // resolved paths
	Insecure      bool

	file  string      // the file's label in messages
	lines *keyLineMap // the lines of its keys
}

// CertError returns err, a problem of the certificate found by loading
// the files (the role's identity in it), as Check tells the errors of the
// file: "file:line: section.cert: err".
func (o *OwnTLS) CertError(err error) error { return o.FileError("cert", err) }

// FileError is CertError for the key of the section named key: "cert",
// "key" or "ca".
func (o *OwnTLS) FileError(key string, err error) error {
	path := join(o.Section, key)
	return &fieldError{file: o.file, line: o.lines.lineOf(path), path: path, err: err}
}

// Check reads the file at path, detects the role it configures and
// validates it as that role. The role is told by the file's top-level
// [gateway], [relay] or [agent] table; a file with none of them but with
// [[service]] tables, or with [tun] and [[tenant]], is a gateway. Unlike
// Load, it also looks inside the TLS files (a certificate, the key of it,
// CA certificates), so that what the role would fail to load at start fails
// the check, named by key and file. On failure the error is an Errors
// value; the role is returned whenever it is known. A valid file's own TLS
// files come back too when the role opens a tunnel (nil otherwise), so
// that the caller can load them as the role will, its identity included,
// which conf does not read.
func Check(path string) (Role, *OwnTLS, error) {
	doc, err := readTOML(path)
	if err != nil {
		return "", nil, err
	}
	doc.tlsContent = true
	role, err := detectRole(doc.tree)
	if err != nil {
		return "", nil, Errors{fmt.Errorf("%s: %w", fileLabel(path), err)}
	}
	var own *OwnTLS
	switch role {
	case RoleRelay:
		var c *Relay
		if c, err = relayFromTree(path, doc); err == nil {
			own = &OwnTLS{Section: "relay", Cert: c.Cert, Key: c.Key, CA: c.CA, Insecure: c.Insecure}
		}
	case RoleAgent:
		var c *Agent
		if c, err = agentFromTree(path, doc); err == nil {
			t := c.Tunnel
			own = &OwnTLS{Section: "tunnel", Cert: t.Cert, Key: t.Key, CA: t.CA, Insecure: t.Insecure}
		}
	default:
		var c *Gateway
		if c, err = gatewayFromTree(path, doc); err == nil && (c.Tunnel.Relay != "" || c.Tunnel.Listen != "") {
			t := c.Tunnel
			own = &OwnTLS{Section: "tunnel", Cert: t.Cert, Key: t.Key, CA: t.CA, Insecure: t.Insecure}
		}
	}
	if own != nil {
		own.file, own.lines = fileLabel(path), doc.lines
	}
	return role, own, err
}

// wrongRole refuses a file of another role than want, as its role's table
// tells ([relay] for a relay, ...): the file's keys would each be an
// unknown key of want, and its required keys missing, which says nothing
// of the cause. A file whose role cannot be told is for want to judge.
func wrongRole(want Role, name string, tree map[string]any) error {
	got, err := detectRole(tree)
	if err != nil || got == want || got == "" {
		return nil
	}
	article := func(r Role) string {
		if r == RoleAgent {
			return "an " + string(r)
		}
		return "a " + string(r)
	}
	how := "[" + string(got) + "] table"
	if _, ok := tree[string(got)]; !ok {
		how = "[[service]] tables" // a gateway told by its services
	}
	return fmt.Errorf("%s: the file configures %s (its %s), not %s: run `ztgate %s -config %s`, or give the %s's own file",
		fileLabel(name), article(got), how, article(want), got, name, want)
}

// detectRole tells the role of a parsed file.
func detectRole(tree map[string]any) (Role, error) {
	var found []Role
	for _, r := range []Role{RoleGateway, RoleRelay, RoleAgent} {
		if _, ok := tree[string(r)]; ok {
			found = append(found, r)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
	default:
		tables := make([]string, len(found))
		for i, r := range found {
			tables[i] = "[" + string(r) + "]"
		}
		return "", fmt.Errorf("the file has %s tables: a file configures one role", strings.Join(tables, " and "))
	}
	_, services := tree["service"]
	_, tun := tree["tun"]
	_, tenants := tree["tenant"]
	if services || tun && tenants {
		return RoleGateway, nil
	}
	keys := slices.Sorted(maps.Keys(tree))
	what := "the file is empty"
	if len(keys) > 0 {
		what = "top-level keys: " + strings.Join(keys, ", ")
	}
	return "", fmt.Errorf("cannot tell the role of the file (%s): add a [gateway], [relay] or [agent] table", what)
}

package conf

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Check reads the file at path, detects the role it configures and
// validates it as that role. The role is told by the file's top-level
// [gateway], [relay] or [agent] table; a file with none of them but with
// [[service]] tables, or with [tun] and [[tenant]], is a gateway. Unlike
// Load, it also looks inside the TLS files (a certificate, the key of it,
// CA certificates), so that what the role would fail to load at start fails
// the check, named by key and file. On failure
// the error is an Errors value; the role is returned whenever it is known.
func Check(path string) (Role, error) {
	doc, err := readTOML(path)
	if err != nil {
		return "", err
	}
	doc.tlsContent = true
	role, err := detectRole(doc.tree)
	if err != nil {
		return "", Errors{fmt.Errorf("%s: %w", fileLabel(path), err)}
	}
	switch role {
	case RoleRelay:
		_, err = relayFromTree(path, doc)
	case RoleAgent:
		_, err = agentFromTree(path, doc)
	default:
		_, err = gatewayFromTree(path, doc)
	}
	return role, err
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

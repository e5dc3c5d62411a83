package gateway

import "fmt"

// quietGateway opens most component tests' configurations: state in the
// test's STATE directory, no admin API.
const quietGateway = `
[gateway]
state_dir = "STATE"
[api]
listen = "off"
`

// acmeTenant is the tenant of one-tenant tests: acme from 198.51.100.0/24.
const acmeTenant = `
[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]
`

// twoTenants are the tenants most gateway tests use: acme from
// 198.51.100.0/24 and globex from 203.0.113.0/24.
const twoTenants = acmeTenant + `[[tenant]]
name = "globex"
sources = ["203.0.113.0/24"]
`

// tcpService is a [[service]] table without health checks: name, for
// tenants (the contents of the TOML list, e.g. `"*"` or `"acme"`), at vip,
// TCP port 7 to target on backend.
func tcpService(name, tenants, vip, backend string, target int) string {
	return fmt.Sprintf(`
[[service]]
name = %q
tenants = [%s]
vip = %q
backends = [%q]
  [[service.port]]
  protocol = "tcp"
  port = 7
  target = %d
  [service.health]
  type = "none"
`, name, tenants, vip, backend, target)
}

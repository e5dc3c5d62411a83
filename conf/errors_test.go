package conf

import (
	"errors"
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

func TestAllErrorsAtOnce(t *testing.T) {
	const file = `
[gateway]
name = "gw1"
drain_timeout = "soon"

[tun]
mtu = "big"
pool = "10.100.0.7/24"

[[tenant]]
name = "acme"
sources = ["198.51.100.0/24"]

[[service]]
name = "web"
tenants = ["acme", "nobody"]
backends = ["192.0.2.10:80"]
  [[service.port]]
  protocol = "tcp"
  port = 80

[[service]]
name = "db"
tenants = ["acme"]
backends = ["192.0.2.20"]
  [[service.port]]
  protocol = "tcpp"
  port = 5432

[[service]]
name = "dns"
tenants = ["*"]
backends = ["192.0.2.53"]
  [[service.port]]
  protocol = "udp"
  port = 53
  [service.health]
  type = "udp"
  intervl = "5s"
  interval = "5x"
`
	_, err := ParseGateway("/etc/ztgate/gateway.toml", []byte(file))
	wantErrors(t, err, []string{
		"gateway.toml:39: service[2].health.intervl: unknown key",
		`gateway.toml:7: tun.mtu: expected an integer, got string "big"`,
		"gateway.toml:8: tun.pool: 10.100.0.7/24 has host bits set (did you mean 10.100.0.0/24?)",
		`gateway.toml:4: gateway.drain_timeout: invalid duration "soon"`,
		`gateway.toml:16: service[0].tenants[1]: unknown tenant "nobody"`,
		`gateway.toml:17: service[0].backends[0]: "192.0.2.10:80": a backend has no port`,
		`gateway.toml:27: service[1].port[0].protocol: "tcpp" is not tcp or udp`,
		`gateway.toml:40: service[2].health.interval: invalid duration "5x"`,
	})
	if got := errorLines(t, err); err.Error() != strings.Join(got, "\n") {
		t.Errorf("Error() = %q, want the lines joined by newlines", err.Error())
	}
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		name, toml, want string
	}{
		{"unterminated string", "[gateway]\nname = \"gw1\nx = 1\n", `^gw\.toml:2:12: strings cannot contain newlines$`},
		{"bare word value", "[gateway]\nname = gw1\n", `^gw\.toml:2:8: expected value but found "gw" instead$`},
		{"key defined twice", "[gateway]\n  name = \"a\"\n  name = \"b\"\n", `^gw\.toml:3:3: Key 'gateway.name' has already been defined\.$`},
		{"table after array of tables", "[[service]]\nname = \"a\"\n[service]\n", `^gw\.toml:3:\d+: `},
		{"bad table header", "[tun\n", `^gw\.toml:\d+:\d+: expected '\.' or '\]' to end table name`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseGateway("/some/dir/gw.toml", []byte(tc.toml))
			lines := errorLines(t, err)
			if len(lines) != 1 || !regexp.MustCompile(tc.want).MatchString(lines[0]) {
				t.Errorf("errors %q, want one matching %s", lines, tc.want)
			}
		})
	}
}

func TestErrorsUnwrap(t *testing.T) {
	_, err := ParseGateway("gw.toml", []byte("[tunnel]\ncert = \"/nonexistent/cert.pem\"\n"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(%v, fs.ErrNotExist) = false", err)
	}
	if errors.Is(Errors{errors.New("x")}, fs.ErrNotExist) {
		t.Error("errors.Is matches an unrelated error")
	}
}

func TestUnnamedFile(t *testing.T) {
	_, err := ParseGateway("", []byte("[gateway]\nnme = 1\n"))
	wantErrors(t, err, []string{"config:2: gateway.nme: unknown key"})
	_, err = ParseGateway("", []byte("[gateway\n"))
	wantErrors(t, err, []string{"config:2:"})
}

package conf

import (
	"errors"
	"strings"
	"syscall"
	"testing"
)

// TestUnknownKeyNearest: a misspelt key names the key it most likely meant
// (a new user's "prot" for port, "tunel" for the [tunnel] table whose
// absence then makes the services' tenants unknown), and an unrelated or
// short key gets no guess.
func TestUnknownKeyNearest(t *testing.T) {
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"transposed", "[gateway]\nnmae = \"gw\"\n", "gw.toml:2: gateway.nmae: unknown key (did you mean name?)"},
		{"table", "[tunel]\nrelay = \"r:4433\"\n", "gw.toml:1: tunel: unknown key (did you mean tunnel?)"},
		{"nested", gatewayHead + "[dns]\nupstream = []\n", "dns.upstream: unknown key (did you mean upstreams?)"},
		{"capitals", "[gateway]\nName = \"gw\"\n", "gateway.Name: unknown key (did you mean name?)"},
		{"unrelated", "[gateway]\ncolour = 1\n", "gateway.colour: unknown key"},
		{"short", "[api]\nls = 1\n", "api.ls: unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErrorLine(t, tc.toml, "unknown key", tc.want)
		})
	}
	for _, tc := range []struct {
		a, b string
		d    int
	}{{"", "abc", 3}, {"prot", "port", 1}, {"intervl", "interval", 1}, {"abc", "abc", 0}, {"kitten", "sitting", 3}} {
		if d := editDistance(tc.a, tc.b); d != tc.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, d, tc.d)
		}
	}
}

// TestConfigIsDirectory: a -config that names a directory says so and
// what to do, for every role (it said "read DIR: is a directory").
func TestConfigIsDirectory(t *testing.T) {
	dir := t.TempDir()
	want := "conf: " + dir + ": is a directory: name the configuration file itself, not its directory"
	_, _, err := Check(dir)
	if err == nil || err.Error() != want {
		t.Errorf("Check(dir) = %v, want %q", err, want)
	}
	if !errors.Is(err, syscall.EISDIR) {
		t.Errorf("Check(dir) = %v, not EISDIR", err)
	}
	if _, err := LoadRelay(dir); err == nil || err.Error() != want {
		t.Errorf("LoadRelay(dir) = %v, want %q", err, want)
	}
}

// TestHostPortHint: an address that is not host:port says how to write
// it: a relay's address without its port (a new user's first try), an IPv4
// listener without one, an unbracketed IPv6 address, a URL. It said only
// `"relay.example.net" is not host:port`.
func TestHostPortHint(t *testing.T) {
	gw := func(tunnel string) string {
		return "[gateway]\nname = \"gw\"\n[tunnel]\n" + tunnel + "\ninsecure = true\n"
	}
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"relay without port", gw(`relay = "relay.example.net"`), `gw.toml:4: tunnel.relay: "relay.example.net" is not host:port: add the port, e.g. "relay.example.net:4433"`},
		{"listener without port", gw(`listen = "0.0.0.0"`), `tunnel.listen: "0.0.0.0" is not host:port: add the port, e.g. "0.0.0.0:4434"`},
		{"IPv6 without brackets", gw(`relay = "2001:db8::1:4433"`), `tunnel.relay: "2001:db8::1:4433" is not host:port: an IPv6 address and its port are written [ADDRESS]:PORT, e.g. "[2001:db8::1]:4433"`},
		{"URL", gw(`relay = "quic://relay.example.net:4433/"`), `tunnel.relay: "quic://relay.example.net:4433/" is not host:port: write host:port without a scheme, as "relay.example.net:4433"`},
		{"nothing to say", gw(`relay = "a b"`), `tunnel.relay: "a b" is not host:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErrorLine(t, tc.toml, "host:port", tc.want)
		})
	}
}

// TestWrongRoleFile: a role given another role's file says which role the
// file is for and what to run, in one error; it said "relay.toml:1: relay:
// unknown key" and every required key of the role missing.
func TestWrongRoleFile(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"agent.toml":    "[agent]\nname = \"laptop\"\n",
		"relay.toml":    "[relay]\nname = \"relay1\"\n",
		"services.toml": "[[service]]\nname = \"web\"\n",
	})
	for _, tc := range []struct {
		load func(string) error
		file string
		want string
	}{
		{func(p string) error { _, err := LoadRelay(p); return err }, "agent.toml",
			"agent.toml: the file configures an agent (its [agent] table), not a relay: run `ztgate agent -config " + dir + "/agent.toml`, or give the relay's own file"},
		{func(p string) error { _, err := LoadGateway(p); return err }, "relay.toml",
			"relay.toml: the file configures a relay (its [relay] table), not a gateway: run `ztgate relay -config " + dir + "/relay.toml`, or give the gateway's own file"},
		{func(p string) error { _, err := LoadAgent(p); return err }, "services.toml",
			"services.toml: the file configures a gateway (its [[service]] tables), not an agent: run `ztgate gateway -config " + dir + "/services.toml`, or give the agent's own file"},
	} {
		if err := tc.load(dir + "/" + tc.file); err == nil || err.Error() != tc.want {
			t.Errorf("%s: %v\nwant %s", tc.file, err, tc.want)
		}
	}
}

// wantErrorLine parses toml as a gateway's file and checks that the last
// line of its errors that contains about ends in want.
func wantErrorLine(t *testing.T, toml, about, want string) {
	t.Helper()
	_, err := ParseGateway("gw.toml", []byte(toml))
	if err == nil {
		t.Fatal("no error")
	}
	var line string
	for _, l := range strings.Split(err.Error(), "\n") {
		if strings.Contains(l, about) {
			line = l
		}
	}
	if !strings.HasSuffix(line, want) {
		t.Errorf("error %q, want it to end in %q (all: %v)", line, want, err)
	}
}

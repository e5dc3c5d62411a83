package conf

import (
	"bytes"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/catalog"
)

// TestChangedKeys edits one file of each role and checks the keys named.
func TestChangedKeys(t *testing.T) {
	const agentBase = `
[agent]
name = "laptop"
[tunnel]
server = "relay.example.net:4433"
insecure_allow_unauthenticated = true
`
	relay := func(t *testing.T, text string) *Relay {
		t.Helper()
		r, err := ParseRelay("relay.toml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	agent := func(t *testing.T, text string) *Agent {
		t.Helper()
		a, err := ParseAgent("agent.toml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	gateway := func(t *testing.T, text string) *Gateway {
		t.Helper()
		g, err := ParseGateway("gateway.toml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	cases := []struct {
		name string
		diff func(t *testing.T) []string
		want []string
	}{
		{"relay: the same file", func(t *testing.T) []string {
			return ChangedKeys(relay(t, insecureRelay), relay(t, insecureRelay))
		}, nil},
		{"relay: listen, pool, forward ports, api, a pin", func(t *testing.T) []string {
			return ChangedKeys(relay(t, insecureRelay), relay(t, insecureRelay+`
listen = "0.0.0.0:5433"
pool = "10.8.0.0/24"
forward_ports = "4440-4441"
[api]
listen = "127.0.0.1:9000"
[[pin]]
service = "web"
vip = "10.8.0.10"
`))
		}, []string{"relay.listen", "relay.pool", "api.listen", "pin", "relay.forward_ports"}},
		{"relay: pins reordered are no change", func(t *testing.T) []string {
			return ChangedKeys(relay(t, insecureRelay+twoPins("web", "db")), relay(t, insecureRelay+twoPins("db", "web")))
		}, nil},
		{"relay: a pin moved to another VIP is a change", func(t *testing.T) []string {
			return ChangedKeys(relay(t, insecureRelay+twoPins("web", "db")), relay(t, insecureRelay+strings.Replace(twoPins("web", "db"), "10.100.0.11", "10.100.0.12", 1)))
		}, []string{"pin"}},
		{"agent: dns.listen reordered is no change", func(t *testing.T) []string {
			return ChangedKeys(agent(t, agentBase+"[dns]\nlisten = [\"127.0.0.1:5353\", \"127.0.0.2:53\"]\n"),
				agent(t, agentBase+"[dns]\nlisten = [\"127.0.0.2:53\", \"127.0.0.1:5353\"]\n"))
		}, nil},
		{"agent: dns.listen with one listener replaced is a change", func(t *testing.T) []string {
			return ChangedKeys(agent(t, agentBase+"[dns]\nlisten = [\"127.0.0.1:5353\", \"127.0.0.2:53\"]\n"),
				agent(t, agentBase+"[dns]\nlisten = [\"127.0.0.2:53\", \"127.0.0.3:53\"]\n"))
		}, []string{"dns.listen"}},
		{"relay: ttl moves the hold-down it is the default of", func(t *testing.T) []string {
			return ChangedKeys(relay(t, insecureRelay), relay(t, insecureRelay+"ttl = \"1m\"\n"))
		}, []string{"relay.ttl", "relay.vip_hold_down"}},
		{"agent: server, tun, dns", func(t *testing.T) []string {
			return ChangedKeys(agent(t, agentBase), agent(t, `
[agent]
name = "laptop"
[tunnel]
server = "relay.example.net:5433"
insecure_allow_unauthenticated = true
[tun]
mtu = 1400
address = "100.64.0.9"
[dns]
listen = ["127.0.0.1:5353"]
`))
		}, []string{"tunnel.server", "tun.mtu", "tun.address", "dns.listen"}},
		{"agent: another host names the server_name it is the default of", func(t *testing.T) []string {
			return ChangedKeys(agent(t, agentBase), agent(t, strings.Replace(agentBase, "relay.example.net", "relay2.example.net", 1)))
		}, []string{"tunnel.server", "tunnel.server_name"}},
		{"gateway: keys of sections, services, tenants", func(t *testing.T) []string {
			return ChangedKeys(gateway(t, gatewayHead+webService), gateway(t, strings.Replace(gatewayHead, "gw1", "gw2", 1)+`
[tun]
mtu = 1400
[limits]
max_flows = 10
`))
		}, []string{"gateway.name", "tun.mtu", "limits.max_flows", "service"}},
		{"gateway: [tun] taken away behind a relay", func(t *testing.T) []string {
			const relayed = `
[tunnel]
relay = "relay.example.net:4433"
insecure_allow_unauthenticated = true
cert = "/dev/null"
key = "/dev/null"
`
			return ChangedKeys(gateway(t, relayed+"[tun]\n"), gateway(t, relayed))
		}, []string{"tun"}},
		{"service: its keys as a [[service]] table names them", func(t *testing.T) []string {
			a, b := gateway(t, gatewayHead+webService), gateway(t, gatewayHead+`
[[service]]
name = "web"
tenants = ["globex"]
vip = "10.100.0.9"
backends = ["192.0.2.11"]
balance = "least_conn"
icmp = false
max_flows = 5
new_flows_per_second = 9
  [[service.port]]
  protocol = "tcp"
  port = 81
  [service.timeouts]
  tcp_idle = "1m"
`)
			return ChangedKeys(&a.Services[0], &b.Services[0])
		}, []string{"tenants", "vip", "backends", "balance", "icmp", "port", "health", "timeouts", "max_flows", "new_flows_per_second"}},
		{"service: health.port written as its default is a change of health (SRV backends are checked there then)", func(t *testing.T) []string {
			a, b := gateway(t, gatewayHead+webService), gateway(t, gatewayHead+webService+"  [service.health]\n  port = 80\n")
			return ChangedKeys(&a.Services[0], &b.Services[0])
		}, []string{"health"}},
		{"service: the same explicit health.port is no change", func(t *testing.T) []string {
			a, b := gateway(t, gatewayHead+webService+"  [service.health]\n  port = 80\n"), gateway(t, gatewayHead+webService+"  [service.health]\n  port = 80\n")
			return ChangedKeys(&a.Services[0], &b.Services[0])
		}, nil},
		{"service: where it came from is no key", func(t *testing.T) []string {
			a := gateway(t, gatewayHead+webService).Services[0]
			b := a
			b.Source = "api"
			return ChangedKeys(&a, &b)
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.diff(t)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			// No change is an empty list, not nil: a JSON log and
			// the API show [] for it, as the gateway's Diff does.
			if got == nil {
				t.Error("got nil, want an empty list")
			}
		})
	}
}

// twoPins is two [[pin]] tables of a relay's file, web on 10.100.0.10
// and db on 10.100.0.11, in the order that puts first first.
func twoPins(first, second string) string {
	vip := map[string]string{"web": "10.100.0.10", "db": "10.100.0.11"}
	return "[[pin]]\nservice = \"" + first + "\"\nvip = \"" + vip[first] + "\"\n" +
		"[[pin]]\nservice = \"" + second + "\"\nvip = \"" + vip[second] + "\"\n"
}

// TestKeyTags checks that every field of the configuration types names
// its key, and that each key the diff can name is one of the file's: the
// toml tags of the raw structs are the list of known keys.
func TestKeyTags(t *testing.T) {
	roles := []struct {
		typ, raw reflect.Type
	}{
		{reflect.TypeFor[Gateway](), reflect.TypeFor[rawGatewayFile]()},
		{reflect.TypeFor[Relay](), reflect.TypeFor[rawRelayFile]()},
		{reflect.TypeFor[Agent](), reflect.TypeFor[rawAgentFile]()},
	}
	for _, r := range roles {
		t.Run(r.typ.Name(), func(t *testing.T) {
			known := map[string]bool{}
			rawKeys("", r.raw, known)
			var walk func(prefix string, typ reflect.Type)
			walk = func(prefix string, typ reflect.Type) {
				for i := range typ.NumField() {
					f := typ.Field(i)
					k, ok := f.Tag.Lookup("key")
					if !ok {
						t.Errorf("%s.%s has no key tag", typ.Name(), f.Name)
						continue
					}
					switch {
					case k == "-":
						continue
					case k == ".":
						k = prefix
					case prefix != "":
						k = prefix + "." + k
					}
					if isSection(f.Type) {
						walk(k, f.Type)
						continue
					}
					// An agent's or a gateway's Tunnel holds the keys of
					// both: only those of the role's file are named.
					if !known[k] && !(typ == reflect.TypeFor[Tunnel]() || typ == reflect.TypeFor[TUN]() ||
						typ == reflect.TypeFor[DNS]()) {
						t.Errorf("%s.%s: key %q is not in the %s file", typ.Name(), f.Name, k, r.typ.Name())
					}
				}
			}
			walk("", r.typ)
		})
	}
	// The keys of the shared sections are each in one role's file at least.
	all := map[string]bool{}
	for _, r := range roles {
		rawKeys("", r.raw, all)
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[Tunnel](), reflect.TypeFor[TUN](), reflect.TypeFor[DNS]()} {
		section := map[reflect.Type]string{reflect.TypeFor[Tunnel](): "tunnel", reflect.TypeFor[TUN](): "tun", reflect.TypeFor[DNS](): "dns"}[typ]
		for i := range typ.NumField() {
			k := typ.Field(i).Tag.Get("key")
			if k != "." && !all[section+"."+k] {
				t.Errorf("%s.%s: key %q is in no file", typ.Name(), typ.Field(i).Name, section+"."+k)
			}
		}
	}
}

// TestServiceKeys checks that ChangedKeys can name every key of a
// [[service]] table, and only those: each field of catalog.Service (of its
// FlowLimits too) but Source is named by a key of rawService, and each key
// of rawService names one of them.
func TestServiceKeys(t *testing.T) {
	named := map[string]bool{}
	var walk func(typ reflect.Type)
	walk = func(typ reflect.Type) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			if f.Anonymous {
				walk(f.Type)
				continue
			}
			k := serviceKey(f)
			switch {
			case f.Name == "Source":
				if k != "-" {
					t.Errorf("Source is named %q, want no key", k)
				}
			case k == "-" || k == "":
				t.Errorf("catalog.Service field %s has no key in rawService", f.Name)
			default:
				named[k] = true
			}
		}
	}
	walk(reflect.TypeFor[catalog.Service]())
	raw := reflect.TypeFor[rawService]()
	for i := range raw.NumField() {
		if k := raw.Field(i).Tag.Get("toml"); !named[k] {
			t.Errorf("key %q of [[service]] is no field of catalog.Service", k)
		}
	}
}

// rawKeys adds to known the key paths of a raw struct type: its tables and
// their keys.
func rawKeys(prefix string, typ reflect.Type, known map[string]bool) {
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct {
		return
	}
	for i := range typ.NumField() {
		k := typ.Field(i).Tag.Get("toml")
		if prefix != "" {
			k = prefix + "." + k
		}
		known[k] = true
		rawKeys(k, typ.Field(i).Type, known)
	}
}

func TestWarnRestart(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	WarnRestart(log, nil)
	if buf.Len() != 0 {
		t.Fatalf("a warning without keys: %s", buf.String())
	}
	WarnRestart(log, []string{"relay.listen", "relay.pool"})
	if got := buf.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, "level=WARN") ||
		!strings.Contains(got, "configuration changed; restart to apply: relay.listen, relay.pool") {
		t.Fatalf("got %s", got)
	}
}

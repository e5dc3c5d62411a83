package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// TestRelayGatewayRefusesReloadedPins: a gateway attached to a relay
// takes its VIPs from the relay, and its configuration may pin none (conf
// refuses vip and vip6 with [tunnel] relay). A reload whose file drops
// tunnel.relay (a restart-only key: the gateway stays attached) validated
// the services as for a gateway with its own pool, and took their pins:
// the diff named the VIP changed, which it was not, and the registration
// sent the pins to the relay. Such a reload is now refused whole, as one
// that pins outside the running pool is, and the running services stay.
func TestRelayGatewayRefusesReloadedPins(t *testing.T) {
	tunnelSection := fakeRelaySection(t)
	service := func(keys string) string {
		return `[[service]]
name = "echo"
tenants = ["acme"]
backends = ["127.0.0.1"]
` + keys + `
  [[service.port]]
  protocol = "tcp"
  port = 7
  [service.health]
  type = "none"
`
	}
	h := newFileHarness(t, quietGateway+twoTenants+service("")+tunnelSection)
	for _, tc := range []struct{ name, file string }{
		{"vip", quietGateway + twoTenants + service(`vip = "10.100.0.9"`)},
		{"vip6", strings.Replace(quietGateway, "[api]", "[tun]\npool6 = \"fd00:9::/64\"\n[api]", 1) + twoTenants +
			service(`vip6 = "fd00:9::9"`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.write(t, tc.file)
			d, err := h.gw.Reload()
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("reload: %+v, %v; want it refused as an invalid configuration", d, err)
			}
			for _, si := range h.gw.serviceInfos() {
				if si.VIP.IsValid() || si.VIP6.IsValid() {
					t.Errorf("the relay is told the pins of %s: %s %s", si.Name, si.VIP, si.VIP6)
				}
			}
		})
	}
}

// TestRelayGatewayLocksStateDir: a gateway attached to a relay opens no
// VIP pool, whose lock keeps a second process off a state directory, yet
// it keeps its API's services there (api-services.json). It now takes the
// directory's lock itself: a second gateway on the directory is refused
// before it reads or writes anything, as one beside a gateway with its own
// pool is, and the lock is free again once the first has stopped. Before,
// two such gateways shared the file, each overwriting the other's services.
func TestRelayGatewayLocksStateDir(t *testing.T) {
	tunnelSection := fakeRelaySection(t)
	h := newFileHarness(t, quietGateway+twoTenants+tunnelSection)
	cfg, err := conf.LoadGateway(h.path)
	if err != nil {
		t.Fatal(err)
	}
	if g, err := New(cfg, Options{}, nil); !errors.Is(err, catalog.ErrStateDirInUse) {
		if g != nil {
			g.Close()
		}
		t.Fatalf("a second gateway on the state directory: %v, want it refused (state directory in use)", err)
	}
	if err := h.gw.Close(); err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, Options{}, nil)
	if err != nil {
		t.Fatalf("a gateway on the state directory once the first stopped: %v", err)
	}
	g.Close()
}

// TestRelayGatewayUnwritableStateDir: a gateway attached to a relay and
// without [tun] needs no privilege, and any user may run it with the
// default state_dir (/var/lib/ztgate), which such a user cannot create.
// Taking the directory's lock must not stop it: it starts, saying the
// directory is not locked, as it started before the lock.
func TestRelayGatewayUnwritableStateDir(t *testing.T) {
	// A directory no one may create, root included, and which holds no
	// API services: as /var/lib/ztgate is to a user.
	const stateDir = "/proc/self/ztgate-absent/state"
	config := strings.Replace(quietGateway, `"STATE"`, strconv.Quote(stateDir), 1) + twoTenants +
		fakeRelaySection(t)
	path := filepath.Join(t.TempDir(), "gw.toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := conf.LoadGateway(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncLog{}
	g, err := New(cfg, Options{}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatalf("a gateway attached to a relay whose state_dir cannot be created: %v, want it to start", err)
	}
	g.Close()
	if !strings.Contains(logs.String(), "state directory not locked") {
		t.Errorf("the gateway did not say the state directory is not locked:\n%s", logs)
	}
}

// fakeRelaySection starts a fake relay with a PKI of its own and returns
// the [tunnel] section of a gateway attached to it.
func fakeRelaySection(t *testing.T) string {
	t.Helper()
	section, _, _ := fakeRelayWithSection(t)
	return section
}

// fakeRelayWithSection is fakeRelaySection with the relay's address and
// sessions.
func fakeRelayWithSection(t *testing.T) (section, addr string, sessions <-chan *tunnel.Session) {
	t.Helper()
	pki := t.TempDir()
	_, ca := writePKI(t, pki)
	addr, sessions = fakeRelay(t, pki, ca)
	return fmt.Sprintf("[tunnel]\nrelay = %q\ncert = %q\nkey = %q\nca = %q\n",
		addr, filepath.Join(pki, "gw.crt"), filepath.Join(pki, "gw.key"), filepath.Join(pki, "ca.crt")), addr, sessions
}

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// resolvedRoot is where scripts/resolved-fetch.sh (run by `make tools`)
// unpacked Debian's systemd-resolved (ZTGATE_RESOLVED_ROOT overrides it),
// and libs the directory of its libsystemd-shared there.
func resolvedRoot(t *testing.T) (root, libs string) {
	t.Helper()
	root = os.Getenv("ZTGATE_RESOLVED_ROOT")
	if root == "" {
		root, _ = filepath.Abs("../.cache/systemd-resolved")
	}
	bin := filepath.Join(root, "lib/systemd/systemd-resolved")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no systemd-resolved at %s: `make tools` unpacks it where apt-get works (scripts/resolved-fetch.sh)", bin)
	}
	dirs, _ := filepath.Glob(filepath.Join(root, "usr/lib/*/systemd"))
	if len(dirs) != 1 {
		t.Fatalf("no libsystemd-shared unpacked beside %s (scripts/resolved-fetch.sh): %q", bin, dirs)
	}
	cmd := exec.Command(bin, "--version")
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+dirs[0])
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s does not run here: %v\n%s", bin, err, out)
	}
	return root, dirs[0]
}

// resolvedHost is the script that runs as PID 1 of the agent's host: a
// PID and mount namespace of its own inside the agent's network namespace,
// so that the agent finds systemd-resolved in its own network namespace,
// PID 1's, as on a desktop. /run is the host's own (a tmpfs), with a D-Bus
// system bus and systemd-resolved on it, with no fallback servers and no
// multicast of its own, strict about DNSSEC and DNS over TLS as a careful
// operator sets it (the agent's link must be exempt: its zone is unsigned,
// its server speaks no TLS); resolv.conf points at systemd-resolved's stub, as
// on Ubuntu. SIGTERM stops the agent, then the rest (and with PID 1 gone,
// the kernel ends whatever is left in the PID namespace).
const resolvedHost = `set -eu
export LD_LIBRARY_PATH="$LIBS"
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/dbus /run/systemd
mount --bind "$DIR/passwd" /etc/passwd
mount --bind "$DIR/group" /etc/group
mount --bind "$DIR/resolv.conf" /etc/resolv.conf
mount -t tmpfs tmpfs /etc/systemd
printf '[Resolve]\nFallbackDNS=\nLLMNR=no\nMulticastDNS=no\nDNSSEC=yes\nDNSOverTLS=yes\n' > /etc/systemd/resolved.conf
dbus-daemon --config-file="$DIR/bus.conf" --nofork --nopidfile &
bus=$!
i=0; until [ -S /run/dbus/system_bus_socket ]; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.05; done
"$ROOT/lib/systemd/systemd-resolved" &
resolved=$!
i=0; until [ -e /run/systemd/resolve/stub-resolv.conf ]; do i=$((i+1)); [ $i -lt 100 ] || exit 1; sleep 0.05; done
echo "host ready"
PATH="$ROOT/usr/bin:$PATH" "$ZTGATE" agent -config "$DIR/agent.toml" -log-format text &
agent=$!
trap 'kill -TERM $agent; wait $agent; kill $resolved $bus; exit 0' TERM
wait $agent
`

// resolvedBus is a system bus that lets everyone own and call everything:
// it exists only for this host.
const resolvedBus = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`

// TestAgentSystemdResolved: on a host where systemd-resolved runs, as on
// Ubuntu or Fedora, a new user starts the agent and names work at once in
// every program (the host's stub resolver, getent, curl by name), reverse
// lookups of the VIPs too, and nothing else goes to the agent. When
// another program resets the link's settings, the agent sets them again
// once the host's network changes or its session comes back.
func TestAgentSystemdResolved(t *testing.T) {
	needTools(t, "dig", "curl", "dbus-daemon", "unshare", "nsenter", "getent")
	root, libs := resolvedRoot(t)
	r := newRelayTopo(t, "a1")
	r.startBackend("192.0.2.10")
	r.startRelay()
	r.startGateway()

	// The agent's host: its files, then the script as PID 1.
	r.ztg("pki", "issue", "-dir", r.pki, "-role", "agent", "-tenant", "acme", "-name", "a1")
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	group, err := os.ReadFile("/etc/group")
	if err != nil {
		t.Fatal(err)
	}
	// systemd-resolved, started as root, runs as this user.
	r.writeFile("passwd", string(passwd)+"systemd-resolve:x:64991:64991:systemd-resolved:/:/usr/sbin/nologin\n")
	r.writeFile("group", string(group)+"systemd-resolve:x:64991:\n")
	r.writeFile("resolv.conf", "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
	r.writeFile("bus.conf", resolvedBus)
	r.writeFile("agent.toml", fmt.Sprintf(`
[agent]
name = "a1"
[tunnel]
server = "%s:4433"
server_name = "relay.test"
cert = "%s/a1.crt"
key = "%s/a1.key"
ca = "%s/ca.crt"
[tun]
name = "ztagent0"
address = "100.64.0.1"
[api]
listen = "127.0.0.1:7782"
`, r.agentAddr["a1"], r.pki, r.pki, r.pki))
	script := r.writeFile("host.sh", resolvedHost)
	host := r.start(r.agents["a1"], "agent host (systemd-resolved, agent)", "env", "DIR="+r.dir, "ROOT="+root, "LIBS="+libs, "ZTGATE="+r.ztgate,
		"unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", "/bin/sh", script)
	host.waitOutput(t, "host ready", 15*time.Second)
	host.waitOutput(t, "agent started", 15*time.Second)
	if out := host.out.String(); !strings.Contains(out, `msg="DNS: systemd-resolved sends the zone's queries to the agent" component=agent link=ztagent0 zone=ztna.internal server=10.100.0.1 reverse=[0.100.10.in-addr.arpa]`) {
		t.Fatalf("the agent did not set systemd-resolved:\n%s", out)
	}

	// Commands on the agent's host: in its PID 1's namespaces.
	pid1 := hostPID1(t, host)
	onHost := func(args ...string) (string, error) {
		return runLocal("nsenter", append([]string{"-t", strconv.Itoa(pid1), "-m", "-n", "-p", "env", "PATH=" + root + "/usr/bin:" + os.Getenv("PATH"), "LD_LIBRARY_PATH=" + libs}, args...)...)
	}

	var vip string
	t.Run("names of the zone through the host's resolver", func(t *testing.T) {
		eventually(t, 15*time.Second, "getent hosts web.ztna.internal", func() error {
			out, err := onHost("getent", "hosts", "web.ztna.internal")
			if f := strings.Fields(out); err != nil || len(f) < 2 || f[1] != "web.ztna.internal" {
				return fmt.Errorf("%v %q", err, out)
			}
			vip = strings.Fields(out)[0]
			return nil
		})
		out, err := onHost("curl", "-sS", "--max-time", "10", "http://web.ztna.internal/hello")
		if err != nil || !strings.Contains(out, "/hello") {
			t.Errorf("curl by name: %v %q", err, out)
		}
		out, err = onHost("dig", "+short", "+time=2", "+tries=1", "@127.0.0.53", "-x", vip)
		if err != nil || strings.TrimSpace(out) != "web.ztna.internal." {
			t.Errorf("reverse lookup of %s through the stub: %v %q", vip, err, out)
		}
	})

	t.Run("the link's settings", func(t *testing.T) {
		out, err := onHost("resolvectl", "status", "ztagent0")
		if err != nil {
			t.Fatalf("resolvectl status: %v\n%s", err, out)
		}
		for _, want := range []string{"DNS Servers: 10.100.0.1", "DNS Domain: ~ztna.internal ~0.100.10.in-addr.arpa",
			"-DefaultRoute", "-LLMNR", "-mDNS", "-DNSOverTLS", "DNSSEC=no"} {
			if !strings.Contains(out, want) {
				t.Errorf("no %q in\n%s", want, out)
			}
		}
		out, err = onHost(r.ztgate, "status", "-api", "http://127.0.0.1:7782")
		if want := "host DNS: systemd-resolved sends ztna.internal, 0.100.10.in-addr.arpa to the agent (link ztagent0)"; err != nil || !strings.Contains(out, want) {
			t.Errorf("ztgate status: %v, want %q in\n%s", err, want, out)
		}
		// Only the zone goes to the agent: another name is not asked of
		// it (with no other link configured, systemd-resolved has no
		// server for it at all).
		out, err = onHost("resolvectl", "query", "--cache=no", "www.example.com")
		if err == nil || strings.Contains(out, "ztagent0") {
			t.Errorf("a name outside the zone: %v %q", err, out)
		}
	})

	t.Run("reset by another program, then a network change: set again, the session kept", func(t *testing.T) {
		if out, err := onHost("resolvectl", "revert", "ztagent0"); err != nil {
			t.Fatalf("resolvectl revert: %v\n%s", err, out)
		}
		lost := strings.Count(host.out.String(), "systemd-resolved lost the zone's settings on the link")
		sessions := strings.Count(host.out.String(), `msg="tunnel connected"`)
		// A new address, as a DHCP client on a new network adds it.
		r.exec(r.agents["a1"], "ip", "addr", "add", "198.51.100.77/32", "dev", devWithAddr(t, r, r.agents["a1"], "203.0.113.2/30"))
		eventually(t, 10*time.Second, "the settings set again", func() error {
			if strings.Count(host.out.String(), "systemd-resolved lost the zone's settings on the link") == lost {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		eventually(t, 10*time.Second, "getent hosts web.ztna.internal again", func() error {
			out, err := onHost("getent", "hosts", "web.ztna.internal")
			if err != nil || !strings.HasPrefix(out, vip+" ") {
				return fmt.Errorf("%v %q", err, out)
			}
			return nil
		})
		if n := strings.Count(host.out.String(), `msg="tunnel connected"`); n != sessions {
			t.Errorf("the agent reconnected (%d sessions, %d before)", n, sessions)
		}
	})

	t.Run("reset by another program: set again when the session comes back", func(t *testing.T) {
		if out, err := onHost("resolvectl", "revert", "ztagent0"); err != nil {
			t.Fatalf("resolvectl revert: %v\n%s", err, out)
		}
		if out, err := onHost("resolvectl", "domain", "ztagent0"); err != nil || strings.Contains(out, "ztna") {
			t.Fatalf("the link's domains after the revert: %v %q", err, out)
		}
		r.relayProc.stop(5 * time.Second)
		r.startRelay()
		host.waitOutput(t, "systemd-resolved lost the zone's settings on the link", 20*time.Second)
		eventually(t, 15*time.Second, "getent hosts web.ztna.internal again", func() error {
			out, err := onHost("getent", "hosts", "web.ztna.internal")
			if err != nil || !strings.HasPrefix(out, vip+" ") {
				return fmt.Errorf("%v %q", err, out)
			}
			return nil
		})
	})

	// unshare, waiting for its child, ignores SIGTERM: the host's PID 1
	// takes it (its trap stops the agent), as systemd would stop the unit.
	syscall.Kill(pid1, syscall.SIGTERM)
	select {
	case <-host.done:
		if host.err != nil {
			t.Errorf("the agent's host: %v", host.err)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("the agent's host did not stop within 15s of SIGTERM")
	}
	if out := host.out.String(); !strings.Contains(out, "shutting down") {
		t.Errorf("the agent did not stop cleanly:\n%s", out)
	}
}

// hostPID1 is the PID, as seen from here, of PID 1 of the host that
// unshare forked (host's command is unshare itself).
func hostPID1(t *testing.T, host *proc) int {
	t.Helper()
	var child int
	eventually(t, 5*time.Second, "unshare's child", func() error {
		out, err := exec.Command("pgrep", "-P", strconv.Itoa(host.cmd.Process.Pid)).Output()
		if err != nil {
			return fmt.Errorf("pgrep: %w", err)
		}
		child, err = strconv.Atoi(strings.TrimSpace(string(out)))
		return err
	})
	return child
}

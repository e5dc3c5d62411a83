package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestRevokedFlowReset: a reload that leaves a LAN client's source in no
// tenant ends its TCP flows (source_removed), and it resets both sides.
// The client's packets are dropped from the reload on, so a FIN could
// never be acknowledged: the netstack would send it, and whatever the
// client had not acknowledged yet, again and again for minutes, to a
// client no longer admitted. The backend's stream was cut short, so it
// must not end as if complete. The client reads a reset, not an end of
// stream, and so does the backend.
func TestRevokedFlowReset(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backendEnd := make(chan error, 1)
	serveOn(t, l, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "echo: %s\n", sc.Text())
		}
		err := sc.Err()
		if err == nil {
			err = io.EOF
		}
		backendEnd <- err
	})
	svc := tcpService("echo", `"*"`, "10.100.0.7", "127.0.0.1", l.Addr().(*net.TCPAddr).Port)
	h := newFileHarness(t, quietGateway+twoTenants+svc)
	acme := h.dialLines(t, acmeClient, "10.100.0.7:7")
	if got := acme.roundTrip(t, "before"); got != "echo: before" {
		t.Fatalf("before the reload: %q", got)
	}

	h.write(t, quietGateway+"[[tenant]]\nname = \"globex\"\nsources = [\"203.0.113.0/24\"]\n"+svc)
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	acme.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := acme.r.ReadString('\n'); !isReset(err) {
		t.Errorf("the client's read after its source was removed: %v, want a reset", err)
	}
	select {
	case err := <-backendEnd:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("the backend's read after the client's source was removed: %v, want ECONNRESET", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the backend's connection stayed open")
	}
}

// TestStrandedLeftoverReset: a TCP connection whose flow the gateway
// closed gracefully just before a reload took its client's source from
// every tenant is reset too. Its client's packets are dropped from the
// reload on, so its FIN (or the data it still held) could never be
// acknowledged, and the netstack would keep the endpoint, resending, for
// minutes, while the client went on writing into a connection that no
// longer answered. A client still admitted keeps its flow.
func TestStrandedLeftoverReset(t *testing.T) {
	port := startLineEcho(t, "echo")
	svc := tcpService("echo", `"*"`, "10.100.0.7", "127.0.0.1", port)
	h := newFileHarness(t, quietGateway+twoTenants+svc)
	acme := h.dialLines(t, acmeClient, "10.100.0.7:7")
	if got := acme.roundTrip(t, "before"); got != "echo: before" {
		t.Fatalf("before the reload: %q", got)
	}
	// The gateway ends acme's flow gracefully (as the API or an idle
	// timeout would): its FIN reaches the client, which keeps its end.
	for _, f := range h.gw.flows.list(func(*flow) bool { return true }) {
		f.close("test")
	}
	acme.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := acme.r.ReadString('\n'); err != io.EOF {
		t.Fatalf("the client's read after its flow closed: %v, want EOF", err)
	}
	waitFor(t, 5*time.Second, "the closed flow to end", func() bool {
		return len(h.gw.flows.list(func(*flow) bool { return true })) == 0
	})
	globex := h.dialLines(t, globexClient, "10.100.0.7:7")

	h.write(t, quietGateway+"[[tenant]]\nname = \"globex\"\nsources = [\"203.0.113.0/24\"]\n"+svc)
	if _, err := h.gw.Reload(); err != nil {
		t.Fatal(err)
	}
	// Reset, the client's end fails its writes; left alone, they go on
	// succeeding, into packets dropped as from an unknown source.
	waitWriteReset(t, acme.c, "the connection of the client whose source was removed")
	if got := globex.roundTrip(t, "after"); got != "echo: after" {
		t.Errorf("the admitted client after the reload: %q", got)
	}
}

// waitWriteReset writes to c until a write fails as c's reset makes it,
// for 5 s at most: what names c in the failure.
func waitWriteReset(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetDeadline(time.Time{})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Write([]byte("x")); err != nil {
			if isTimeout(err) {
				t.Fatalf("%s: write: %v, want it refused by a reset", what, err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was never reset: its writes go on succeeding", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

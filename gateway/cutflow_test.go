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

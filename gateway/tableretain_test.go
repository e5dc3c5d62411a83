package gateway

import (
	"runtime"
	"testing"
	"time"
	"weak"
)

// TestFlowKeepsNoOldTable: a flow keeps its service, and a service knows
// the table generation it is of; a long flow must not keep that whole
// table alive across reloads (one a minute, a flow of a day: over a
// thousand tables). After reloads that change the service, the first
// generation is collected while the flow of that generation runs on.
func TestFlowKeepsNoOldTable(t *testing.T) {
	port := startLineEcho(t, "echo")
	svc := tcpService("echo", `"*"`, "10.100.0.7", "127.0.0.1", port)
	h := newFileHarness(t, quietGateway+twoTenants+svc)
	c := h.dialLines(t, acmeClient, "10.100.0.7:7")
	if got := c.roundTrip(t, "before"); got != "echo: before" {
		t.Fatalf("before the reloads: %q", got)
	}
	first := weak.Make(h.gw.tbl.Load())
	for i := range 3 {
		h.write(t, quietGateway+twoTenants+svc+"\n"+tcpService("other", `"*"`, "10.100.0.8", "127.0.0.1", port+1+i))
		if _, err := h.gw.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for first.Value() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the first table generation is still alive while its flow runs")
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if got := c.roundTrip(t, "after"); got != "echo: after" {
		t.Fatalf("the flow after the reloads: %q", got)
	}
}

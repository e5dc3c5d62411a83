package e2e

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// startUDPEcho echoes every datagram on the loopback UDP port port.
func startUDPEcho(t *testing.T, port int) {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(buf[:n], from)
		}
	})
	t.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
}

// TestFragmentedDatagramsThroughRelay: a UDP datagram larger than the
// agent's MTU leaves its client in fragments, which the relay routes one
// by one to the gateway of the datagram's flow, where the gateway's stack
// puts them together; the backend's answer of the same size comes back in
// fragments under the flow's tag, and the client gets it whole.
func TestFragmentedDatagramsThroughRelay(t *testing.T) {
	p := newPKI(t)
	backendPort := startBackend(t, 1)
	startUDPEcho(t, backendPort)
	r := startRelay(t, p)
	startGateway(t, p, r.Addr().String(), backendPort)
	vip := serviceVIP(t, r, "web")
	a := startAgent(t, p, "acme", "a1", r.Addr().String())
	waitFor(t, "the agent to resolve web", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		addrs, err := a.resolver(netip.MustParseAddr("10.100.0.1")).LookupNetIP(ctx, "ip4", "web."+zone)
		return err == nil && len(addrs) == 1 && addrs[0] == vip
	})

	c, err := a.client.DialUDP(innerAddr, netip.AddrPortFrom(vip, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 8192)
	for _, size := range []int{3 * clientMTU, 4000} {
		want := payload("fragmented", size)
		// A datagram lost on the way (the gateway still registering its
		// session's first flow) is sent again.
		waitFor(t, "the fragmented datagram's echo", func() bool {
			if _, err := c.Write(want); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := c.Read(buf)
			if err != nil {
				return false
			}
			if !bytes.Equal(buf[:n], want) {
				t.Fatalf("echo of %d bytes: got %d bytes, not the datagram sent", size, n)
			}
			return true
		})
	}
}

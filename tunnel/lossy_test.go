package tunnel

import (
	"context"
	"testing"
	"time"

	"github.com/ztgate/ztgate/tunnel/tunneltest"
)

// TestSessionThroughLossyProxy runs the handshake, the control stream and
// datagrams through a proxy that drops and delays 10 % each way: the
// handshake and control messages are reliable, datagrams are not.
func TestSessionThroughLossyProxy(t *testing.T) {
	sf := newSessionFixture(t, false)
	p, err := tunneltest.NewProxy(tunneltest.ProxyConfig{
		Target: sf.addr(), DropRate: 0.1, DelayRate: 0.1, Delay: 5 * time.Millisecond, Seed: 7,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	client, server := sf.connectVia(p.Addr(), sf.dialConfig(sf.agentCreds()))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	const messages = 50
	for i := range messages {
		if err := client.Send(&TagClose{Type: MessageTagClose, Tags: []uint32{uint32(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range messages {
		msg, err := DecodeControl(server.Next())
		if err != nil {
			t.Fatal(err)
		}
		if tc := msg.(*TagClose); tc.Tags[0] != uint32(i) {
			t.Fatalf("message %d carries %d", i, tc.Tags[0])
		}
	}

	const datagrams = 300
	received := make(chan int, 1)
	go func() { // read while sending: quic-go queues only 128 datagrams
		got := 0
		for {
			rctx, rcancel := context.WithTimeout(ctx, 500*time.Millisecond)
			b, err := server.ReceiveDatagram(rctx)
			rcancel()
			if err != nil {
				received <- got
				return
			}
			if Kind(b) == TypeIP {
				got++
			}
		}
	}()
	for i := range datagrams {
		if err := client.SendDatagram(ip4Packet(100, byte(i))); err != nil {
			t.Fatal(err)
		}
		// Paced, so that each datagram travels in its own QUIC packet and
		// losses hit datagrams one by one.
		time.Sleep(time.Millisecond)
	}
	got := <-received
	t.Logf("%d of %d datagrams arrived (proxy %+v)", got, datagrams, p.Stats())
	if got < datagrams/2 || got > datagrams {
		t.Errorf("%d of %d datagrams arrived (proxy %+v)", got, datagrams, p.Stats())
	}
	if p.Stats().Dropped == 0 {
		t.Error("the proxy dropped nothing")
	}
}

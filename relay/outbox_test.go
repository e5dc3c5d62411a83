package relay

import (
	"bytes"
	"testing"

	"github.com/ztgate/ztgate/tunnel"
)

// TestOutboxQueue checks what the outbox queues: a 0x30 datagram built in
// a pooled buffer, a handed slice as it is (no copy), and nothing once the
// queue is full or the service id cannot be framed.
func TestOutboxQueue(t *testing.T) {
	o := &outbox{ch: make(chan outItem, 2), done: make(chan struct{})}
	packet := []byte{0x45, 1, 2, 3}
	if !o.sendTagged(7, "echo", packet) {
		t.Fatal("sendTagged refused with room in the queue")
	}
	it := <-o.ch
	id, svc, pkt, err := tunnel.ParseTagged(it.b)
	if err != nil || id != 7 || string(svc) != "echo" || !bytes.Equal(pkt, packet) {
		t.Errorf("queued 0x30 = %d %q % x, %v", id, svc, pkt, err)
	}
	if it.pooled == nil {
		t.Error("a 0x30 datagram was not built in a pooled buffer")
	}
	it.release()

	if !o.send(packet, nil) {
		t.Fatal("send refused with room in the queue")
	}
	it = <-o.ch
	if &it.b[0] != &packet[0] || it.pooled != nil {
		t.Error("send copied the slice it was handed, or marked it pooled")
	}

	if o.sendTagged(7, "", packet) {
		t.Error("sendTagged queued a datagram for an empty service id")
	}
	o.send(packet, nil)
	o.send(packet, nil)
	if o.send(packet, nil) || o.sendTagged(7, "echo", packet) {
		t.Error("the outbox took a datagram over its bound")
	}
}

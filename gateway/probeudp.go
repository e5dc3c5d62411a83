package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/resolver"
)

// udpProbe sends one datagram and checks the first reply: it must contain
// expect (any reply when empty). Probing port 53 without a payload it asks
// for the SOA of the zone and checks that the server answered sanely. A port
// unreachable (ECONNREFUSED on the connected socket) or silence until the
// timeout is a failure.
type udpProbe struct {
	send   []byte
	expect []byte
	dns    bool
	zone   string
	buf    []byte // checks of one backend run one at a time
}

// udpProbeBuf bounds a reply; the rest of a longer one is not looked at.
const udpProbeBuf = 4096

// newUDPProbe returns the probe of h's checks of port, the port probed:
// h.Port may be another (an SRV backend is checked on its record's port).
func newUDPProbe(h catalog.Health, port uint16, zone string) *udpProbe {
	return &udpProbe{
		send:   []byte(h.Send),
		expect: []byte(h.Expect),
		dns:    port == 53 && h.Send == "",
		zone:   zone,
		buf:    make([]byte, udpProbeBuf),
	}
}

func (p *udpProbe) probe(ctx context.Context, target netip.AddrPort) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", target.String())
	if err != nil {
		return fmt.Errorf("udp check: %w", unwrapOp(err))
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	// A stopped check ends at once, not at its timeout.
	defer context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })()
	payload, id := p.send, uint16(0)
	if p.dns {
		id = uint16(rand.Uint32())
		payload = resolver.ProbeQuery(p.zone, id)
	}
	if _, err := c.Write(payload); err != nil {
		return p.readErr(err)
	}
	n, err := c.Read(p.buf)
	if err != nil {
		return p.readErr(err)
	}
	return p.check(p.buf[:n], id)
}

// readErr names the two ways a UDP backend fails to answer.
func (p *udpProbe) readErr(err error) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return errors.New("udp check: port unreachable")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errors.New("udp check: no reply")
	}
	return fmt.Errorf("udp check: %w", unwrapOp(err))
}

// check judges a reply to the probe with DNS id id.
func (p *udpProbe) check(reply []byte, id uint16) error {
	if p.dns {
		if err := resolver.CheckProbeReply(reply, id); err != nil {
			return fmt.Errorf("udp check: %w", err)
		}
	}
	if len(p.expect) > 0 && !bytes.Contains(reply, p.expect) {
		return fmt.Errorf("udp check: reply does not contain %q", truncate(p.expect, 64))
	}
	return nil
}

func (p *udpProbe) close() {}

// truncate cuts b to at most n bytes for a message.
func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

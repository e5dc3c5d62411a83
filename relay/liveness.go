package relay

import (
	"time"

	"github.com/ztgate/ztgate/tunnel"
)

// Liveness of gateway sessions. A gateway that dies without closing its
// connection (killed, its host gone) would otherwise hold its flows and
// take new ones until QUIC's idle timeout (30 s); with pings the relay
// notices within DefaultDeadAfter and new flows move to another gateway.
const (
	// DefaultPingInterval is how often the relay pings each gateway.
	DefaultPingInterval = 250 * time.Millisecond
	// DefaultDeadAfter is how long a gateway may stay silent (no datagram,
	// no control message: pongs, or errors from a gateway that does not
	// know ping) before its session is closed.
	DefaultDeadAfter = 2 * time.Second
)

// watchGateway pings g and closes its session once nothing was heard from
// it for DeadAfter. It returns when the session ends.
func (r *Relay) watchGateway(g *gateway) {
	t := time.NewTicker(r.opts.PingInterval)
	defer t.Stop()
	heard, since := g.heard.Load(), time.Now()
	for seq := uint64(1); ; seq++ {
		select {
		case <-g.s.Done():
			return
		case <-t.C:
		}
		if n := g.heard.Load(); n != heard {
			heard, since = n, time.Now()
		} else if silent := time.Since(since); silent >= r.opts.DeadAfter {
			r.m.gatewaysLost.Inc()
			r.log.Warn("gateway stopped answering; closing its session", "gateway", g.id.String(),
				"session", g.s.ID(), "silent", silent.Round(time.Millisecond))
			_ = g.s.Close("no answer to pings")
			return
		}
		if err := g.s.Send(&tunnel.Ping{Type: tunnel.MessagePing, Seq: seq}); err != nil {
			return
		}
	}
}

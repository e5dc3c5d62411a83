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
// it for DeadAfter, over which it answered none of the pings (silence). It
// returns when the session ends.
func (r *Relay) watchGateway(g *gateway) {
	t := time.NewTicker(r.opts.PingInterval)
	defer t.Stop()
	s := newSilence(r.opts.PingInterval, r.opts.DeadAfter, g.heard.Load(), time.Now())
	for seq := uint64(1); ; seq++ {
		select {
		case <-g.s.Done():
			return
		case <-t.C:
		}
		if silent, dead := s.tick(time.Now(), g.heard.Load()); dead {
			r.m.gatewaysLost.Inc()
			r.log.Warn("gateway stopped answering; closing its session", "gateway", g.id.String(),
				"session", g.s.ID(), "silent", silent.Round(time.Millisecond))
			_ = g.s.Close("no answer to pings")
			return
		}
		if err := g.s.Send(&tunnel.Ping{Type: tunnel.MessagePing, Seq: seq}); err != nil {
			return
		}
		s.pinged()
	}
}

// silence judges a gateway's liveness at each tick of its ping timer:
// dead once DeadAfter has passed since it was last heard from and it
// answered none of the pings the relay sent meanwhile, DeadAfter's worth
// of them (one per tick, but the tick that finds it dead). Pings count, not
// only the time: a relay that did not run for a while (starved of CPU,
// paused) neither sent its pings nor read the answers waiting for it, and
// must not take its own pause for the gateway's silence.
type silence struct {
	deadAfter time.Duration
	need      int       // unanswered pings that make a gateway dead
	heard     uint64    // the gateway's count of datagrams and messages at the last change
	since     time.Time // when it last changed
	missed    int       // pings sent since
}

func newSilence(interval, deadAfter time.Duration, heard uint64, now time.Time) *silence {
	return &silence{deadAfter: deadAfter, need: max(1, int(deadAfter/interval)-1), heard: heard, since: now}
}

// tick takes the gateway's count of what the relay heard from it; it
// returns how long the gateway has been silent, and whether that makes it
// dead.
func (s *silence) tick(now time.Time, heard uint64) (silent time.Duration, dead bool) {
	if heard != s.heard {
		s.heard, s.since, s.missed = heard, now, 0
		return 0, false
	}
	silent = now.Sub(s.since)
	return silent, silent >= s.deadAfter && s.missed >= s.need
}

// pinged records a ping sent.
func (s *silence) pinged() { s.missed++ }

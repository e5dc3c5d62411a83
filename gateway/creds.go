package gateway

import "fmt"

// ReloadCredentials re-reads the [tunnel] certificate, key and CA files in
// use (SIGHUP; Reload switches to other files when the configuration names
// them): new handshakes with the relay and with agents connecting
// directly use them; sessions already up go on, but for those of agents
// whose certificate the new CA file refuses (tunnel.Listener ends them).
// A gateway without [tunnel]
// has nothing to reload. On error it keeps the credentials it has. While
// the configuration names another tunnel.relay (the last reload found it
// changed: it waits for the restart) the files are not re-read: their new
// contents are for the new relay, and the session to the relay the
// gateway runs with would be checked against them (liveTunnelFiles).
func (g *Gateway) ReloadCredentials() error {
	if g.creds == nil {
		return nil
	}
	if g.relayMoves.Load() {
		g.log.Warn("tunnel credentials not re-read: tunnel.relay or tunnel.server_name changed, and tunnel.cert, tunnel.key, tunnel.ca wait for the restart with it",
			"relay", g.cfg.Tunnel.Relay)
		return nil
	}
	if err := g.creds.Reload(); err != nil {
		g.log.Error("tunnel credentials not reloaded; keeping the current ones", "err", err)
		return fmt.Errorf("gateway: %w", err)
	}
	return nil
}

package gateway

import "fmt"

// ReloadCredentials re-reads the [tunnel] certificate, key and CA files in
// use (SIGHUP; Reload switches to other files when the configuration names
// them): new handshakes with the relay and with agents connecting
// directly use them; sessions already up go on, but for those of agents
// whose certificate the new CA file refuses (tunnel.Listener ends them).
// A gateway without [tunnel]
// has nothing to reload. On error it keeps the credentials it has.
func (g *Gateway) ReloadCredentials() error {
	if g.creds == nil {
		return nil
	}
	if err := g.creds.Reload(); err != nil {
		g.log.Error("tunnel credentials not reloaded; keeping the current ones", "err", err)
		return fmt.Errorf("gateway: %w", err)
	}
	return nil
}

package agent

import "fmt"

// ReloadCredentials re-reads the agent's certificate, key and CA files in
// use (SIGHUP; Reload switches to other files when the configuration names
// them): the next connection to the server uses them, the session now
// open goes on. On error the agent keeps the credentials it has. While
// the configuration names another tunnel.server (the last reload found it
// changed: it waits for the restart) the files are not re-read: their new
// contents are for the new server, and the agent's session to the server
// it runs with would be checked against them (applyReload).
func (a *Agent) ReloadCredentials() error {
	if a.serverMoves.Load() {
		a.log.Warn("tunnel credentials not re-read: tunnel.server or tunnel.server_name changed, and tunnel.cert, tunnel.key, tunnel.ca wait for the restart with it",
			"server", a.cfg.Tunnel.Server)
		return nil
	}
	if err := a.creds.Reload(); err != nil {
		a.log.Error("credentials not reloaded; keeping the current ones", "err", err)
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

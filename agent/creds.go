package agent

import "fmt"

// ReloadCredentials re-reads the agent's certificate, key and CA files in
// use (SIGHUP; Reload switches to other files when the configuration names
// them): the next connection to the server uses them, the session now
// open goes on. On error the agent keeps the credentials it has.
func (a *Agent) ReloadCredentials() error {
	if err := a.creds.Reload(); err != nil {
		a.log.Error("credentials not reloaded; keeping the current ones", "err", err)
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

package relay

import "fmt"

// ReloadCredentials re-reads the relay's certificate, key and CA files in
// use (SIGHUP; Reload switches to other files when the configuration names
// them): new handshakes use them, sessions already admitted go on, but
// for those of peers whose certificate the new CA file refuses
// (tunnel.Listener ends them). On
// error the relay keeps the credentials it has.
func (r *Relay) ReloadCredentials() error {
	if err := r.creds.Reload(); err != nil {
		r.log.Error("credentials not reloaded; keeping the current ones", "err", err)
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}

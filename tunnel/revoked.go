package tunnel

// Revoked reports whether the credentials in use refused the session's
// peer after they admitted it — a reload that dropped its CA, the end of
// its certificate (Listener.recheck, watchExpiry; a dialed session's
// recheckServer) — which ends the session ("revoked: <reason>"). Set
// before the session closes, so that once Done is closed it tells a
// session ended because its peer is no longer trusted from one that ended
// for any other reason (the peer left, the network, idle). A session that
// Accept or Dial returned was admitted: false for one refused in its
// handshake, which they never return.
func (s *Session) Revoked() bool { return s.revoked.Load() }

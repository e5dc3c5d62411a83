package tunnel

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// LinkStatus is a client's session to its server (an agent's to its relay
// or gateway, a gateway's to its relay) as the status APIs show it.
type LinkStatus struct {
	Connected bool `json:"connected"`
	// Since: when the session came up, or when the last one ended or the
	// last dial failed; zero before the first dial's outcome.
	Since       time.Time      `json:"since,omitzero"`
	Peer        string         `json:"peer,omitempty"` // the server's identity
	Remote      netip.AddrPort `json:"remote,omitzero"`
	Version     string         `json:"version,omitempty"` // the ALPN
	MaxDatagram int            `json:"max_datagram,omitempty"`
	// LastError is why the last session ended or the last dial failed,
	// while disconnected; RetryAt is when the client dials again.
	LastError string    `json:"last_error,omitempty"`
	RetryAt   time.Time `json:"retry_at,omitzero"`
}

// Link records a Redialer's sessions for LinkStatus: Up from its
// OnSession, Down as its OnDisconnect. The zero value is ready (no dial
// has ended yet); it is safe for concurrent use.
type Link struct {
	state atomic.Pointer[linkState]
}

// linkState is replaced whole on each change.
type linkState struct {
	s       *Session // nil while disconnected
	since   time.Time
	lastErr string
	retryAt time.Time
}

// Up records a new session to the server.
func (l *Link) Up(s *Session) { l.state.Store(&linkState{s: s, since: time.Now()}) }

// Down records why the session ended or the dial failed, and when the
// client dials again.
func (l *Link) Down(err error, retryIn time.Duration) {
	ls := &linkState{since: time.Now()}
	if err != nil {
		ls.lastErr = err.Error()
	}
	ls.retryAt = ls.since.Add(retryIn)
	l.state.Store(ls)
}

// Connected reports whether a session is up.
func (l *Link) Connected() bool {
	ls := l.state.Load()
	return ls != nil && ls.s != nil
}

// Status returns the link now.
func (l *Link) Status() LinkStatus {
	ls := l.state.Load()
	if ls == nil {
		return LinkStatus{}
	}
	st := LinkStatus{Since: ls.since, LastError: ls.lastErr, RetryAt: ls.retryAt}
	if s := ls.s; s != nil {
		st.Connected = true
		if id := s.Peer(); id.Tenant != "" { // none from an unverified server
			st.Peer = id.String()
		}
		st.Remote = s.RemoteAddr()
		st.Version = s.Version().String()
		st.MaxDatagram = s.MaxDatagram()
	}
	return st
}

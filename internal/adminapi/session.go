package adminapi

import (
	"cmp"
	"time"
)

// Session is a tunnel session in GET /v1/sessions, the fields every role
// that accepts sessions shows alike: the relay's (agents and gateways,
// with fields of its own beside these) and a gateway's (agents connected
// directly).
type Session struct {
	ID       uint64    `json:"id"`
	Role     string    `json:"role"` // the peer's: agent or gateway
	Identity string    `json:"identity"`
	Tenant   string    `json:"tenant"`
	Remote   string    `json:"remote"`
	Version  string    `json:"version"`
	Since    time.Time `json:"since"`
	// Inner is an agent's inner address; "" for a gateway, and for a
	// ztna-v1 agent until its first packet pins it.
	Inner string `json:"inner_addr,omitempty"`
}

// CompareSessions orders sessions as GET /v1/sessions lists them: oldest
// first, then by ID.
func CompareSessions(a, b Session) int {
	return cmp.Or(a.Since.Compare(b.Since), cmp.Compare(a.ID, b.ID))
}

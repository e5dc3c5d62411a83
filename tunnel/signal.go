package tunnel

import "net/netip"

// Types of the control messages of the direct path (docs/direct-path.md):
// the signaling that the relay carries between an agent and a gateway, and
// the liveness check on a direct session.
const (
	MessageOffer  = "offer"  // agent → relay → gateway: try a direct path for a service
	MessageAnswer = "answer" // gateway → relay → agent: where to reach the gateway
	MessageResult = "result" // agent → relay → gateway: how the attempt went
	MessagePing   = "ping"   // either side of a session → the other: answer with pong
	MessagePong   = "pong"   // the answer to a ping, with its seq
)

// MaxCandidates bounds the candidate addresses of one offer or answer;
// receivers refuse more.
const MaxCandidates = 8

// Offer asks for a direct path to a service. The agent picks SessionID, a
// random non-zero number, unique among its own signaling sessions; the
// relay forwards the offer to the gateway it chose under an id of its own
// (so that a gateway never sees agents' ids) and fills in Agent.
type Offer struct {
	Type       string           `json:"type"` // MessageOffer
	SessionID  uint64           `json:"session_id"`
	Service    string           `json:"service"`
	Candidates []netip.AddrPort `json:"candidates"`
	// Agent is the offering agent's identity (Identity.String()), set by
	// the relay for the gateway; ignored from agents.
	Agent string `json:"agent,omitempty"`
}

// Answer is a gateway's reply to an offer: the addresses of its direct
// listener. The relay forwards it to the agent under the agent's session
// id and sets Gateway from the gateway's verified identity, which the
// agent then requires of the certificate it is shown (DialConfig
// ExpectIdentity).
type Answer struct {
	Type       string           `json:"type"` // MessageAnswer
	SessionID  uint64           `json:"session_id"`
	Service    string           `json:"service,omitempty"`
	Candidates []netip.AddrPort `json:"candidates"`
	Gateway    string           `json:"gateway,omitempty"`
	// ForwardPort, set by a relay with forward_ports for the agent, is a
	// UDP port at the relay's address (the one the agent's session
	// reaches) that forwards to the gateway's listener: a candidate the
	// agent dials when the gateway's own do not answer.
	ForwardPort uint16 `json:"forward_port,omitempty"`
}

// Result ends a signaling session: whether the agent's direct connection
// succeeded, and to which address.
type Result struct {
	Type      string         `json:"type"` // MessageResult
	SessionID uint64         `json:"session_id"`
	Success   bool           `json:"success"`
	Address   netip.AddrPort `json:"address,omitzero"`
}

// Ping asks the peer for a Pong with the same Seq; a session whose pings go
// unanswered is dead, whatever QUIC's idle timer says.
type Ping struct {
	Type string `json:"type"` // MessagePing
	Seq  uint64 `json:"seq"`
}

// Pong answers a Ping.
type Pong struct {
	Type string `json:"type"` // MessagePong
	Seq  uint64 `json:"seq"`
}

// Codes of an ErrorMessage that ends a signaling session (its SessionID
// set). Either party may also send codes of its own.
const (
	CodeNotAuthorized  = "not_authorized"  // the agent may not reach the service (or it does not exist)
	CodeNoGateway      = "no_gateway"      // no gateway serving the service offers a direct path
	CodeBusy           = "busy"            // the connection's cap of signaling sessions is reached
	CodeDuplicate      = "duplicate"       // the session id is in use
	CodeUnknownSession = "unknown_session" // no such session of the sender's
	CodeExpired        = "expired"         // not completed in time
	CodePeerGone       = "peer_gone"       // the other party's session ended
	CodeDrained        = "drained"         // the gateway was drained: no new flows on the direct path
	CodeServiceDown    = "service_down"    // the gateway reports the service down
	CodeNoListener     = "no_listener"     // the gateway accepts no direct connections
)

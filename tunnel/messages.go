package tunnel

import "net/netip"

// Types of the ztna-v2 control messages (docs/protocol.md). MessageTypeError
// is in frame_error.go.
const (
	MessageHello     = "hello"     // client → server, first on the stream
	MessageWelcome   = "welcome"   // server → client, the answer to hello
	MessageRegister  = "register"  // gateway → relay: the whole service set
	MessageAssign    = "assign"    // relay → gateway: VIPs of the registered services
	MessageHealth    = "health"    // gateway → relay: service health changes
	MessageTagOpen   = "tag_open"  // relay → gateway: a tag before its first 0x30
	MessageTagClose  = "tag_close" // relay → gateway: tags that died
	MessageDirectory = "directory" // relay or gateway → agent: the services it may reach
)

// Hello is the first message of a client on the control stream.
type Hello struct {
	Type    string `json:"type"`              // MessageHello
	Role    string `json:"role"`              // RoleAgent or RoleGateway
	Name    string `json:"name,omitempty"`    // the client's configured name, for logs
	Version string `json:"version,omitempty"` // the client's software version, for logs
	// InnerAddr is an agent's [tun] address: the one source address its
	// packets may carry (anti-spoofing).
	InnerAddr netip.Addr `json:"inner_addr,omitzero"`
	// Padding says the client drops the zeros after a datagram's IP packet
	// (docs/protocol.md, "Padding"), so the server may pad what it sends.
	// Dial sets it; a client that leaves it out gets no padding.
	Padding bool `json:"padding,omitempty"`
}

// Welcome is the server's answer to a Hello.
type Welcome struct {
	Type    string `json:"type"`    // MessageWelcome
	Session uint64 `json:"session"` // the server's session id, for logs and the API
	// Observed is the client's address as the server sees it, IPv6 too
	// (the datagram QAD carries IPv4 only).
	Observed netip.AddrPort `json:"observed,omitzero"`
	// MaxPacket is the largest IP packet the server can carry for the
	// client end to end; 0 when the server does not know.
	MaxPacket int `json:"max_packet,omitempty"`
	// Padding says the server drops the zeros after a datagram's IP packet,
	// so the client may pad what it sends. SendWelcome sets it.
	Padding bool `json:"padding,omitempty"`
}

// PortInfo is one port of a service's VIP.
type PortInfo struct {
	Name     string `json:"name,omitempty"` // names the SRV record
	Protocol string `json:"protocol"`       // "tcp" or "udp"
	Port     uint16 `json:"port"`
}

// ServiceInfo is one service a gateway registers.
type ServiceInfo struct {
	Name    string     `json:"name"`
	Tenants []string   `json:"tenants"` // tenant names, "*" for every tenant
	Ports   []PortInfo `json:"ports"`
	ICMP    bool       `json:"icmp,omitempty"`
	Healthy bool       `json:"healthy"`
	// VIP and VIP6 are the gateway's pins; the relay honours them when the
	// service first gets a VIP there and no relay pin exists.
	VIP  netip.Addr `json:"vip,omitzero"`
	VIP6 netip.Addr `json:"vip6,omitzero"`
}

// Register is a gateway's whole service set; each one replaces the last.
type Register struct {
	Type     string        `json:"type"` // MessageRegister
	Services []ServiceInfo `json:"services"`
	// Candidates are addresses where agents may reach the gateway directly.
	Candidates []netip.AddrPort `json:"candidates,omitempty"`
}

// VIPAssignment is the VIPs of one registered service.
type VIPAssignment struct {
	Service string     `json:"service"`
	VIP     netip.Addr `json:"vip,omitzero"`
	VIP6    netip.Addr `json:"vip6,omitzero"`
}

// Rejection names a registered service the relay refused, and why.
type Rejection struct {
	Service string `json:"service"`
	Reason  string `json:"reason"`
}

// Assign answers a Register with the VIPs of its services.
type Assign struct {
	Type     string          `json:"type"` // MessageAssign
	Zone     string          `json:"zone"`
	TTL      int             `json:"ttl"` // seconds, for DNS answers
	Pool     netip.Prefix    `json:"pool"`
	Pool6    netip.Prefix    `json:"pool6,omitzero"`
	VIPs     []VIPAssignment `json:"vips"`
	Rejected []Rejection     `json:"rejected,omitempty"`
}

// Health reports the health of a gateway's services, on every change.
type Health struct {
	Type     string          `json:"type"` // MessageHealth
	Services map[string]bool `json:"services"`
}

// TagOpen announces a tag to a gateway before its first tagged packet:
// the gateway binds flows carrying the tag to this identity.
type TagOpen struct {
	Type      string     `json:"type"` // MessageTagOpen
	Tag       uint32     `json:"tag"`
	Service   string     `json:"service"`
	Tenant    string     `json:"tenant"`
	Identity  string     `json:"identity"` // Identity.String() of the agent
	InnerAddr netip.Addr `json:"inner_addr,omitzero"`
}

// TagClose tells a gateway that tags died: it closes the flows bound to
// them.
type TagClose struct {
	Type string   `json:"type"` // MessageTagClose
	Tags []uint32 `json:"tags"`
}

// DirectoryService is one service in a Directory.
type DirectoryService struct {
	Name    string     `json:"name"`
	VIP     netip.Addr `json:"vip,omitzero"`
	VIP6    netip.Addr `json:"vip6,omitzero"`
	Ports   []PortInfo `json:"ports"`
	ICMP    bool       `json:"icmp,omitempty"`
	Healthy bool       `json:"healthy"`
}

// Directory is the set of services an agent may reach, pushed at connect
// and on every change; each one replaces the last.
type Directory struct {
	Type     string             `json:"type"` // MessageDirectory
	Zone     string             `json:"zone"`
	TTL      int                `json:"ttl"` // seconds
	Pool     netip.Prefix       `json:"pool"`
	Pool6    netip.Prefix       `json:"pool6,omitzero"`
	Services []DirectoryService `json:"services"`
}

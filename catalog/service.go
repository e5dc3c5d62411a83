package catalog

import (
	"net/netip"
	"slices"
	"time"
)

// Protocol is a transport protocol a service port carries.
type Protocol uint8

// Transport protocols of a service port.
const (
	TCP Protocol = iota + 1
	UDP
)

// String returns "tcp" or "udp".
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "unknown"
}

// ParseProtocol parses "tcp" or "udp".
func ParseProtocol(s string) (Protocol, bool) {
	switch s {
	case "tcp":
		return TCP, true
	case "udp":
		return UDP, true
	}
	return 0, false
}

// Port maps one port of a service's VIP to a port on its backends.
type Port struct {
	Name     string // optional; names the SRV record (_<name>._<proto>)
	Protocol Protocol
	Port     uint16 // on the VIP
	Target   uint16 // on the backend; equal to Port unless configured
}

// Balance is a load-balancing policy among a service's healthy backends.
type Balance uint8

// Balancing policies.
const (
	RoundRobin Balance = iota
	LeastConn
	SourceHash
)

var balanceNames = []string{"round_robin", "least_conn", "source_hash"}

// String returns the configuration name of the policy.
func (b Balance) String() string {
	if int(b) < len(balanceNames) {
		return balanceNames[b]
	}
	return "unknown"
}

// ParseBalance parses a configuration name of a balancing policy.
func ParseBalance(s string) (Balance, bool) {
	i := slices.Index(balanceNames, s)
	return Balance(i), i >= 0
}

// HealthType selects the active check run against a service's backends.
type HealthType uint8

// Health check types.
const (
	HealthNone HealthType = iota
	HealthTCP
	HealthHTTP
	HealthUDP
)

var healthNames = []string{"none", "tcp", "http", "udp"}

// String returns the configuration name of the check type.
func (h HealthType) String() string {
	if int(h) < len(healthNames) {
		return healthNames[h]
	}
	return "unknown"
}

// ParseHealthType parses a configuration name of a check type.
func ParseHealthType(s string) (HealthType, bool) {
	i := slices.Index(healthNames, s)
	return HealthType(i), i >= 0
}

// Health configures the active checks of a service.
type Health struct {
	Type         HealthType
	Port         uint16 // backend port to check: health.port, else its default (the first target of the check's protocol)
	PortSet      bool   // health.port was given: Port is probed on every backend, not only those without a port of their own (SRV)
	Path         string // http: request path
	ExpectStatus int    // http: required status; 0 means any 2xx
	Send         string // udp: payload; empty means a DNS SOA query when the port probed is 53
	Expect       string // udp: the reply must contain this; empty means any reply
	Interval     time.Duration
	Timeout      time.Duration
	Rise         int // consecutive successes before a backend is up
	Fall         int // consecutive failures before a backend is down
}

// Timeouts bound how long an idle flow of a service lives.
type Timeouts struct {
	TCPIdle time.Duration
	UDPIdle time.Duration // applies to ports other than 53
	DNSIdle time.Duration // UDP flows to port 53
}

// Default values of a service's settings.
const (
	DefaultTCPIdle        = time.Hour
	DefaultUDPIdle        = 2 * time.Minute
	DefaultDNSIdle        = 30 * time.Second
	DefaultHealthInterval = 5 * time.Second
	DefaultHealthTimeout  = time.Second
	DefaultHealthRise     = 2
	DefaultHealthFall     = 3
)

// Service is a published private service: a name, a VIP, the ports it
// serves, who may reach it and where its traffic goes.
type Service struct {
	Name        string
	Tenants     []string   // tenant names, or "*" for every tenant
	VIP         netip.Addr // pinned IPv4 VIP; invalid when allocated automatically
	VIP6        netip.Addr // pinned IPv6 VIP; invalid when allocated automatically
	Backends    []string   // IP literals or DNS names (re-resolved by TTL)
	BackendsSRV string     // optional SRV name the backends are discovered from
	Balance     Balance
	ICMP        bool // echo requests to the VIP are sent to a backend
	Ports       []Port
	Health      Health
	Timeouts    Timeouts
	FlowLimits
	Source string // "file" or "api"
}

// Allows reports whether tenant may reach the service.
func (s *Service) Allows(tenant string) bool {
	for _, t := range s.Tenants {
		if t == "*" || t == tenant {
			return true
		}
	}
	return false
}

// PortFor returns the port mapping for a protocol and VIP port.
func (s *Service) PortFor(p Protocol, port uint16) (Port, bool) {
	for _, sp := range s.Ports {
		if sp.Protocol == p && sp.Port == port {
			return sp, true
		}
	}
	return Port{}, false
}

// UDPIdleFor returns the idle timeout of a UDP flow to the given VIP port.
func (t Timeouts) UDPIdleFor(port uint16) time.Duration {
	if port == 53 && t.DNSIdle > 0 {
		return t.DNSIdle
	}
	return t.UDPIdle
}

// Tenant groups the clients that share one set of permissions.
type Tenant struct {
	Name    string
	Sources []netip.Prefix // TUN-ingress clients from these prefixes belong to the tenant
	FlowLimits
}

// FlowLimits are the limits a tenant or a service puts on its new flows, on
// top of the gateway's. A zero field sets no limit of its own: the
// gateway's [limits] apply (and a tenant gets its default share of the
// handshakes).
type FlowLimits struct {
	MaxFlows              int // concurrent flows of the whole tenant or service
	MaxInflightHandshakes int // TCP handshakes in progress of the whole tenant or service
	NewFlowsPerSecond     int // new flows per second of each source address (of the tenant, or to the service)
	NewFlowsBurst         int // burst of that rate; 0: the default (twice the rate, at most the gateway's burst)
}

package conf

import (
	"net/netip"
	"strconv"
	"time"

	"github.com/ztgate/ztgate/catalog"
)

// Role names the kind of process a configuration file is for.
type Role string

// Roles a configuration file may configure.
const (
	RoleGateway Role = "gateway"
	RoleRelay   Role = "relay"
	RoleAgent   Role = "agent"
)

// Gateway is a validated gateway configuration with every default filled in.
type Gateway struct {
	Path string `key:"-"` // the file it was loaded from; empty when parsed from memory

	Name     string `key:"gateway.name"`      // [gateway] name; default: the host name
	StateDir string `key:"gateway.state_dir"` // [gateway] state_dir; default "/var/lib/ztgate"; relative paths resolve against the file's directory
	// VIPHoldDown is how long a removed service's VIP is held back before
	// reuse ([gateway] vip_hold_down); default and minimum: the DNS TTL.
	VIPHoldDown time.Duration `key:"gateway.vip_hold_down"`
	// DrainTimeout bounds how long flows of a removed service or drained
	// backend live on ([gateway] drain_timeout, default 30s).
	DrainTimeout time.Duration `key:"gateway.drain_timeout"`

	TUN       TUN               `key:"tun"`
	DNS       DNS               `key:"dns"`
	API       API               `key:"api"`
	Tunnel    Tunnel            `key:"tunnel"`
	Limits    Limits            `key:"limits"`
	Discovery Discovery         `key:"discovery"`
	Tenants   []catalog.Tenant  `key:"tenant"`
	Services  []catalog.Service `key:"service"` // Source "file"
}

// TUN is the [tun] section of a gateway or agent.
type TUN struct {
	Name    string       `key:"name"`    // default "ztgate0" (gateway), "ztagent0" (agent)
	MTU     int          `key:"mtu"`     // default 1420 (gateway), 1280 (agent); 576..65535
	Pool    netip.Prefix `key:"pool"`    // default 10.100.0.0/24; IPv4, at most /29; an agent keeps the default (the relay's pool comes with the directory)
	Pool6   netip.Prefix `key:"pool6"`   // optional IPv6 pool, /64../126; invalid when absent
	Address netip.Addr   `key:"address"` // agent only: its inner IPv4 source address outside Pool, default 100.64.0.1
	// Enabled is false when a gateway attached to a relay has no [tun]
	// section: it then has no LAN ingress and needs no root.
	Enabled bool `key:"."`
}

// GatewayAddr returns the gateway's own address: the first host of the pool.
func (t TUN) GatewayAddr() netip.Addr { return t.Pool.Masked().Addr().Next() }

// DNS is the [dns] section.
type DNS struct {
	Zone      string           `key:"zone"`               // fully qualified, lower case, trailing dot; default "ztna.internal."
	Listen    []netip.AddrPort `key:"listen" order:"any"` // host listeners (UDP and TCP); port 0 picks a free port
	TTL       time.Duration    `key:"ttl"`                // default 30s; 1s..24h
	Upstreams []netip.AddrPort `key:"upstreams"`          // forwarders for names outside the zone; port default 53
	// ForwardTimeout bounds one forwarded query ([dns] forward_timeout, default 2s).
	ForwardTimeout time.Duration `key:"forward_timeout"`
	// SetResolver (an agent's only, default true): point the host's
	// systemd-resolved, when it runs, at the agent's DNS for the zone.
	SetResolver bool `key:"set_resolver"`
}

// API is the [api] section.
type API struct {
	// Listen defaults to 127.0.0.1:7780 (gateway), 127.0.0.1:7781 (relay),
	// disabled (agent); "off" disables it, which leaves it invalid.
	Listen    netip.AddrPort `key:"listen"`
	TokenFile string         `key:"token_file"` // resolved path of the bearer token file; "" = no token
}

// Tunnel is the [tunnel] section of a gateway or agent.
type Tunnel struct {
	Listen     string `key:"listen"`      // gateway: direct agent connections, host:port
	Relay      string `key:"relay"`       // gateway: relay to register with, host:port
	Server     string `key:"server"`      // agent: relay or gateway, host:port
	ServerName string `key:"server_name"` // TLS name to verify; default: the host part of Relay/Server
	Cert       string `key:"cert"`        // resolved paths of the TLS files; each named file is readable
	Key        string `key:"key"`
	CA         string `key:"ca"`
	// Insecure relaxes mutual TLS for development (insecure_allow_unauthenticated):
	// peers without a ztgate identity are accepted. Loudly logged.
	Insecure bool `key:"insecure_allow_unauthenticated"`
}

// Limits is the [limits] section of a gateway: protection against floods.
type Limits struct {
	MaxFlows             int `key:"max_flows"`               // concurrent flows of the whole gateway; default 65536; at least 1
	MaxInflightHandshake int `key:"max_inflight_handshakes"` // TCP handshakes in progress (max_inflight_handshakes); default 1024; at least 1
	NewFlowsPerSecond    int `key:"new_flows_per_second"`    // new flows per second per client address; default 1000; 0 = unlimited
	NewFlowsBurst        int `key:"new_flows_burst"`         // burst of the rate above; default 2×rate
}

// Discovery is the [discovery] section: how backend host names are resolved.
type Discovery struct {
	Nameservers []netip.AddrPort `key:"nameservers"` // ip or ip:port (port default 53); empty = the system resolver
	MinTTL      time.Duration    `key:"min_ttl"`     // default 5s
	MaxTTL      time.Duration    `key:"max_ttl"`     // default 5m
}

// Relay is a validated relay configuration.
type Relay struct {
	Path     string        `key:"-"`
	Name     string        `key:"relay.name"`
	Listen   string        `key:"relay.listen"`    // host:port, default "0.0.0.0:4433"
	StateDir string        `key:"relay.state_dir"` // default "/var/lib/ztgate-relay"
	Pool     netip.Prefix  `key:"relay.pool"`
	Pool6    netip.Prefix  `key:"relay.pool6"`
	Zone     string        `key:"relay.zone"` // as DNS.Zone
	TTL      time.Duration `key:"relay.ttl"`
	Cert     string        `key:"relay.cert"`
	Key      string        `key:"relay.key"`
	CA       string        `key:"relay.ca"`
	Insecure bool          `key:"relay.insecure_allow_unauthenticated"` // insecure_allow_unauthenticated
	// VIPHoldDown as Gateway.VIPHoldDown.
	VIPHoldDown time.Duration `key:"relay.vip_hold_down"`
	API         API           `key:"api"`
	// Pins are central VIP pins: [[pin]] service = "web", vip = "10.100.0.10".
	Pins []Pin `key:"pin" order:"any"`
	// ForwardPorts is the range of UDP ports (on the listen address) of
	// the relay's forwarded paths (forward_ports = "4440-4471";
	// docs/direct-path.md); the zero value turns forwarding off.
	ForwardPorts PortRange `key:"relay.forward_ports"`
}

// PortRange is an inclusive range of port numbers; First == 0 is none.
type PortRange struct{ First, Last uint16 }

// String returns "first-last", or "off" for none.
func (p PortRange) String() string {
	if p.First == 0 {
		return "off"
	}
	return strconv.Itoa(int(p.First)) + "-" + strconv.Itoa(int(p.Last))
}

// Len returns how many ports the range holds.
func (p PortRange) Len() int {
	if p.First == 0 {
		return 0
	}
	return int(p.Last) - int(p.First) + 1
}

// Pin fixes the VIP of a service at the relay.
type Pin struct {
	Service string
	VIP     netip.Addr
}

// Agent is a validated agent configuration.
type Agent struct {
	Path   string `key:"-"`
	Name   string `key:"agent.name"`
	Tunnel Tunnel `key:"tunnel"`
	TUN    TUN    `key:"tun"`
	DNS    DNS    `key:"dns"` // only Listen (and Zone, TTL as fallbacks) apply to an agent
	API    API    `key:"api"` // optional local status API; default disabled
}

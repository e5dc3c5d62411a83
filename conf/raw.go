package conf

// The raw structs mirror the TOML schema key for key. Their toml tags are
// the only list of known keys (see treeDecoder). Durations, addresses and
// enums are strings here and are converted in the validation pass; pointers
// mark values whose absence differs from their zero value.

type rawGatewayFile struct {
	Gateway   *rawGatewaySection `toml:"gateway"`
	TUN       *rawTUN            `toml:"tun"`
	DNS       *rawDNS            `toml:"dns"`
	API       *rawAPI            `toml:"api"`
	Tunnel    *rawTunnel         `toml:"tunnel"`
	Limits    *rawLimits         `toml:"limits"`
	Discovery *rawDiscovery      `toml:"discovery"`
	Tenants   []rawTenant        `toml:"tenant"`
	Services  []rawService       `toml:"service"`
}

type rawGatewaySection struct {
	Name         string `toml:"name"`
	StateDir     string `toml:"state_dir"`
	VIPHoldDown  string `toml:"vip_hold_down"`
	DrainTimeout string `toml:"drain_timeout"`
}

type rawTUN struct {
	Name  string `toml:"name"`
	MTU   *int   `toml:"mtu"`
	Pool  string `toml:"pool"`
	Pool6 string `toml:"pool6"`
}

type rawDNS struct {
	Zone           string   `toml:"zone"`
	Listen         []string `toml:"listen"`
	TTL            string   `toml:"ttl"`
	Upstreams      []string `toml:"upstreams"`
	ForwardTimeout string   `toml:"forward_timeout"`
}

type rawAPI struct {
	Listen    string `toml:"listen"`
	TokenFile string `toml:"token_file"`
}

type rawTunnel struct {
	Listen     string `toml:"listen"`
	Relay      string `toml:"relay"`
	ServerName string `toml:"server_name"`
	Cert       string `toml:"cert"`
	Key        string `toml:"key"`
	CA         string `toml:"ca"`
	Insecure   bool   `toml:"insecure_allow_unauthenticated"`
}

type rawLimits struct {
	MaxFlows              *int `toml:"max_flows"`
	MaxInflightHandshakes *int `toml:"max_inflight_handshakes"`
	NewFlowsPerSecond     *int `toml:"new_flows_per_second"`
	NewFlowsBurst         *int `toml:"new_flows_burst"`
}

type rawDiscovery struct {
	Nameservers []string `toml:"nameservers"`
	MinTTL      string   `toml:"min_ttl"`
	MaxTTL      string   `toml:"max_ttl"`
}

type rawTenant struct {
	Name                  string   `toml:"name"`
	Sources               []string `toml:"sources"`
	MaxFlows              int      `toml:"max_flows"`
	MaxInflightHandshakes int      `toml:"max_inflight_handshakes"`
	NewFlowsPerSecond     int      `toml:"new_flows_per_second"`
	NewFlowsBurst         int      `toml:"new_flows_burst"`
}

type rawService struct {
	Name        string       `toml:"name"`
	Tenants     []string     `toml:"tenants"`
	VIP         string       `toml:"vip"`
	VIP6        string       `toml:"vip6"`
	Backends    []string     `toml:"backends"`
	BackendsSRV string       `toml:"backends_srv"`
	Balance     string       `toml:"balance"`
	ICMP        *bool        `toml:"icmp"`
	Ports       []rawPort    `toml:"port"`
	Health      *rawHealth   `toml:"health"`
	Timeouts    *rawTimeouts `toml:"timeouts"`

	MaxFlows              int `toml:"max_flows"`
	MaxInflightHandshakes int `toml:"max_inflight_handshakes"`
	NewFlowsPerSecond     int `toml:"new_flows_per_second"`
	NewFlowsBurst         int `toml:"new_flows_burst"`
}

type rawPort struct {
	Name     string `toml:"name"`
	Protocol string `toml:"protocol"`
	Port     *int   `toml:"port"`
	Target   *int   `toml:"target"`
}

type rawHealth struct {
	Type         string `toml:"type"`
	Port         *int   `toml:"port"`
	Path         string `toml:"path"`
	ExpectStatus int    `toml:"expect_status"`
	Send         string `toml:"send"`
	Expect       string `toml:"expect"`
	Interval     string `toml:"interval"`
	Timeout      string `toml:"timeout"`
	Rise         *int   `toml:"rise"`
	Fall         *int   `toml:"fall"`
}

type rawTimeouts struct {
	TCPIdle string `toml:"tcp_idle"`
	UDPIdle string `toml:"udp_idle"`
}

type rawRelayFile struct {
	Relay *rawRelaySection `toml:"relay"`
	API   *rawAPI          `toml:"api"`
	Pins  []rawPin         `toml:"pin"`
}

type rawRelaySection struct {
	Name         string `toml:"name"`
	Listen       string `toml:"listen"`
	StateDir     string `toml:"state_dir"`
	Pool         string `toml:"pool"`
	Pool6        string `toml:"pool6"`
	Zone         string `toml:"zone"`
	TTL          string `toml:"ttl"`
	Cert         string `toml:"cert"`
	Key          string `toml:"key"`
	CA           string `toml:"ca"`
	Insecure     bool   `toml:"insecure_allow_unauthenticated"`
	VIPHoldDown  string `toml:"vip_hold_down"`
	ForwardPorts string `toml:"forward_ports"`
}

type rawPin struct {
	Service string `toml:"service"`
	VIP     string `toml:"vip"`
}

type rawAgentFile struct {
	Agent  *rawAgentSection `toml:"agent"`
	Tunnel *rawAgentTunnel  `toml:"tunnel"`
	TUN    *rawAgentTUN     `toml:"tun"`
	DNS    *rawAgentDNS     `toml:"dns"`
	API    *rawAPI          `toml:"api"`
}

type rawAgentSection struct {
	Name string `toml:"name"`
}

type rawAgentTunnel struct {
	Server     string `toml:"server"`
	ServerName string `toml:"server_name"`
	Cert       string `toml:"cert"`
	Key        string `toml:"key"`
	CA         string `toml:"ca"`
	Insecure   bool   `toml:"insecure_allow_unauthenticated"`
}

type rawAgentTUN struct {
	Name    string `toml:"name"`
	Address string `toml:"address"`
	MTU     *int   `toml:"mtu"`
}

type rawAgentDNS struct {
	Listen      []string `toml:"listen"`
	SetResolver *bool    `toml:"set_resolver"`
}

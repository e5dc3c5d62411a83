package conf

import "net/netip"

// credentials resolves and checks the TLS files of a QUIC peer. needCertKey
// and needCA say which of them must be named; every named file must be
// readable.
func (v *validator) credentials(path, cert, key, ca string, needCertKey, needCA bool) (string, string, string) {
	files := []struct {
		key, val string
		need     bool
	}{{"cert", cert, needCertKey}, {"key", key, needCertKey}, {"ca", ca, needCA}}
	for _, f := range files {
		if f.val == "" && f.need {
			hint := ""
			if f.key == "ca" {
				hint = " (or set insecure_allow_unauthenticated = true for development)"
			}
			v.addf(join(path, f.key), "required%s", hint)
		}
	}
	return v.file(join(path, "cert"), cert), v.file(join(path, "key"), key), v.file(join(path, "ca"), ca)
}

// serverName returns the TLS name to verify: the configured one, else the
// host part of the peer address.
func (v *validator) serverName(path, name, host string) string {
	if name == "" {
		return host
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return name
	}
	if err := checkHostName(name); err != nil {
		v.add(path, err)
	}
	return name
}

// gatewayTunnel validates a gateway's [tunnel] section.
func (v *validator) gatewayTunnel(r *rawTunnel) Tunnel {
	if r == nil {
		return Tunnel{}
	}
	t := Tunnel{Listen: r.Listen, Relay: r.Relay, Insecure: r.Insecure}
	if r.Listen != "" {
		v.hostPort("tunnel.listen", r.Listen, true)
	}
	var host string
	if r.Relay != "" {
		host, _ = v.hostPort("tunnel.relay", r.Relay, false)
	}
	t.ServerName = v.serverName("tunnel.server_name", r.ServerName, host)
	active := r.Listen != "" || r.Relay != ""
	t.Cert, t.Key, t.CA = v.credentials("tunnel", r.Cert, r.Key, r.CA, active, active && !r.Insecure)
	return t
}

// agentTunnel validates an agent's [tunnel] section. With
// insecure_allow_unauthenticated the agent may connect without a client
// certificate and without verifying the server, so no file is required.
func (v *validator) agentTunnel(r *rawAgentTunnel) Tunnel {
	if r == nil {
		r = &rawAgentTunnel{}
	}
	t := Tunnel{Server: r.Server, Insecure: r.Insecure}
	var host string
	if r.Server == "" {
		v.addf("tunnel.server", "required: the relay or gateway to connect to, host:port")
	} else {
		host, _ = v.hostPort("tunnel.server", r.Server, false)
	}
	t.ServerName = v.serverName("tunnel.server_name", r.ServerName, host)
	t.Cert, t.Key, t.CA = v.credentials("tunnel", r.Cert, r.Key, r.CA, !r.Insecure, !r.Insecure)
	return t
}

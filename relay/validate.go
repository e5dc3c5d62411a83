package relay

import (
	"fmt"

	"github.com/ztgate/ztgate/tunnel"
)

// checkService reports why a gateway may not register info, as a result
// label and a message for the gateway; "" when it may. seen holds the
// names accepted earlier in the same message.
func checkService(gw tunnel.Identity, info tunnel.ServiceInfo, seen map[string]tunnel.ServiceInfo) (result, detail string) {
	if err := checkLabel(info.Name); err != nil {
		return regInvalid, "name: " + err.Error()
	}
	if _, dup := seen[info.Name]; dup {
		return regInvalid, "registered twice in one message"
	}
	if len(info.Tenants) == 0 {
		return regInvalid, "no tenants"
	}
	for _, t := range info.Tenants {
		if t == "*" {
			continue
		}
		if err := checkLabel(t); err != nil {
			return regInvalid, "tenant: " + err.Error()
		}
	}
	if err := checkPorts(info.Ports); err != nil {
		return regInvalid, err.Error()
	}
	if !gw.Permits(info.Name) {
		return regNotPermitted, fmt.Sprintf("identity %s holds no rights for this service", gw)
	}
	return "", ""
}

// checkPorts checks a service's ports: tcp or udp, not 0, each once, a
// name (optional) a DNS label as in the gateway's configuration.
func checkPorts(ports []tunnel.PortInfo) error {
	type key struct {
		proto string
		port  uint16
	}
	seen := make(map[key]bool, len(ports))
	for _, p := range ports {
		k := key{p.Protocol, p.Port}
		switch {
		case p.Protocol != "tcp" && p.Protocol != "udp":
			return fmt.Errorf("port %d: protocol %q is not tcp or udp", p.Port, p.Protocol)
		case p.Port == 0:
			return fmt.Errorf("port 0 (%s)", p.Protocol)
		case seen[k]:
			return fmt.Errorf("port %d/%s listed twice", p.Port, p.Protocol)
		}
		if p.Name != "" {
			if err := checkLabel(p.Name); err != nil {
				return fmt.Errorf("port %d/%s: name: %w", p.Port, p.Protocol, err)
			}
		}
		seen[k] = true
	}
	return nil
}

// checkLabel reports why s is not a lower-case DNS label (the form every
// name takes in ztgate's configuration): 1 to 63 of a-z, 0-9 and '-',
// neither first nor last a '-'.
func checkLabel(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case len(s) > 63:
		return fmt.Errorf("%q is longer than 63 characters", s)
	case s[0] == '-' || s[len(s)-1] == '-':
		return fmt.Errorf("%q starts or ends with '-'", s)
	}
	for i := range len(s) {
		if c := s[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return fmt.Errorf("%q is not a lower-case DNS label", s)
		}
	}
	return nil
}

package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ztgate/ztgate/agent"
	"github.com/ztgate/ztgate/tunnel"
)

// statusService is what `status` reads of a service from a gateway's or a
// relay's GET /v1/services. A relay's services have gateways and no
// backends, a gateway's the reverse.
type statusService struct {
	Name        string   `json:"name"`
	VIP         string   `json:"vip"`
	VIP6        string   `json:"vip6"`
	Tenants     []string `json:"tenants"`
	Healthy     bool     `json:"healthy"`
	Source      string   `json:"source"`
	ActiveFlows int64    `json:"active_flows"`
	Ports       []struct {
		Name     string `json:"name"`
		Protocol string `json:"protocol"`
		Port     int    `json:"port"`
		Target   int    `json:"target"`
	} `json:"ports"`
	Backends []struct {
		Address     string `json:"address"`
		Backend     string `json:"backend"` // address:port for one from an SRV record; absent from older gateways
		State       string `json:"state"`
		LastError   string `json:"last_error"`
		ActiveFlows int64  `json:"active_flows"`
	} `json:"backends"`
	Gateways []statusGateway `json:"gateways"`
}

// statusGateway is a gateway serving a service at a relay.
type statusGateway struct {
	Name    string `json:"name"`
	Healthy bool   `json:"healthy"`
	State   string `json:"state"` // healthy, down or draining
	Flows   int64  `json:"flows"` // of the gateway, all services
}

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := fs.String("api", "http://127.0.0.1:7780", "admin API `URL` of a gateway (default), a relay (e.g. http://127.0.0.1:7781) or an agent (its [api] listen, e.g. http://127.0.0.1:7782)")
	asJSON := fs.Bool("json", false, "print the API's JSON instead of a table")
	tokenFile := fs.String("token-file", "", "`file` with the API's bearer token")
	if code, ok := parseFlags(fs, args, 0); !ok {
		return code
	}
	c, err := newAPIClient(*api, *tokenFile, apiTimeout)
	if err != nil {
		fmt.Fprintln(stderr, "ztgate status:", err)
		return 1
	}
	get := func(path string) ([]byte, error) {
		code, body, err := c.do("GET", path)
		switch {
		case err != nil:
			return nil, err
		case code == http.StatusUnauthorized:
			return nil, fmt.Errorf("%s: %w", path, errUnauthorized)
		case code == http.StatusNotFound:
			return nil, fmt.Errorf("%s: %w", path, errNotFound)
		case code != http.StatusOK:
			return nil, fmt.Errorf("%s: %d %s: %s", path, code, http.StatusText(code), strings.TrimSpace(string(body)))
		}
		return body, nil
	}
	body, err := get("/v1/services")
	isAgent := false
	if errors.Is(err, errNotFound) { // an agent has its status instead
		body, err = get("/v1/status")
		isAgent = err == nil
	}
	if err != nil {
		printAPIError(stderr, "status", *api, err)
		return 1
	}
	if *asJSON {
		stdout.Write(body)
		return 0
	}
	if isAgent {
		var st agent.Status
		if err := json.Unmarshal(body, &st); err != nil || st.Role != "agent" {
			fmt.Fprintf(stderr, "ztgate status: %s does not look like a ztgate API (%v)\n", *api, err)
			return 1
		}
		renderAgentStatus(stdout, st, time.Now())
		return 0
	}
	var list struct {
		Services []statusService `json:"services"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		fmt.Fprintf(stderr, "ztgate status: %s does not look like a ztgate API: %v\n", *api, err)
		return 1
	}
	// A relay also says who is connected: with no services, whether its
	// gateways are there at all. A gateway says whether it is connected to
	// its relay ([tunnel] relay), and which agents are connected to it
	// directly ([tunnel] listen); /v1/sessions' role tells the two apart.
	var sessions struct {
		Role     string          `json:"role"` // "gateway", or "relay" (absent from older relays)
		Sessions []statusSession `json:"sessions"`
	}
	if body, err := get("/v1/sessions"); err != nil || json.Unmarshal(body, &sessions) != nil {
		sessions.Sessions = nil
	}
	if sessions.Sessions != nil && sessions.Role != "gateway" {
		fmt.Fprintln(stdout, formatSessions(sessions.Sessions))
	} else {
		if body, err := get("/v1/relay"); err == nil {
			var relay struct {
				Relay  string            `json:"relay"`
				Tunnel tunnel.LinkStatus `json:"tunnel"`
			}
			if json.Unmarshal(body, &relay) == nil && relay.Relay != "" {
				fmt.Fprintln(stdout, formatLink(relay.Relay, relay.Tunnel, time.Now()))
			}
		}
		if sessions.Sessions != nil {
			fmt.Fprintln(stdout, formatDirectAgents(sessions.Sessions))
		}
	}
	renderStatus(stdout, list.Services)
	return 0
}

// statusSession is what `status` reads of a session in a relay's GET
// /v1/sessions.
type statusSession struct {
	Role     string `json:"role"`
	Identity string `json:"identity"`
}

// formatSessions sums up a relay's sessions: its gateways by identity (the
// first few), its agents by number.
func formatSessions(ss []statusSession) string {
	var gws []string
	agents := 0
	for _, s := range ss {
		switch s.Role {
		case "gateway":
			gws = append(gws, s.Identity)
		case "agent":
			agents++
		}
	}
	count := func(n int, what string) string {
		switch n {
		case 0:
			return "no " + what
		case 1:
			return "1 " + what
		}
		return fmt.Sprintf("%d %ss", n, what)
	}
	out := "connected: " + count(len(gws), "gateway")
	if len(gws) > 0 {
		out += " (" + someNames(gws) + ")"
	}
	return out + ", " + count(agents, "agent")
}

// someNames joins the first few of names, sorted, and says how many more
// there are.
func someNames(names []string) string {
	const shown = 6
	names = slices.Sorted(slices.Values(names))
	out := strings.Join(names[:min(len(names), shown)], ", ")
	if more := len(names) - shown; more > 0 {
		out += fmt.Sprintf(", %d more", more)
	}
	return out
}

// renderStatus prints one line per service: a gateway's backends, or a
// relay's gateways with their state (healthy, down or draining).
func renderStatus(w io.Writer, services []statusService) {
	if len(services) == 0 {
		fmt.Fprintln(w, "no services")
		return
	}
	relay := false
	for _, s := range services {
		relay = relay || s.Gateways != nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if relay {
		fmt.Fprintln(tw, "SERVICE\tVIP\tPORTS\tTENANTS\tHEALTH\tGATEWAYS (STATE, FLOWS)")
	} else {
		fmt.Fprintln(tw, "SERVICE\tVIP\tPORTS\tTENANTS\tHEALTH\tFLOWS\tBACKENDS (STATE, FLOWS)")
	}
	for _, s := range services {
		vip := s.VIP
		if s.VIP6 != "" {
			vip += " " + s.VIP6
		}
		health := "down"
		if s.Healthy {
			health = "up"
		}
		head := fmt.Sprintf("%s\t%s\t%s\t%s\t%s", s.Name, vip, formatPorts(s), strings.Join(s.Tenants, ","), health)
		if relay {
			fmt.Fprintf(tw, "%s\t%s\n", head, formatGateways(s.Gateways))
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", head, s.ActiveFlows, formatBackends(s))
	}
	tw.Flush()
}

func formatPorts(s statusService) string {
	ports := make([]string, 0, len(s.Ports))
	for _, p := range s.Ports {
		if p.Target != 0 && p.Target != p.Port {
			ports = append(ports, fmt.Sprintf("%s/%d→%d", p.Protocol, p.Port, p.Target))
		} else {
			ports = append(ports, fmt.Sprintf("%s/%d", p.Protocol, p.Port))
		}
	}
	return strings.Join(ports, ",")
}

func formatBackends(s statusService) string {
	var out []string
	for _, b := range s.Backends {
		e := fmt.Sprintf("%s %s (%d)", cmp.Or(b.Backend, b.Address), b.State, b.ActiveFlows)
		if b.LastError != "" && b.State != "up" {
			e += ": " + b.LastError
		}
		out = append(out, e)
	}
	return strings.Join(out, "; ")
}

func formatGateways(gs []statusGateway) string {
	if len(gs) == 0 {
		return "none"
	}
	out := make([]string, 0, len(gs))
	for _, g := range gs {
		state := g.State
		if state == "" { // a relay older than the state field
			state = "down"
			if g.Healthy {
				state = "healthy"
			}
		}
		out = append(out, fmt.Sprintf("%s %s (%d)", g.Name, state, g.Flows))
	}
	return strings.Join(out, "; ")
}

// formatDirectAgents sums up the agents connected to a gateway directly:
// how many, and the first few identities.
func formatDirectAgents(ss []statusSession) string {
	if len(ss) == 0 {
		return "agents connected directly: none"
	}
	ids := make([]string, 0, len(ss))
	for _, s := range ss {
		ids = append(ids, s.Identity)
	}
	return fmt.Sprintf("agents connected directly: %d (%s)", len(ids), someNames(ids))
}

// formatLink is the line of a client's session to its server (an agent's
// to its relay or gateway, a gateway's to its relay): connected to whom
// since when, or why not and when it dials again.
func formatLink(server string, t tunnel.LinkStatus, now time.Time) string {
	ago := func(t time.Time) string { return now.Sub(t).Round(time.Second).String() }
	switch {
	case t.Connected:
		peer := t.Peer
		if peer == "" {
			peer = "an unverified server" // insecure_allow_unauthenticated without a CA
		}
		return fmt.Sprintf("tunnel to %s: connected to %s at %s (%s) for %s", server, peer, t.Remote, t.Version, ago(t.Since))
	case t.Since.IsZero():
		return fmt.Sprintf("tunnel to %s: connecting", server)
	}
	next := "dialling now"
	if wait := t.RetryAt.Sub(now).Round(time.Second); wait > 0 {
		next = "next dial in " + wait.String()
	}
	return fmt.Sprintf("tunnel to %s: DISCONNECTED for %s: %s; %s", server, ago(t.Since), t.LastError, next)
}

// renderAgentStatus prints the agent, its tunnel, and one line per service
// of its directory with the path its new flows take.
func renderAgentStatus(w io.Writer, st agent.Status, now time.Time) {
	who := st.Name
	if st.Identity != "" {
		who += " (" + st.Identity + ")"
	}
	fmt.Fprintf(w, "agent %s, address %s, MTU %d, pool %s\n", who, st.Address, st.MTU, st.Pool)
	fmt.Fprintln(w, formatLink(st.Server, st.Tunnel, now))
	if line := formatHostDNS(st.DNS); line != "" {
		fmt.Fprintln(w, line)
	}
	defer renderExcluded(w, st.Excluded)
	if len(st.Services) == 0 {
		if tenant, _, ok := strings.Cut(st.Identity, "/"); ok && st.Tunnel.Connected {
			// The server's directory is the agent's tenant's view.
			fmt.Fprintf(w, "no services for tenant %s: no service of the gateways lists it in its tenants\n", tenant)
			return
		}
		fmt.Fprintln(w, "no services")
		return
	}
	via := map[string]string{}
	for _, p := range st.Paths {
		via[p.Gateway] = fmt.Sprintf("%s at %s (%s)", p.Gateway, p.Remote, p.Via)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tVIP\tPORTS\tHEALTH\tPATH")
	for _, s := range st.Services {
		var vips []string
		for _, a := range []netip.Addr{s.VIP, s.VIP6} {
			if a.IsValid() {
				vips = append(vips, a.String())
			}
		}
		ports := make([]string, 0, len(s.Ports))
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%s/%d", p.Protocol, p.Port))
		}
		health := "down"
		if s.Healthy {
			health = "up"
		}
		path := s.Path
		switch {
		case s.Path == "direct":
			path = "direct to " + cmp.Or(via[s.Gateway], s.Gateway)
		case s.DirectFailure != "":
			path += " (no direct path: " + s.DirectFailure + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, strings.Join(vips, " "), strings.Join(ports, ","), health, path)
	}
	tw.Flush()
}

// formatHostDNS is the line of how the agent's host resolves the zone
// ("" from an agent that does not say).
func formatHostDNS(d agent.ResolverStatus) string {
	switch d.State {
	case "set":
		return fmt.Sprintf("host DNS: systemd-resolved sends %s to the agent (link %s)", strings.Join(d.Domains, ", "), d.Link)
	case "refused":
		return "host DNS: systemd-resolved REFUSED the agent's settings: " + d.Detail
	case "not_set":
		return "host DNS: not set: " + d.Detail
	case "off":
		return "host DNS: left alone (dns.set_resolver = false)"
	}
	return ""
}

// renderExcluded prints the services an agent leaves out of its directory,
// each with its VIP and why.
func renderExcluded(w io.Writer, excluded []agent.ExcludedService) {
	for _, e := range excluded {
		why := e.Reason
		if e.Reason == "local_address" {
			why = "its VIP is one of the agent's own addresses; give the server another pool or pin the service elsewhere"
		}
		fmt.Fprintf(w, "left out: %s at %s: %s\n", e.Name, e.VIP, why)
	}
}

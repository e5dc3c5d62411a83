package gateway

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/ztgate/ztgate/catalog"
	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

// Diff is what a reload or an API change did to the service table.
type Diff struct {
	Added           []string        `json:"added"`
	Removed         []string        `json:"removed"`
	Changed         []ServiceChange `json:"changed"`
	TenantsChanged  bool            `json:"tenants_changed,omitempty"`
	LimitsChanged   bool            `json:"limits_changed,omitempty"`
	RestartRequired []string        `json:"restart_required"`
	// TunnelFiles names the [tunnel] keys (tunnel.cert, tunnel.key,
	// tunnel.ca) that name other files than before: new tunnel handshakes
	// use the new files.
	TunnelFiles []string `json:"tunnel_files,omitempty"`
}

// ServiceChange names a changed service and the fields that changed.
type ServiceChange struct {
	Name   string   `json:"name"`
	Fields []string `json:"fields"`
}

// Empty reports whether the diff changed nothing.
func (d Diff) Empty() bool {
	return len(d.Added) == 0 && len(d.Removed) == 0 && len(d.Changed) == 0 && !d.TenantsChanged && !d.LimitsChanged &&
		len(d.TunnelFiles) == 0
}

// ErrReload wraps the errors of a reload that was not applied.
var ErrReload = errors.New("reload not applied")

// ErrInvalidConfig is matched (errors.Is) by the errors of a change that
// the configuration causes, which its author can fix: a missing file, a
// syntax error, a key or value that fails validation, a service defined both
// in the file and through the API, a conflict with the VIP pool (a pin on a
// held VIP, no room left). A failed reload that does not match it is the
// gateway's own: the file exists but cannot be read, or the state cannot be
// saved.
var ErrInvalidConfig = errors.New("invalid configuration")

// errNotFromFile: Reload of a gateway started from a configuration in
// memory.
var errNotFromFile = errors.New("the gateway was not started from a file")

// invalidConfig marks an error as ErrInvalidConfig and leaves its text
// alone.
type invalidConfig struct{ error }

func (e invalidConfig) Unwrap() error        { return e.error }
func (e invalidConfig) Is(target error) bool { return target == ErrInvalidConfig }

// Reload reads the configuration file again and applies it: it is parsed
// and validated off to the side; on any error the running configuration
// stays and every error is logged and returned. On success the difference
// is applied: added services appear, removed ones drain, changed ones serve
// new flows with their new settings while live flows keep what they were
// bound to; VIPs stay; when [tunnel] cert, key or ca name other files, new
// tunnel handshakes use them (loaded and checked first: a failure fails
// the reload). Keys that need a restart are reported, not applied.
func (g *Gateway) Reload() (Diff, error) {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	if g.cfg.Path == "" {
		return Diff{}, fmt.Errorf("%w: %w", ErrReload, errNotFromFile)
	}
	next, err := g.loadConfig()
	if err != nil {
		return Diff{}, g.reloadFailed(err)
	}
	d, err := g.applyLocked(next, g.apiServices)
	if err != nil {
		return Diff{}, g.reloadFailed(err)
	}
	g.relayMoves.Store(!sameRelay(g.running.Tunnel, next.Tunnel))
	g.m.reloads.WithLabelValues("ok").Inc()
	g.logDiff("reloaded", d)
	conf.WarnRestart(g.log, d.RestartRequired)
	if d.LimitsChanged {
		g.warnLimits() // as at start: the new max_flows may be over what the open file limit allows
	}
	return d, nil
}

// loadConfig reads and validates the configuration file. A missing file
// and one that does not validate are ErrInvalidConfig; any other read error
// (permission denied, an I/O error) is the gateway's.
func (g *Gateway) loadConfig() (*conf.Gateway, error) {
	data, err := g.readFile(g.cfg.Path)
	if err != nil {
		err = fmt.Errorf("read the configuration: %w", err)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, invalidConfig{err}
		}
		return nil, err
	}
	next, err := conf.ParseGateway(g.cfg.Path, data)
	if err != nil {
		return nil, invalidConfig{err}
	}
	next.Path = g.cfg.Path
	return next, nil
}

func (g *Gateway) reloadFailed(err error) error {
	g.m.reloads.WithLabelValues("error").Inc()
	for _, e := range confErrors(err) {
		g.log.Error("reload: keeping the running configuration", "err", e)
	}
	return fmt.Errorf("%w: %w", ErrReload, err)
}

// logDiff logs d; its lists are lists in a JSON log even when empty ([],
// not null), whichever of them d leaves nil.
func (g *Gateway) logDiff(msg string, d Diff) {
	changed := make([]string, len(d.Changed))
	for i, c := range d.Changed {
		changed[i] = c.Name
	}
	list := func(l []string) []string { return append([]string{}, l...) }
	g.log.Info(msg, "added", list(d.Added), "removed", list(d.Removed), "changed", changed,
		"tenants_changed", d.TenantsChanged, "tunnel_files", list(d.TunnelFiles), "restart_required", list(d.RestartRequired))
}

// applyLocked makes next (and the API's services) the running service
// table. The stored API services are validated against next as at start:
// what the next start would refuse is refused now. Only the settings that
// can change live are taken from next; the others are reported in
// RestartRequired. New [tunnel] files are loaded and checked before
// anything changes and used once the table is: a reload applies all of
// them or nothing. The caller holds reloadMu.
func (g *Gateway) applyLocked(next *conf.Gateway, api []catalog.Service) (Diff, error) {
	defer g.followRelayPools() // the relay's VIPs of the table, its pools of the DNS
	ctx := g.serviceContext(next)
	if err := g.apiStore.check(ctx); err != nil {
		return Diff{}, invalidConfig{err}
	}
	if err := g.checkTenants(next, ctx); err != nil {
		return Diff{}, invalidConfig{err}
	}
	services, err := mergeServices(next.Services, api)
	if err != nil {
		return Diff{}, invalidConfig{err}
	}
	if err := g.relayPins(services); err != nil {
		return Diff{}, invalidConfig{err}
	}
	if err := checkWaitingTunnelFiles(g.running, next); err != nil {
		return Diff{}, invalidConfig{err}
	}
	if err := checkStateDirFree(g.running.StateDir, next.StateDir); err != nil {
		return Diff{}, invalidConfig{err}
	}
	files := tunnelFiles(g.running, next)
	var creds *tunnel.Staged
	if len(files) > 0 {
		nt := next.Tunnel
		if creds, err = g.creds.Stage(tunnel.Files{Cert: nt.Cert, Key: nt.Key, CA: nt.CA}); err != nil {
			return Diff{}, invalidConfig{fmt.Errorf("%s: %w", strings.Join(files, ", "), err)}
		}
	}
	old := g.tbl.Load()
	t, err := g.buildTable(services, next.Tenants, liveLimits(g.running, next), next.DrainTimeout)
	if err != nil {
		g.reconcileStates(old) // the states the build made or took up
		g.disc.sync(old)       // and the names it looked up
		if poolConflict(err) {
			err = invalidConfig{err}
		}
		return Diff{}, err
	}
	d := diffTables(old, t)
	d.TunnelFiles = files
	d.RestartRequired = restartRequired(g.running, next)
	g.swapTable(old, t)
	if creds != nil {
		creds.Use()
	}
	g.running = liveSettings(g.running, next)
	return d, nil
}

// serviceContext is the context next's services are checked in at a
// reload: next's, admitting tenants it does not declare only when the
// running gateway does too. A tunnel (tunnel.listen, tunnel.relay) turned
// on waits for the restart, and until then no peer brings such a tenant:
// POST /v1/services refuses them (the running configuration's context), and
// so does the reload.
func (g *Gateway) serviceContext(next *conf.Gateway) conf.ServiceContext {
	ctx := next.ServiceContext()
	ctx.AllowUnknownTenants = ctx.AllowUnknownTenants && g.running.ServiceContext().AllowUnknownTenants
	return ctx
}

// checkTenants refuses the file's services (next's) that name a tenant
// ctx does not admit, as POST /v1/services refuses them: a file whose
// tunnel, which would admit them, waits for the restart.
func (g *Gateway) checkTenants(next *conf.Gateway, ctx conf.ServiceContext) error {
	errs := conf.CheckServiceTenants(next.Services, ctx)
	if len(errs) == 0 {
		return nil
	}
	out := make(conf.Errors, len(errs))
	for i, e := range errs {
		out[i] = fmt.Errorf("%w: this gateway runs without a tunnel until the restart (tunnel.listen, tunnel.relay), and serves declared tenants only", e)
	}
	return out
}

// relayPins refuses the pinned VIPs of svcs while the gateway is attached
// to a relay, which allocates its VIPs: the configuration refuses vip and
// vip6 with [tunnel] relay, and a file that drops tunnel.relay (a
// restart-only key) leaves the running gateway attached. Its services
// were validated as a gateway's with its own pool: taken, their pins
// would show as changed VIPs, which the relay's stay, and go to the relay
// in the registration.
func (g *Gateway) relayPins(svcs []catalog.Service) error {
	if g.relay == nil {
		return nil
	}
	var errs []error
	for _, s := range svcs {
		for _, a := range []netip.Addr{s.VIP, s.VIP6} {
			if a.IsValid() {
				errs = append(errs, fmt.Errorf("service %q pins %s: this gateway is attached to a relay, which allocates its VIPs (tunnel.relay changes at the next start)", s.Name, a))
			}
		}
	}
	return errors.Join(errs...)
}

// poolConflict reports whether the VIP pool refused a change for what the
// services ask of it (as opposed to failing to save its state).
func poolConflict(err error) bool {
	return errors.Is(err, catalog.ErrPinConflict) || errors.Is(err, catalog.ErrPoolExhausted) ||
		errors.Is(err, catalog.ErrPinOutsidePool) || errors.Is(err, catalog.ErrReserved)
}

// swapTable installs t and lets what left old drain. The states of
// removed services are freed once their flows have ended: their checks
// and discovery watchers are stopped here. The flow series of removed
// tenants go too, after the store: a flow classified by old whose series
// are made after forgetTenants then sees t (newFlow).
func (g *Gateway) swapTable(old, t *table) {
	g.tbl.Store(t)
	g.endStranded(t)
	g.endUnreachable(t)
	g.resetLeftovers(t)
	g.forgetTenants(old, t)
	g.syncHealth()
	g.disc.sync(t)
	for name, s := range t.byName {
		if _, ok := old.byName[name]; !ok {
			s.st.removals.Add(1) // added (back): an earlier removal's drain is void
		}
	}
	for name, s := range old.byName {
		if _, ok := t.byName[name]; !ok {
			st := s.st
			gen := st.removals.Add(1)
			g.drain(func(f *flow) bool { return f.svc.st == st }, t.drainTimeout, "service_removed",
				func(*flow) bool { return st.removals.Load() == gen })
		}
	}
	g.drainDeparted(t.removed, t.drainTimeout, "backend_removed")
	g.reconcileStates(t)
}

// endStranded ends the flows of LAN clients whose source no tenant of t
// has: the LAN link drops their packets now (deny by default), so they
// could carry nothing until their idle timeout while holding their
// backend's connection; ended, the client is told at once. A flow added
// after the pass checks itself (newFlow).
func (g *Gateway) endStranded(t *table) {
	for _, f := range g.flows.list(func(f *flow) bool { return stranded(t, f.peer, f.client.Addr()) }) {
		f.cut("source_removed")
	}
}

// resetLeftovers resets the netstack's TCP connections that t takes from
// their client with no flow left to end: those whose flow closed
// gracefully just before (its FIN sent, or still to be acknowledged), of
// a LAN client whose source t admits no more, or of a direct agent that t
// no longer lets reach the VIP's service. Their client's packets are
// dropped from t on, so the netstack would send the FIN, and whatever the
// client had not acknowledged, again and again for minutes; reset, the
// client is told at once, as endStranded and endUnreachable tell those of
// open flows. A relay tag's are closeIngress's, when the relay closes it.
func (g *Gateway) resetLeftovers(t *table) {
	if g.ns == nil {
		return
	}
	own := g.localAddrs()
	g.ns.ResetTCP(func(local, remote netip.AddrPort) bool {
		client := remote.Addr().Unmap()
		if g.ingresses != nil && synthPrefix.Contains(client) {
			in := g.ingresses.lookup(client)
			if in == nil || in.tagged {
				return false // closed (closeIngress resets its own), or the relay's to close
			}
			if slices.Contains(own, local.Addr().Unmap()) {
				return false // the gateway's own address: DNS, open to every session
			}
			s := t.lookupVIP(local.Addr())
			return s == nil || unreachableBy(t, in, s.spec.Name)
		}
		_, ok := t.tenants.lookup(client)
		return !ok
	})
}

// stranded reports whether a flow of p from client, a LAN client, has a
// source that t admits no more.
func stranded(t *table, p peer, client netip.Addr) bool {
	if p.identity != lanIdentity {
		return false
	}
	_, ok := t.tenants.lookup(client)
	return !ok
}

// drainDeparted drains the flows of backends that left their service's
// set (setBackends counted the departure): those of a backend added back
// before d stay.
func (g *Gateway) drainDeparted(gone []*backend, d time.Duration, reason string) {
	if len(gone) == 0 {
		return
	}
	gens := make(map[*backend]uint64, len(gone))
	for _, b := range gone {
		gens[b] = b.departures.Load()
	}
	// A backend that departed while a flow to it was being set up was not
	// kept (no flow was bound to it yet), and comes back as a new object:
	// its address in the set keeps the flow too.
	g.drain(func(f *flow) bool { _, ok := gens[f.backend]; return ok }, d, reason,
		func(f *flow) bool { return f.backend.departures.Load() == gens[f.backend] && g.departed(f) != "" })
}

// drainLate drains a flow that newFlow added after a change of the table
// took its service or backend away: classified against the table before,
// it was dialling its backend or completing its handshake while that
// change drained the flows then in the flow table.
func (g *Gateway) drainLate(f *flow) {
	reason := g.departed(f)
	if reason == "" {
		return
	}
	d := g.tbl.Load().drainTimeout
	if o := f.svc.st.backends.Load().owner; reason == "backend_removed" && o != nil {
		if t := o.table(); t != nil {
			// The backends are of the table a reload builds, maybe not
			// put in yet: the change that took f's backend away drains
			// it, for its drain_timeout (not the one of the table that
			// goes).
			d = t.drainTimeout
		}
	}
	g.drain(func(x *flow) bool { return x == f }, d, reason, func(*flow) bool { return g.departed(f) != "" })
}

// departed says why f's service or backend is not in the running table
// ("service_removed", "backend_removed"), or "" when both are.
func (g *Gateway) departed(f *flow) string {
	if cur := g.tbl.Load().byName[f.svc.spec.Name]; cur == nil || cur.st != f.svc.st {
		return "service_removed"
	}
	if !f.svc.st.backends.Load().has(f.backend.key()) {
		return "backend_removed"
	}
	return ""
}

// drain closes the flows matching match that are still open after d, and
// for which still (when set) then holds: it reports that what the flows
// are drained for has not been undone (a removed service or backend added
// back keeps its flows).
func (g *Gateway) drain(match func(*flow) bool, d time.Duration, reason string, still func(*flow) bool) {
	victims := g.flows.list(match)
	if len(victims) == 0 {
		return
	}
	if !g.enter() {
		return
	}
	go func() {
		defer g.leave()
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-g.ctx.Done():
			return
		}
		for _, f := range victims {
			if still == nil || still(f) {
				f.close(reason)
			}
		}
	}()
}

// mergeServices joins the file's services and the API's; a name in both
// is an error.
func mergeServices(file, api []catalog.Service) ([]catalog.Service, error) {
	out := slices.Clone(file)
	names := make(map[string]bool, len(file))
	for _, s := range file {
		names[s.Name] = true
	}
	var errs []error
	for _, s := range api {
		if names[s.Name] {
			errs = append(errs, fmt.Errorf("service %q is defined in the file and through the API; delete it from one of them", s.Name))
			continue
		}
		out = append(out, s)
	}
	return out, errors.Join(errs...)
}

// diffTables lists what changed between two table generations.
func diffTables(old, t *table) Diff {
	d := Diff{Added: []string{}, Removed: []string{}, Changed: []ServiceChange{}, RestartRequired: []string{}}
	for name, s := range t.byName {
		o, ok := old.byName[name]
		if !ok {
			d.Added = append(d.Added, name)
			continue
		}
		if f := conf.ChangedKeys(&o.spec, &s.spec); len(f) > 0 {
			d.Changed = append(d.Changed, ServiceChange{Name: name, Fields: f})
		}
	}
	for name := range old.byName {
		if _, ok := t.byName[name]; !ok {
			d.Removed = append(d.Removed, name)
		}
	}
	slices.Sort(d.Added)
	slices.Sort(d.Removed)
	slices.SortFunc(d.Changed, func(a, b ServiceChange) int { return cmp.Compare(a.Name, b.Name) })
	d.TenantsChanged = !reflect.DeepEqual(old.tenants, t.tenants)
	d.LimitsChanged = old.limits != t.limits || old.drainTimeout != t.drainTimeout
	return d
}

// liveKeys are the keys a reload applies (liveSettings takes them from
// the file); a change of any other key waits for the next start.
var liveKeys = map[string]bool{
	"service": true, "tenant": true, "gateway.drain_timeout": true,
	"limits.max_flows": true, "limits.new_flows_per_second": true, "limits.new_flows_burst": true,
}

// liveTunnelFiles reports whether a reload from cur to next switches the
// tunnel to the files next's [tunnel] names: the tunnel runs (it has
// credentials) and stays on, in the same mode, with the same relay. A
// change of insecure_allow_unauthenticated waits for the restart, and so
// do the paths that change with it (they are for the other mode), as do
// those of a tunnel turned on or off. So do the paths that change with
// tunnel.relay: the gateway stays with the relay it runs with until the
// restart, and a new CA (the new relay's), applied now, would be checked
// against that one (the session's recheck may end it, and the redial be
// refused): the gateway would be cut off from its relay until the restart.
func liveTunnelFiles(cur, next *conf.Gateway) bool {
	on := func(t conf.Tunnel) bool { return t.Listen != "" || t.Relay != "" }
	return on(cur.Tunnel) && on(next.Tunnel) && cur.Tunnel.Insecure == next.Tunnel.Insecure &&
		sameRelay(cur.Tunnel, next.Tunnel)
}

// sameRelay reports whether a and b dial the same relay: its address and
// the name its certificate must carry (tunnel.relay, tunnel.server_name).
func sameRelay(a, b conf.Tunnel) bool {
	return a.Relay == b.Relay && a.ServerName == b.ServerName
}

// checkWaitingTunnelFiles loads the [tunnel] files of next that wait for
// the restart (not liveTunnelFiles: insecure_allow_unauthenticated or
// tunnel.relay changes with them, or the tunnel is turned on) as the start
// will load them, in next's mode, and returns the start's refusal naming
// the keys: the reload
// would otherwise name them for a restart that then refuses to start. The
// relay and the agent check theirs alike. Files in use that only change
// mode load as they do now.
func checkWaitingTunnelFiles(cur, next *conf.Gateway) error {
	on := func(t conf.Tunnel) bool { return t.Listen != "" || t.Relay != "" }
	nt := next.Tunnel
	if !on(nt) || liveTunnelFiles(cur, next) {
		return nil
	}
	keys := cur.OwnTLS().ChangedFiles(next.OwnTLS())
	if len(keys) == 0 {
		if on(cur.Tunnel) {
			return nil
		}
		keys = []string{"tunnel.cert", "tunnel.key", "tunnel.ca"}
	}
	if _, err := tunnel.NewCredentials(tunnel.CredentialsConfig{
		CertFile: nt.Cert, KeyFile: nt.Key, CAFile: nt.CA, Insecure: nt.Insecure, Role: tunnel.RoleGateway,
	}, nil); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(keys, ", "), err)
	}
	return nil
}

// checkStateDirFree refuses a state_dir (restart-only) that a reload
// moves to a directory whose lock another process holds: the next start
// would refuse it (catalog.ErrStateDirInUse), with its own pool or
// attached to a relay. The reload would otherwise name it for a restart
// that then fails. The same directory under another spelling is the one
// this gateway holds; a directory not there yet, or not to be created,
// is the start's to judge.
func checkStateDirFree(cur, next string) error {
	if err := catalog.ProbeStateDir(cur, next); err != nil {
		return fmt.Errorf("gateway.state_dir: the gateway would not start with it: %w", err)
	}
	return nil
}

// tunnelFiles names the [tunnel] keys (tunnel.cert, tunnel.key,
// tunnel.ca) that name other files in next than in cur, when a reload
// applies them (liveTunnelFiles).
func tunnelFiles(cur, next *conf.Gateway) []string {
	if !liveTunnelFiles(cur, next) {
		return nil
	}
	return cur.OwnTLS().ChangedFiles(next.OwnTLS())
}

// restartRequired names the keys whose change a running gateway cannot
// apply, each as the file spells it (tun.mtu, dns.listen): they take
// effect at the next start.
func restartRequired(cur, next *conf.Gateway) []string {
	keys := []string{}
	live := tunnelFiles(cur, next)
	for _, k := range conf.ChangedKeys(cur, next) {
		if !liveKeys[k] && !slices.Contains(live, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// liveLimits are next's [limits] as a reload applies them: the bound of
// the handshakes in flight stays cur's (the netstack was started with
// it), so that the table, and the diff, hold what runs.
func liveLimits(cur, next *conf.Gateway) conf.Limits {
	l := next.Limits
	l.MaxInflightHandshake = cur.Limits.MaxInflightHandshake
	return l
}

// liveSettings is cur with the settings a reload applies (liveKeys, and
// the [tunnel] files when liveTunnelFiles) taken from next.
func liveSettings(cur, next *conf.Gateway) *conf.Gateway {
	c := *cur
	c.Limits = liveLimits(cur, next)
	c.DrainTimeout = next.DrainTimeout
	c.Tenants = next.Tenants
	c.Services = next.Services
	if liveTunnelFiles(cur, next) {
		c.Tunnel.Cert, c.Tunnel.Key, c.Tunnel.CA = next.Tunnel.Cert, next.Tunnel.Key, next.Tunnel.CA
	}
	return &c
}

// watchConfig reloads when the configuration file changes.
func (g *Gateway) watchConfig() {
	if g.cfg.Path == "" || g.noWatch {
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		err := conf.Watch(g.ctx, g.cfg.Path, conf.DefaultDebounce, g.log, func() {
			if _, err := g.Reload(); err != nil {
				return // logged by Reload
			}
		})
		if err != nil && !errors.Is(err, context.Canceled) {
			g.log.Error("config watch stopped; reload with SIGHUP or POST /v1/reload", "err", err)
		}
	}()
}

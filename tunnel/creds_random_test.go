package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/ztgate/ztgate/internal/testseed"
)

// credsSeedEnv names the variable that replays a run of
// TestCredsRotationRandom.
const credsSeedEnv = "ZTGATE_CREDS_SEED"

// credsSteps is the number of random steps of TestCredsRotationRandom.
const credsSteps = 400

// TestCredsRotationRandom rotates the credentials of a listener (a relay's)
// and of a dialer (an agent's) through a few hundred random steps, real
// QUIC handshakes over loopback between them, and checks every step
// against a model of what docs/operations.md ("Certificates", "Reload")
// and docs/security.md say:
//
//   - the files in use are rewritten between reloads, atomically or in
//     place, with a renewal (a new certificate of the same CA and
//     identity), a certificate of another name or CA, a new CA
//     alone or in a bundle with the old ones, a key of another certificate,
//     a missing, empty, truncated or garbage file, a certificate expired or
//     not yet valid, of another role, of another identity, without the
//     name clients dial or SAN-less, and the certificate alone, its key a
//     step later;
//   - a reload loads what the files hold, or fails with an error naming the
//     file at fault and keeps the credentials in use (their files, their
//     certificate and what new handshakes do);
//   - a new handshake from the dialer, and from probes of each CA that
//     trust every CA, succeeds or is refused by the side and for the reason
//     the credentials in use at each end give, the peers' identities are
//     those of the certificates in use, and ztgate_tunnel_handshakes_total
//     counts exactly that on both sides;
//   - handshakes in flight while a reload switches see the credentials of
//     before or of after, never a part of each;
//   - established sessions stay up across every reload and carry
//     datagrams both ways, except those whose dialer's certificate the
//     listener's reloaded credentials refuse, or whose listener's
//     certificate the dialer's reloaded credentials refuse: they end at
//     the reload, as "revoked: <reason>"; and those the dialer made with
//     another own identity than its reloaded certificate's: they end as
//     "own identity changed: <old> -> <new>", and a dial in flight then
//     may fail with ErrOwnIdentityChanged after the hello, or return a
//     session of the old identity that ends likewise; no goroutine is
//     left.
//
// The seed is logged; ZTGATE_CREDS_SEED=<seed> replays a run.
func TestCredsRotationRandom(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) })
	seed := testseed.Get(t, credsSeedEnv)
	r := newCredsRig(t, rand.New(rand.NewPCG(seed, seed^0x5eed)))

	type op struct {
		name   string
		weight func() int
		run    func()
	}
	always := func(w int) func() int { return func() int { return w } }
	ops := []op{
		{"dial", always(8), r.stepDial},
		{"keep a session", func() int {
			if len(r.kept) >= 4 {
				return 0
			}
			return 2
		}, r.stepKeep},
		{"close a session", func() int { return min(len(r.kept), 1) }, r.stepCloseSession},
		{"rewrite the listener's files", always(6), func() { r.stepRewrite(r.server) }},
		{"rewrite the dialer's files", always(4), func() { r.stepRewrite(r.client) }},
		{"write the key of the certificate", func() int {
			if r.server.halfWritten() || r.client.halfWritten() {
				return 4
			}
			return 0
		}, r.stepFinishWrite},
		{"reload unchanged files", always(1), func() { r.reload(r.pickSide()) }},
		{"reload with handshakes in flight", always(3), r.stepInFlight},
	}
	for step := range credsSteps {
		i := testseed.Weighted(r.rng, len(ops), func(i int) int { return ops[i].weight() })
		r.step = fmt.Sprintf("step %d (%s)", step, ops[i].name)
		ops[i].run()
		r.checkCounters()
		r.checkSessions(step%10 == 0)
		if t.Failed() {
			t.Fatalf("%s failed; %s=%d replays it", r.step, credsSeedEnv, seed)
		}
	}
	t.Logf("handshakes by outcome: %v", r.outcomes)
	r.close()
}

// Kinds of a file that holds nothing loadable.
const (
	brokenMissing   = "missing"
	brokenEmpty     = "empty"
	brokenTruncated = "truncated"
	brokenGarbage   = "PEM garbage"
	brokenText      = "not PEM"
)

// When a certificate of the test is valid.
const (
	validNow = iota
	validExpired
	validNotYet
)

// crLeaf is a certificate the test issued, and its key.
type crLeaf struct {
	ca        int // index in credsRig.cas
	role      string
	id        Identity // zero when SAN-less
	sanless   bool
	wrongName bool   // a server certificate without the name clients dial
	when      int    // validNow, validExpired or validNotYet
	certPEM   []byte // the leaf's, and its CA's a time in three
	keyPEM    []byte
}

// crFile is what one file of a side holds: a certificate or key of a
// leaf, CAs, or something broken.
type crFile struct {
	leaf   *crLeaf
	cas    uint8 // a CA file: bit i for credsRig.cas[i]
	broken string
}

// crSide is one end's credentials: the files they are loaded from
// (rewritten in place), what the files hold now, and what the model says
// is in use.
type crSide struct {
	name  string // "listener" or "dialer"
	role  string
	files Files
	creds *Credentials
	cert  crFile // on disk
	key   crFile
	ca    crFile
	leaf  *crLeaf // in use
	trust uint8   // in use
}

// halfWritten reports whether the side's certificate file holds a leaf
// whose key is not in the key file: a rotation written a step at a time.
func (s *crSide) halfWritten() bool {
	return s.cert.leaf != nil && s.cert.broken == "" && s.key.leaf != s.cert.leaf
}

// credsRig is the test's listener, dialer, probes and model.
type credsRig struct {
	t     *testing.T
	rng   *rand.Rand
	f     *tlsFixture
	cas   []*CA
	reg   *prometheus.Registry
	ln    *Listener
	step  string
	names int // counter of unique names

	server, client *crSide
	probes         []*Credentials // probes[i]: an agent of cas[i] trusting every CA
	probeLeaves    []*crLeaf

	want     map[string]float64 // handshake counters: side/result/reason
	outcomes map[string]int     // for the log

	acceptWG  sync.WaitGroup
	acceptMu  sync.Mutex
	accepted  map[string]*Session // by hello name
	acceptCtx context.Context
	stop      context.CancelFunc

	kept []*crSession
}

// crSession is an established session the test keeps across steps,
// with the dialer's and the listener's leaves it was opened with.
type crSession struct {
	name           string
	client, server *Session
	leaf           *crLeaf
	serverLeaf     *crLeaf
}

func newCredsRig(t *testing.T, rng *rand.Rand) *credsRig {
	f := newTLSFixture(t)
	r := &credsRig{
		t: t, rng: rng, f: f, cas: []*CA{f.ca, f.other, mustCA(t, "third CA")},
		reg: prometheus.NewRegistry(), want: map[string]float64{}, outcomes: map[string]int{},
		accepted: map[string]*Session{},
	}
	r.server = r.newSide("listener", RoleRelay)
	r.client = r.newSide("dialer", RoleAgent)
	all := f.write("all-cas.crt", r.caPEM(1<<len(r.cas)-1))
	for i := range r.cas {
		l := r.issue(i, RoleAgent, func(req *IssueRequest) { req.Name = fmt.Sprintf("probe%d", i) })
		r.probeLeaves = append(r.probeLeaves, l)
		r.probes = append(r.probes, f.creds(CredentialsConfig{
			CertFile: f.write("probe.crt", l.certPEM), KeyFile: f.write("probe.key", l.keyPEM), CAFile: all, Role: RoleAgent,
		}))
	}
	ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: r.server.creds, Registerer: r.reg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.ln = ln
	r.acceptCtx, r.stop = context.WithCancel(context.Background())
	r.acceptWG.Go(r.acceptLoop)
	t.Cleanup(r.close)
	return r
}

// newSide writes a valid leaf of CA 0 and a CA file of CA 0 and loads
// them with role.
func (r *credsRig) newSide(name, role string) *crSide {
	l := r.issue(0, role, nil)
	s := &crSide{name: name, role: role, leaf: l, trust: 1}
	s.files = Files{Cert: r.f.write(name+".crt", l.certPEM), Key: r.f.write(name+".key", l.keyPEM), CA: r.f.write(name+"-ca.crt", r.caPEM(1))}
	s.cert, s.key, s.ca = crFile{leaf: l}, crFile{leaf: l}, crFile{cas: 1}
	s.creds = r.f.creds(CredentialsConfig{CertFile: s.files.Cert, KeyFile: s.files.Key, CAFile: s.files.CA, Role: role})
	return s
}

// close ends the sessions, the listener and the accept loop (idempotent).
func (r *credsRig) close() {
	for _, k := range r.kept {
		_ = k.client.Close("test over")
	}
	r.kept = nil
	if r.stop != nil {
		r.stop()
		_ = r.ln.Close()
		r.acceptWG.Wait()
		r.stop = nil
	}
}

// acceptLoop welcomes every session and files it by its hello's name.
func (r *credsRig) acceptLoop() {
	for {
		s, err := r.ln.Accept(r.acceptCtx)
		if err != nil {
			return
		}
		if err := s.SendWelcome(Welcome{MaxPacket: 1200}); err != nil {
			_ = s.Close("welcome failed")
			continue
		}
		r.acceptMu.Lock()
		r.accepted[s.Hello().Name] = s
		r.acceptMu.Unlock()
	}
}

// takeAccepted returns the server's session of the dial named name.
func (r *credsRig) takeAccepted(name string) *Session {
	deadline := time.Now().Add(testTimeout)
	for time.Now().Before(deadline) {
		r.acceptMu.Lock()
		s := r.accepted[name]
		delete(r.accepted, name)
		r.acceptMu.Unlock()
		if s != nil {
			return s
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// issue makes a leaf of cas[ca] for role, as mod changes the request.
func (r *credsRig) issue(ca int, role string, mod func(*IssueRequest)) *crLeaf {
	r.t.Helper()
	r.names++
	req := IssueRequest{Tenant: "acme", Role: role, Name: fmt.Sprintf("%s%d", role, r.names)}
	if role != RoleAgent {
		req.Tenant, req.DNSNames, req.IPs = "ops", []string{serverName}, loopbackIPs()
	}
	if mod != nil {
		mod(&req)
	}
	certPEM, keyPEM, err := r.cas[ca].Issue(req)
	if err != nil {
		r.t.Fatal(err)
	}
	if r.rng.IntN(3) == 0 { // a chain file, with the issuer after the leaf
		certPEM = append(certPEM, r.cas[ca].CertPEM()...)
	}
	l := &crLeaf{ca: ca, role: role, sanless: req.NoIdentity, certPEM: certPEM, keyPEM: keyPEM}
	if !req.NoIdentity {
		l.id = Identity{Tenant: req.Tenant, Role: req.Role, Name: req.Name}
	}
	l.wrongName = role != RoleAgent && !slices.Contains(req.DNSNames, serverName)
	now := time.Now()
	switch {
	case !req.NotBefore.IsZero() && req.NotBefore.After(now):
		l.when = validNotYet
	case !req.NotBefore.IsZero() && req.NotBefore.Add(req.Validity).Before(now):
		l.when = validExpired
	}
	return l
}

// renewalOf makes a request of l's identity (SAN-less if l is): a
// renewal.
func renewalOf(l *crLeaf) func(*IssueRequest) {
	return func(req *IssueRequest) {
		if l.sanless {
			*req = IssueRequest{Name: req.Name, NoIdentity: true}
			return
		}
		req.Tenant, req.Name = l.id.Tenant, l.id.Name
	}
}

// ownKey is the own identity a dialer presents with l, as the reason of
// ErrOwnIdentityChanged names it.
func ownKey(l *crLeaf) string {
	if l.sanless {
		return "none"
	}
	return l.id.String()
}

// caPEM is the CA file of the CAs in set, in a random order.
func (r *credsRig) caPEM(set uint8) []byte {
	var out []byte
	for _, i := range r.rng.Perm(len(r.cas)) {
		if set&(1<<i) != 0 {
			out = append(out, r.cas[i].CertPEM()...)
		}
	}
	return out
}

// pickSide returns the listener's or the dialer's side.
func (r *credsRig) pickSide() *crSide {
	if r.rng.IntN(2) == 0 {
		return r.server
	}
	return r.client
}

// write puts data in path, atomically or in place.
func (r *credsRig) write(path string, data []byte) {
	if r.rng.IntN(2) == 0 {
		replace(r.t, path, data)
		return
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		r.t.Fatal(err)
	}
}

// writeLeaf writes l's certificate and key (or only one of them).
func (r *credsRig) writeLeaf(s *crSide, l *crLeaf, cert, key bool) {
	if cert {
		r.write(s.files.Cert, l.certPEM)
		s.cert = crFile{leaf: l}
	}
	if key {
		r.write(s.files.Key, l.keyPEM)
		s.key = crFile{leaf: l}
	}
}

// writeCAs writes a CA file of the CAs in set.
func (r *credsRig) writeCAs(s *crSide, set uint8) {
	r.write(s.files.CA, r.caPEM(set))
	s.ca = crFile{cas: set}
}

// randomCAs is a random non-empty set of CAs.
func (r *credsRig) randomCAs() uint8 { return uint8(1 + r.rng.IntN(1<<len(r.cas)-1)) }

// stepRewrite rewrites some of a side's files in one of the ways of a
// rotation, right or wrong, and most often reloads.
func (r *credsRig) stepRewrite(s *crSide) {
	r.rewrite(s)
	if r.rng.IntN(5) > 0 {
		r.reload(s)
	}
}

// rewrite rewrites some of s's files and says how in the step's name.
func (r *credsRig) rewrite(s *crSide) {
	other := func(role string) string { // a role s may not load
		roles := []string{RoleRelay, RoleGateway, RoleAgent}
		roles = slices.DeleteFunc(roles, func(x string) bool { return x == role })
		return roles[r.rng.IntN(len(roles))]
	}
	newLeaf := func(ca int, mod func(*IssueRequest)) *crLeaf { return r.issue(ca, s.role, mod) }
	inTrust := func() int { // a CA the side trusts now, else any
		var ok []int
		for i := range r.cas {
			if s.trust&(1<<i) != 0 {
				ok = append(ok, i)
			}
		}
		if len(ok) == 0 {
			return r.rng.IntN(len(r.cas))
		}
		return ok[r.rng.IntN(len(ok))]
	}
	kinds := []struct {
		name   string
		weight int
		run    func()
	}{
		{"renewal of the same CA and identity", 6, func() { r.writeLeaf(s, newLeaf(s.leaf.ca, renewalOf(s.leaf)), true, true) }},
		{"certificate of another name", 2, func() { r.writeLeaf(s, newLeaf(s.leaf.ca, nil), true, true) }},
		{"certificate of another CA", 3, func() { r.writeLeaf(s, newLeaf(r.rng.IntN(len(r.cas)), nil), true, true) }},
		{"new CA file", 5, func() { r.writeCAs(s, r.randomCAs()) }},
		{"new CA file and certificate", 3, func() {
			set := r.randomCAs()
			r.writeCAs(s, set)
			ca := r.rng.IntN(len(r.cas))
			for set&(1<<ca) == 0 {
				ca = r.rng.IntN(len(r.cas))
			}
			r.writeLeaf(s, newLeaf(ca, nil), true, true)
		}},
		{"key of another certificate", 2, func() { r.writeLeaf(s, newLeaf(inTrust(), nil), false, true) }},
		{"certificate alone, its key to follow", 3, func() { r.writeLeaf(s, newLeaf(inTrust(), nil), true, false) }},
		{"broken file", 5, func() { r.breakFile(s) }},
		{"expired certificate", 2, func() {
			r.writeLeaf(s, newLeaf(inTrust(), func(req *IssueRequest) {
				req.NotBefore, req.Validity = time.Now().Add(-48*time.Hour), 24*time.Hour
			}), true, true)
		}},
		{"certificate not yet valid", 2, func() {
			r.writeLeaf(s, newLeaf(inTrust(), func(req *IssueRequest) { req.NotBefore = time.Now().Add(time.Hour) }), true, true)
		}},
		{"certificate of another role", 2, func() { r.writeLeaf(s, r.issue(inTrust(), other(s.role), nil), true, true) }},
		{"certificate of another identity", 2, func() {
			r.writeLeaf(s, newLeaf(inTrust(), func(req *IssueRequest) { req.Tenant = "globex" }), true, true)
		}},
		{"SAN-less certificate", 2, func() {
			r.writeLeaf(s, newLeaf(inTrust(), func(req *IssueRequest) {
				*req = IssueRequest{Name: req.Name, NoIdentity: true}
			}), true, true)
		}},
		{"certificate without the name dialed", func() int {
			if s.role == RoleAgent {
				return 0
			}
			return 1
		}(), func() {
			r.writeLeaf(s, newLeaf(inTrust(), func(req *IssueRequest) { req.DNSNames, req.IPs = []string{"elsewhere.test"}, nil }), true, true)
		}},
	}
	k := kinds[testseed.Weighted(r.rng, len(kinds), func(i int) int { return kinds[i].weight })]
	r.step += fmt.Sprintf(": %s: %s", s.name, k.name)
	k.run()
}

// breakFile makes one of s's files unloadable.
func (r *credsRig) breakFile(s *crSide) {
	which := r.rng.IntN(3)
	path, file := []string{s.files.Cert, s.files.Key, s.files.CA}[which], []*crFile{&s.cert, &s.key, &s.ca}[which]
	kind := []string{brokenMissing, brokenEmpty, brokenTruncated, brokenGarbage, brokenText}[r.rng.IntN(5)]
	r.step += fmt.Sprintf(" (%s %s)", kind, []string{"certificate", "key", "CA file"}[which])
	*file = crFile{broken: kind}
	var whole []byte // what the file would hold
	switch which {
	case 0:
		whole = r.issue(s.leaf.ca, s.role, nil).certPEM
	case 1:
		whole = s.leaf.keyPEM
	default:
		whole = r.caPEM(r.randomCAs())
	}
	switch kind {
	case brokenMissing:
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.t.Fatal(err)
		}
	case brokenEmpty:
		r.write(path, nil)
	case brokenTruncated:
		// Cut within the last block, before its end line is whole: the
		// blocks before it (of a bundle) are intact.
		end := bytes.LastIndex(whole, []byte("-----END"))
		start := bytes.LastIndex(whole[:end], []byte("-----BEGIN"))
		r.write(path, whole[:start+1+r.rng.IntN(end+len("-----END")-start-1)])
	case brokenGarbage:
		typ := []string{pemCertificate, pemPrivateKey, pemCertificate}[which]
		junk := []byte("-----BEGIN " + typ + "-----\nMIIBAAAAAAAAAAAAAAAAAAAA\n-----END " + typ + "-----\n")
		if which == 2 && r.rng.IntN(2) == 0 {
			junk = append(r.caPEM(r.randomCAs()), junk...) // good CAs, then a bad one
		}
		r.write(path, junk)
	case brokenText:
		r.write(path, []byte("this is not a PEM file\n"))
	}
}

// stepFinishWrite writes the key of the certificate a side's file holds.
func (r *credsRig) stepFinishWrite() {
	s := r.server
	if !s.halfWritten() || (r.client.halfWritten() && r.rng.IntN(2) == 0) {
		s = r.client
	}
	r.step += ": " + s.name
	r.writeLeaf(s, s.cert.leaf, false, true)
	r.reload(s)
}

// expectLoad is what a reload of s's files does: nil when they load, else
// the path that the error must name and a part of its text.
func (s *crSide) expectLoad() (fault, text string) {
	switch {
	case s.ca.broken != "":
		return s.files.CA, "tunnel: load credentials"
	case s.cert.broken != "":
		return s.files.Cert, "tunnel: load credentials"
	case s.key.broken != "":
		return s.files.Key, "tunnel: load credentials"
	case s.key.leaf != s.cert.leaf:
		return s.files.Key, "private key does not match public key"
	case !s.cert.leaf.sanless && s.cert.leaf.role != s.role:
		return s.files.Cert, "not of " + aRole(s.role)
	}
	return "", ""
}

// reload reloads s and checks the result against the model.
func (r *credsRig) reload(s *crSide) {
	r.t.Helper()
	fault, text := s.expectLoad()
	before := s.creds.Certificate()
	err := s.creds.Reload()
	switch {
	case fault == "" && err != nil:
		r.t.Errorf("%s: %s reload: %v, want it loaded", r.step, s.name, err)
	case fault != "" && err == nil:
		r.t.Errorf("%s: %s reload succeeded, want an error naming %s (%s)", r.step, s.name, fault, text)
	case fault != "" && (!strings.Contains(err.Error(), fault) || !strings.Contains(err.Error(), text)):
		r.t.Errorf("%s: %s reload: %v, want an error naming %s with %q", r.step, s.name, err, fault, text)
	}
	if err != nil {
		if got := s.creds.Certificate(); got != before {
			r.t.Errorf("%s: a failed reload of the %s changed its certificate to %s", r.step, s.name, got.Subject.CommonName)
		}
		if got := s.creds.Files(); got != s.files {
			r.t.Errorf("%s: a failed reload changed the files to %+v", r.step, got)
		}
		return
	}
	s.leaf, s.trust = s.cert.leaf, s.ca.cas
	if got := s.creds.Certificate(); !bytes.Equal(got.Raw, pemDER(r.t, s.leaf.certPEM)) {
		r.t.Errorf("%s: the %s presents %s after the reload, want %s", r.step, s.name, got.Subject.CommonName, s.leaf.id)
	}
	if s == r.server {
		r.revokeKept()
	} else {
		r.revokeKeptByDialer()
	}
}

// revokeKept checks that the listener's reload ended each kept session
// whose dialer's certificate its credentials refuse now, as
// "revoked: <reason>", and takes them out of the kept ones.
func (r *credsRig) revokeKept() {
	r.t.Helper()
	r.kept = slices.DeleteFunc(r.kept, func(k *crSession) bool {
		v := verdict(k.leaf, r.server.trust, false)
		if v == "" {
			return false
		}
		r.outcomes["kept session revoked: "+v]++
		select {
		case <-k.client.Done():
			if err := k.client.Err(); err == nil || !strings.Contains(err.Error(), "revoked: "+v) {
				r.t.Errorf("%s: session %s ended with %v, want the listener's \"revoked: %s\"", r.step, k.name, err, v)
			}
		case <-time.After(testTimeout):
			r.t.Errorf("%s: session %s, whose certificate the listener refuses now (%s), is still open", r.step, k.name, v)
		}
		_ = k.client.Close("done")
		return true
	})
}

// revokeKeptByDialer checks that the dialer's reload ended each kept
// session whose listener's certificate its credentials refuse now, as
// "revoked: <reason>" of its own, or else that it dialed with another own
// identity than the dialer's certificate carries now, as "own identity
// changed: <old> -> <new>", and takes them out of the kept ones.
func (r *credsRig) revokeKeptByDialer() {
	r.t.Helper()
	r.kept = slices.DeleteFunc(r.kept, func(k *crSession) bool {
		v := verdict(k.serverLeaf, r.client.trust, true)
		if v == "" {
			return r.ownChangedKept(k)
		}
		r.outcomes["kept session revoked by the dialer: "+v]++
		select {
		case <-k.client.Done():
			ae, ok := errors.AsType[*quic.ApplicationError](k.client.Err())
			if !ok || ae.Remote || ae.ErrorMessage != "revoked: "+v {
				r.t.Errorf("%s: session %s ended with %v, want the dialer's own \"revoked: %s\"", r.step, k.name, k.client.Err(), v)
			}
		case <-time.After(testTimeout):
			r.t.Errorf("%s: session %s, whose listener's certificate the dialer refuses now (%s), is still open", r.step, k.name, v)
		}
		_ = k.client.Close("done")
		return true
	})
}

// ownChangedKept checks that a kept session the dialer made with another
// own identity than its certificate's now ended at its reload, and
// reports whether it did (then it is no longer kept).
func (r *credsRig) ownChangedKept(k *crSession) bool {
	old, now := ownKey(k.leaf), ownKey(r.client.leaf)
	if old == now {
		return false
	}
	r.outcomes["kept session ended: own identity changed"]++
	want := "own identity changed: " + old + " -> " + now
	select {
	case <-k.client.Done():
		ae, ok := errors.AsType[*quic.ApplicationError](k.client.Err())
		if !ok || ae.Remote || ae.ErrorMessage != want {
			r.t.Errorf("%s: session %s ended with %v, want the dialer's own %q", r.step, k.name, k.client.Err(), want)
		}
	case <-time.After(testTimeout):
		r.t.Errorf("%s: session %s, dialed as %s, is still open now that the dialer is %s", r.step, k.name, old, now)
	}
	_ = k.client.Close("done")
	return true
}

// ownChangedInFlight checks that a session the dialer made during a
// reload, with an own identity its certificate no longer carries after
// it, has ended: at the switch, as "own identity changed: <old> -> <new>"
// (or, when the switch also made the dialer refuse the listener, as
// "revoked: <reason>"), or in Dial, which then returns no session.
func (r *credsRig) ownChangedInFlight(d crDial) {
	r.t.Helper()
	old, now := d.server.Peer().String(), ownKey(r.client.leaf)
	if old == now {
		return
	}
	r.outcomes["session in flight ended: own identity changed"]++
	want := "own identity changed: " + old + " -> " + now
	select {
	case <-d.client.Done():
		ae, ok := errors.AsType[*quic.ApplicationError](d.client.Err())
		if !ok || ae.Remote || ae.ErrorMessage != want && !strings.HasPrefix(ae.ErrorMessage, "revoked: ") {
			r.t.Errorf("%s: session %s ended with %v, want the dialer's own %q", r.step, d.name, d.client.Err(), want)
		}
	case <-time.After(testTimeout):
		r.t.Errorf("%s: session %s, dialed as %s, is still open now that the dialer is %s", r.step, d.name, old, now)
	}
}

// pemDER is the DER of the first block of a PEM file.
func pemDER(t *testing.T, b []byte) []byte {
	t.Helper()
	return parsePEMCert(t, b).Raw
}

// verdict is how the other end judges l with the CAs of trust: "" when it
// accepts it, else the reason it refuses it. asServer: l is a listener's.
func verdict(l *crLeaf, trust uint8, asServer bool) string {
	switch {
	case trust&(1<<l.ca) == 0:
		return ReasonUnknownAuthority
	case l.when == validExpired:
		return ReasonExpired
	case l.when == validNotYet:
		return ReasonNotYetValid
	case asServer && (l.sanless || l.wrongName):
		return ReasonBadCertificate // no server usage, or not the name dialed
	case asServer && l.role != RoleRelay && l.role != RoleGateway:
		return ReasonWrongRole
	case !asServer && l.sanless:
		return ReasonNoIdentity
	}
	return ""
}

// crOutcome is the end of one dial: who refused whom and why; "" for a
// session.
type crOutcome struct {
	// by: "client" (refused the server), "server", "revoked" (the server
	// revoked the client before the welcome arrived) or "late" (the client
	// refused the server after the hello, with credentials switched since
	// the TLS handshake)
	by, reason string
}

func (o crOutcome) String() string {
	switch {
	case o.by == "":
		return "session"
	case o.reason == "":
		return o.by + " refused in flight"
	case o.by == "revoked":
		return "revoked in flight: " + o.reason
	case o.by == "late":
		return "client refused after the hello: " + o.reason
	case o.by == "own":
		return "ended after the hello: own identity changed"
	}
	return o.by + " refused: " + o.reason
}

// expectDial is the outcome of a dial from a client of leaf cl trusting
// ct to the listener with leaf sl trusting st. The client judges first: a
// TLS 1.3 server sees the client's certificate after its own is accepted.
func expectDial(cl *crLeaf, ct uint8, sl *crLeaf, st uint8) crOutcome {
	if v := verdict(sl, ct, true); v != "" {
		return crOutcome{"client", v}
	}
	if v := verdict(cl, st, false); v != "" {
		return crOutcome{"server", v}
	}
	return crOutcome{}
}

// count adds the counters an outcome moves to the model.
func (r *credsRig) count(o crOutcome) {
	r.outcomes[o.String()]++
	switch o.by {
	case "":
		r.want["server/ok/none"]++
		r.want["client/ok/none"]++
	case "client":
		r.want["client/refused/"+o.reason]++
	case "server":
		if o.reason != "" { // else matchRefusals counts it
			r.want["server/refused/"+o.reason]++
		}
		r.want["client/refused/"+reasonServerError]++
	case "revoked": // admitted, then revoked before the dialer had its welcome
		r.want["server/ok/none"]++
		r.want["client/refused/"+reasonServerError]++
	case "late": // welcomed, then refused by the dialer
		r.want["server/ok/none"]++
		r.want["client/refused/"+o.reason]++
	case "own": // welcomed, then ended by the dialer for its new identity
		r.want["server/ok/none"]++
		r.want["client/ok/none"]++
	}
}

// crDial is one dial's result.
type crDial struct {
	name           string
	client, server *Session
	err            error
}

// newName returns a name no dial had.
func (r *credsRig) newName() string {
	r.names++
	return fmt.Sprintf("d%d", r.names)
}

// dial dials the listener with creds, its hello named name; a session's
// server end is fetched from the accept loop. Safe to call concurrently.
func (r *credsRig) dial(creds *Credentials, name string) crDial {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s, err := Dial(ctx, r.ln.Addr().String(), DialConfig{
		Credentials: creds, ServerName: serverName, ServerRoles: []string{RoleRelay, RoleGateway},
		Hello:      Hello{Role: RoleAgent, Name: name, InnerAddr: netip.MustParseAddr("100.64.0.1")},
		Registerer: r.reg,
	}, nil)
	d := crDial{name: name, client: s, err: err}
	if err == nil {
		d.server = r.takeAccepted(name)
	}
	return d
}

// outcomeOf classifies a dial's result as the model does, or says what
// is wrong with it.
func outcomeOf(d crDial) (crOutcome, error) {
	if d.err == nil {
		if d.server == nil {
			return crOutcome{}, errors.New("dialed, but the listener accepted no session")
		}
		return crOutcome{}, nil
	}
	if errors.Is(d.err, ErrOwnIdentityChanged) {
		return crOutcome{"own", ""}, nil
	}
	if ae, ok := errors.AsType[*AuthError](d.err); ok && errors.Is(d.err, errRefusedAfterHello) {
		return crOutcome{"late", ae.Reason}, nil
	}
	if ae, ok := errors.AsType[*AuthError](d.err); ok {
		return crOutcome{"client", ae.Reason}, nil
	}
	if re, ok := errors.AsType[*RefusedError](d.err); ok && re.Code == "tls_alert" {
		return crOutcome{"server", ""}, nil // the reason is in the server's counter
	}
	if re, ok := errors.AsType[*RefusedError](d.err); ok && re.Code == "revoked" {
		// Admitted by the credentials of one side of a reload, refused by
		// the other's before the welcome reached the dialer.
		return crOutcome{"revoked", re.Message}, nil
	}
	if re, ok := errors.AsType[*RefusedError](d.err); ok && slices.Contains(AuthReasons(), re.Code) {
		// Judged by the credentials of before in the TLS handshake, by
		// those of after a reload during the hello: the listener refuses
		// it then, counted alike.
		return crOutcome{"server", ""}, nil
	}
	return crOutcome{}, fmt.Errorf("dial failed otherwise: %w", d.err)
}

// checkDial checks a dial's result against the outcomes the model allows
// (each with the leaves of the client and the listener it implies) and
// returns the outcome that happened.
func (r *credsRig) checkDial(d crDial, allowed []crOutcome, leaves [][2]*crLeaf) (crOutcome, bool) {
	r.t.Helper()
	got, err := outcomeOf(d)
	if err != nil {
		r.t.Errorf("%s: %s: %v; want %v", r.step, d.name, err, allowed)
		return got, false
	}
	if got.by == "revoked" {
		session := slices.ContainsFunc(allowed, func(o crOutcome) bool { return o.by == "" })
		refused := slices.Contains(allowed, crOutcome{"server", got.reason})
		if session && refused {
			return got, true
		}
	}
	for i, o := range allowed {
		if o.by != got.by || (got.by != "server" && o.reason != got.reason) {
			continue
		}
		if o.by == "" {
			cl, sl := leaves[i][0], leaves[i][1]
			if d.server.Peer().String() != cl.id.String() || d.client.Peer().String() != sl.id.String() {
				continue
			}
		}
		return o, true
	}
	var peers string
	if d.err == nil {
		peers = fmt.Sprintf(" (the listener saw %s, the dialer %s)", d.server.Peer(), d.client.Peer())
	}
	r.t.Errorf("%s: %s: %v%s; want one of %v", r.step, d.name, errString(d.err), peers, allowed)
	return got, false
}

// dialWith dials with the dialer's credentials (probe < 0) or probe
// number probe's, and checks the outcome against the model.
func (r *credsRig) dialWith(probe int) crDial {
	creds, cl, ct := r.client.creds, r.client.leaf, r.client.trust
	if probe >= 0 {
		creds, cl, ct = r.probes[probe], r.probeLeaves[probe], uint8(1<<len(r.cas)-1)
	}
	want := expectDial(cl, ct, r.server.leaf, r.server.trust)
	d := r.dial(creds, r.newName())
	if o, ok := r.checkDial(d, []crOutcome{want}, [][2]*crLeaf{{cl, r.server.leaf}}); ok {
		r.count(o)
	}
	return d
}

// stepDial dials once, from the dialer or a probe, and closes the session.
func (r *credsRig) stepDial() {
	probe := r.rng.IntN(len(r.probes)+2) - 2 // the dialer more often
	r.step += fmt.Sprintf(": probe %d", max(probe, -1))
	d := r.dialWith(max(probe, -1))
	r.closeDial(d)
}

// closeDial closes both ends of a dial's session, if any.
func (r *credsRig) closeDial(d crDial) {
	if d.client != nil {
		_ = d.client.Close("done")
	}
	if d.server != nil {
		_ = d.server.Close("done")
	}
}

// stepKeep dials from the dialer and keeps the session if there is one.
func (r *credsRig) stepKeep() {
	leaf, serverLeaf := r.client.leaf, r.server.leaf
	d := r.dialWith(-1)
	if d.err == nil && d.server != nil {
		r.kept = append(r.kept, &crSession{name: d.name, client: d.client, server: d.server, leaf: leaf, serverLeaf: serverLeaf})
		return
	}
	r.closeDial(d)
}

// stepCloseSession closes a kept session.
func (r *credsRig) stepCloseSession() {
	i := r.rng.IntN(len(r.kept))
	k := r.kept[i]
	r.kept = slices.Delete(r.kept, i, i+1)
	_ = k.client.Close("done")
	select {
	case <-k.server.Done():
	case <-time.After(testTimeout):
		r.t.Errorf("%s: the listener's end of %s outlived its close", r.step, k.name)
	}
}

// stepInFlight starts a few dials, then rewrites and reloads one side's
// files while they run: each ends as the credentials of before or of after
// the reload say, with the peers of the same set.
func (r *credsRig) stepInFlight() {
	s := r.pickSide()
	type plan struct {
		probe int
		creds *Credentials
	}
	var plans []plan
	for range 2 + r.rng.IntN(5) {
		p := r.rng.IntN(len(r.probes)+2) - 2
		if p < 0 {
			plans = append(plans, plan{-1, r.client.creds})
		} else {
			plans = append(plans, plan{p, r.probes[p]})
		}
	}
	type state struct {
		sl, cl *crLeaf
		st, ct uint8
	}
	before := state{r.server.leaf, r.client.leaf, r.server.trust, r.client.trust}
	counts := r.handshakeCounts()
	r.rewrite(s)
	results := make([]crDial, len(plans))
	var wg sync.WaitGroup
	for i, p := range plans {
		name := r.newName()
		wg.Go(func() { results[i] = r.dial(p.creds, name) })
	}
	time.Sleep(time.Duration(r.rng.IntN(3000)) * time.Microsecond)
	from := [2]any{s.leaf, s.trust}
	r.reload(s)
	if to := [2]any{s.leaf, s.trust}; to != from {
		// Switch back and forth a few times while the dials run: each
		// must still see one set or the other.
		for range r.rng.IntN(8) {
			for _, st := range [][2]any{from, to} {
				r.writeLeaf(s, st[0].(*crLeaf), true, true)
				r.writeCAs(s, st[1].(uint8))
				r.reload(s)
			}
		}
	}
	wg.Wait()
	after := state{r.server.leaf, r.client.leaf, r.server.trust, r.client.trust}
	var refused [][]string
	for i, p := range plans {
		var allowed []crOutcome
		var leaves [][2]*crLeaf
		for _, st := range []state{before, after} {
			cl, ct := st.cl, st.ct
			if p.probe >= 0 {
				cl, ct = r.probeLeaves[p.probe], uint8(1<<len(r.cas)-1)
			}
			allowed = append(allowed, expectDial(cl, ct, st.sl, st.st))
			leaves = append(leaves, [2]*crLeaf{cl, st.sl})
		}
		if slices.Contains(allowed, crOutcome{}) {
			// Handshaken with one set, the listener judges the client
			// once more with the set in use before the welcome (and
			// revokes it later): either set's trust may refuse it then,
			// whatever the dialer would have made of that set's
			// certificate.
			for _, st := range []state{before, after} {
				cl := st.cl
				if p.probe >= 0 {
					cl = r.probeLeaves[p.probe]
				}
				if v := verdict(cl, st.st, false); v != "" && !slices.Contains(allowed, crOutcome{"server", v}) {
					allowed = append(allowed, crOutcome{"server", v})
					leaves = append(leaves, [2]*crLeaf{cl, st.sl})
				}
			}
			// Likewise the dialer judges the listener once more with its
			// set in use after the hello: either set's trust may refuse
			// the listener's certificate of a set that made a session.
			for i, o := range slices.Clone(allowed[:2]) {
				if o != (crOutcome{}) {
					continue
				}
				sl := leaves[i][1]
				for _, st := range []state{before, after} {
					ct := st.ct
					if p.probe >= 0 {
						ct = uint8(1<<len(r.cas) - 1)
					}
					if v := verdict(sl, ct, true); v != "" && !slices.Contains(allowed, crOutcome{"late", v}) {
						allowed = append(allowed, crOutcome{"late", v})
						leaves = append(leaves, [2]*crLeaf{leaves[i][0], sl})
					}
				}
			}
			// And the dialer ends a session it handshook with an own
			// identity its credentials no longer present after the hello.
			if p.probe < 0 && ownKey(before.cl) != ownKey(after.cl) {
				allowed = append(allowed, crOutcome{"own", ""})
				leaves = append(leaves, [2]*crLeaf{nil, nil})
			}
		}
		o, ok := r.checkDial(results[i], allowed, leaves)
		if ok && o.by == "" && p.probe < 0 {
			r.ownChangedInFlight(results[i])
		}
		r.closeDial(results[i])
		if !ok {
			continue
		}
		if o.by != "server" {
			r.count(o)
			continue
		}
		// The dialer learns of a refusal, not its reason: the reasons
		// are matched with the listener's counters below.
		r.count(crOutcome{"server", ""})
		var reasons []string
		for _, a := range allowed {
			if a.by == "server" {
				reasons = append(reasons, a.reason)
			}
		}
		refused = append(refused, reasons)
	}
	r.matchRefusals(counts, refused)
}

// matchRefusals checks that the listener's refusals since counts (by
// reason) are those of refused, one reason of each dial's set, and adds
// them to the model.
func (r *credsRig) matchRefusals(counts map[string]float64, refused [][]string) {
	r.t.Helper()
	got := map[string]int{}
	for k, v := range r.handshakeCounts() {
		if reason, ok := strings.CutPrefix(k, "server/refused/"); ok {
			if n := int(v - counts[k]); n > 0 {
				got[reason] = n
			}
		}
	}
	var match func(i int) bool
	match = func(i int) bool {
		if i == len(refused) {
			for _, n := range got {
				if n != 0 {
					return false
				}
			}
			return true
		}
		for _, reason := range refused[i] {
			if got[reason] > 0 {
				got[reason]--
				ok := match(i + 1)
				got[reason]++
				if ok {
					return true
				}
			}
		}
		return false
	}
	if !match(0) {
		r.t.Errorf("%s: the listener refused for %v, want one of each of %v", r.step, got, refused)
		return
	}
	for reason, n := range got {
		r.want["server/refused/"+reason] += float64(n)
	}
}

// handshakeCounts reads ztgate_tunnel_handshakes_total by side/result/reason.
func (r *credsRig) handshakeCounts() map[string]float64 {
	mfs, err := r.reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "ztgate_tunnel_handshakes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if v := m.GetCounter().GetValue(); v != 0 {
				got[labels["side"]+"/"+labels["result"]+"/"+labels["reason"]] = v
			}
		}
	}
	return got
}

// checkCounters compares the handshake counters with the model's, giving
// the listener's a moment: it counts a session when its setup ends.
func (r *credsRig) checkCounters() {
	r.t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := r.handshakeCounts()
		if equalCounts(got, r.want) {
			return
		}
		if time.Now().After(deadline) {
			r.t.Errorf("%s: handshake counters %v, want %v", r.step, got, r.want)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// equalCounts compares two sets of counters, zero and absent alike.
func equalCounts(a, b map[string]float64) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

// checkSessions checks that every kept session is up, and with exchange
// that one (all when every) carries a datagram each way.
func (r *credsRig) checkSessions(every bool) {
	r.t.Helper()
	for i, k := range r.kept {
		select {
		case <-k.client.Done():
			r.t.Errorf("%s: session %s ended: %v", r.step, k.name, k.client.Err())
			continue
		case <-k.server.Done():
			r.t.Errorf("%s: the listener's end of %s ended: %v", r.step, k.name, k.server.Err())
			continue
		default:
		}
		if every || i == len(r.kept)-1 {
			r.names++
			fill := byte(r.names)
			if err := exchangeDatagram(k.client, k.server, fill); err != nil {
				r.t.Errorf("%s: session %s, dialer to listener: %v", r.step, k.name, err)
			}
			if err := exchangeDatagram(k.server, k.client, fill); err != nil {
				r.t.Errorf("%s: session %s, listener to dialer: %v", r.step, k.name, err)
			}
		}
	}
}

// exchangeDatagram sends a packet filled with fill from one end until the
// other receives it (datagrams may be lost), skipping older packets.
func exchangeDatagram(from, to *Session, fill byte) error {
	pkt := ip4Packet(64, fill)
	deadline := time.Now().Add(testTimeout)
	for time.Now().Before(deadline) {
		if err := from.SendDatagram(pkt); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		for {
			b, err := to.ReceiveDatagram(ctx)
			if err != nil {
				break
			}
			ok := bytes.Equal(b, pkt)
			ReleaseDatagram(b)
			if ok {
				cancel()
				return nil
			}
		}
		cancel()
	}
	return errors.New("no datagram got through")
}

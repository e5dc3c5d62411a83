package tunnel

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// credSets are two sets of a relay's files on disk: a is our CA's (the
// relay's certificate from it, the CA file naming it), b the foreign CA's.
// Neither is the other's files rewritten: a switch between them is one of
// paths.
type credSets struct {
	a, b   Files
	bundle string // both CAs, for peers that take either set
}

func newCredSets(f *tlsFixture) credSets {
	var s credSets
	s.a.Cert, s.a.Key = f.relayFiles("relay-a")
	s.a.CA = f.caFile
	s.b.Cert, s.b.Key = f.leaf(f.other, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: "relay-b",
		DNSNames: []string{serverName}, IPs: loopbackIPs()})
	s.b.CA = f.write("other-ca.crt", f.other.CertPEM())
	s.bundle = f.write("bundle.crt", append(f.ca.CertPEM(), f.other.CertPEM()...))
	return s
}

// config returns a CredentialsConfig naming files.
func (files Files) config(role string) CredentialsConfig {
	return CredentialsConfig{CertFile: files.Cert, KeyFile: files.Key, CAFile: files.CA, Role: role}
}

// TestReloadFilesServer: a reload to other paths (a certificate of another
// CA and that CA's file) makes new handshakes present the new certificate
// and trust the new CA only, while a session opened before goes on; a
// reload back returns to the first set.
func TestReloadFilesServer(t *testing.T) {
	f := newTLSFixture(t)
	sets := newCredSets(f)
	server := f.creds(sets.a.config(RoleRelay))
	serverCfg := server.ServerConfig(ALPNV2)
	agent := IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"}
	clientOf := func(ca *CA) *tls.Config {
		certFile, keyFile := f.leaf(ca, agent)
		return f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: sets.bundle}).ClientConfig(serverName, ALPNV2)
	}
	oursClient, theirsClient := clientOf(f.ca), clientOf(f.other)

	check := func(step, wantServer string, accepted, refused *tls.Config) {
		t.Helper()
		res := handshake(t, serverCfg, accepted)
		if res.serverErr != nil || res.clientErr != nil || peerName(res.client) != wantServer {
			t.Fatalf("%s: server %v, client %v, server certificate %q; want accepted by %s", step, res.serverErr, res.clientErr, peerName(res.client), wantServer)
		}
		res = handshake(t, serverCfg, refused)
		if ae, ok := errors.AsType[*AuthError](res.serverErr); !ok || ae.Reason != ReasonUnknownAuthority {
			t.Fatalf("%s: the client of the other CA: server error %v, want %s", step, res.serverErr, ReasonUnknownAuthority)
		}
	}
	srv1, cli1, res := connect(t, serverCfg, oursClient)
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("first session: server %v, client %v", res.serverErr, res.clientErr)
	}
	check("before", "relay-a", oursClient, theirsClient)

	if err := server.ReloadFiles(sets.b); err != nil {
		t.Fatal(err)
	}
	if got := server.Files(); got != sets.b {
		t.Fatalf("Files() = %+v, want %+v", got, sets.b)
	}
	if got := server.Certificate().Subject.CommonName; got != "relay-b" {
		t.Fatalf("Certificate() after the switch: %q", got)
	}
	check("after the switch", "relay-b", theirsClient, oursClient)
	if err := exchange(srv1, cli1); err != nil {
		t.Fatalf("the session opened before the switch broke: %v", err)
	}

	// Reload re-reads the files in use: the new ones.
	if err := server.Reload(); err != nil || server.Files() != sets.b {
		t.Fatalf("Reload after the switch: %v, files %+v", err, server.Files())
	}
	check("after Reload", "relay-b", theirsClient, oursClient)

	if err := server.ReloadFiles(sets.a); err != nil {
		t.Fatal(err)
	}
	check("back", "relay-a", oursClient, theirsClient)
}

// TestReloadFilesFailureKeepsCredentials: a switch to files that do not
// load, or that load but fail a check (the key of another certificate, a
// certificate of another role, a CA file that does not parse), is refused
// whole: the files, the certificate and the CA in use stay, and so do
// handshakes.
func TestReloadFilesFailureKeepsCredentials(t *testing.T) {
	f := newTLSFixture(t)
	sets := newCredSets(f)
	missing := filepath.Join(f.dir, "missing")
	agentCert, agentKey := f.leaf(f.other, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
	_, otherKey := f.relayFiles("relay-c")
	garbage := f.write("garbage.crt", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	empty := f.write("empty.crt", []byte("nothing here\n"))
	with := func(mod func(*Files)) Files { x := sets.b; mod(&x); return x }
	for _, tc := range []struct {
		name  string
		files Files
		want  string // in the error
	}{
		{"missing certificate", with(func(x *Files) { x.Cert = missing }), missing},
		{"missing key", with(func(x *Files) { x.Key = missing }), missing},
		{"missing CA", with(func(x *Files) { x.CA = missing }), missing},
		{"no CA", with(func(x *Files) { x.CA = "" }), "tunnel: load credentials"},
		{"key of another certificate", with(func(x *Files) { x.Key = otherKey }), "private key does not match public key"},
		{"an agent's certificate", with(func(x *Files) { x.Cert, x.Key = agentCert, agentKey }), "not of a relay"},
		{"garbage certificate", with(func(x *Files) { x.Cert = garbage }), garbage},
		{"CA file without certificates", with(func(x *Files) { x.CA = empty }), empty},
		{"CA file with a bad certificate", with(func(x *Files) { x.CA = garbage }), garbage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := f.creds(sets.a.config(RoleRelay))
			before := server.Certificate()
			if err := server.ReloadFiles(tc.files); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ReloadFiles: %v, want an error with %q", err, tc.want)
			}
			if _, err := server.Stage(tc.files); err == nil {
				t.Fatal("Stage accepted what ReloadFiles refused")
			}
			if server.Certificate() != before || server.Files() != sets.a {
				t.Fatalf("a failed switch changed the credentials: files %+v", server.Files())
			}
			client := f.agentCreds(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
			res := handshake(t, server.ServerConfig(ALPNV2), client.ClientConfig(serverName, ALPNV2))
			if res.serverErr != nil || res.clientErr != nil || peerName(res.client) != "relay-a" {
				t.Fatalf("after a failed switch: server %v, client %v, certificate %q", res.serverErr, res.clientErr, peerName(res.client))
			}
		})
	}
}

// TestStageUse: staged credentials change nothing until Use, and nothing
// at all when dropped.
func TestStageUse(t *testing.T) {
	f := newTLSFixture(t)
	sets := newCredSets(f)
	c := f.creds(sets.a.config(RoleRelay))
	if _, err := c.Stage(sets.b); err != nil { // dropped
		t.Fatal(err)
	}
	s, err := c.Stage(sets.b)
	if err != nil {
		t.Fatal(err)
	}
	if c.Files() != sets.a || c.Certificate().Subject.CommonName != "relay-a" {
		t.Fatal("Stage switched the credentials")
	}
	s.Use()
	if c.Files() != sets.b || c.Certificate().Subject.CommonName != "relay-b" {
		t.Fatalf("after Use: files %+v, certificate %q", c.Files(), c.Certificate().Subject.CommonName)
	}
}

// TestReloadFilesClient: a client switched to other files presents the
// new certificate and verifies servers against the new CA.
func TestReloadFilesClient(t *testing.T) {
	f := newTLSFixture(t)
	sets := newCredSets(f)
	// The server takes clients of both CAs and presents our CA's
	// certificate.
	server := f.creds(CredentialsConfig{CertFile: sets.a.Cert, KeyFile: sets.a.Key, CAFile: sets.bundle})
	agentA, agentAKey := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "agent-a"})
	agentB, agentBKey := f.leaf(f.other, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "agent-b"})
	client := f.creds(CredentialsConfig{CertFile: agentA, KeyFile: agentAKey, CAFile: f.caFile, Role: RoleAgent})
	serverCfg, clientCfg := server.ServerConfig(ALPNV2), client.ClientConfig(serverName, ALPNV2)
	if res := handshake(t, serverCfg, clientCfg); res.serverErr != nil || peerName(res.server) != "agent-a" {
		t.Fatalf("before: server %v, saw %q", res.serverErr, peerName(res.server))
	}
	// The bundle: our server still verifies, and the new certificate goes.
	if err := client.ReloadFiles(Files{Cert: agentB, Key: agentBKey, CA: sets.bundle}); err != nil {
		t.Fatal(err)
	}
	if res := handshake(t, serverCfg, clientCfg); res.serverErr != nil || peerName(res.server) != "agent-b" {
		t.Fatalf("after the switch: server %v, saw %q", res.serverErr, peerName(res.server))
	}
	// The foreign CA alone: our server no longer verifies.
	if err := client.ReloadFiles(Files{Cert: agentB, Key: agentBKey, CA: sets.b.CA}); err != nil {
		t.Fatal(err)
	}
	res := handshake(t, serverCfg, clientCfg)
	if ae, ok := errors.AsType[*AuthError](res.clientErr); !ok || ae.Reason != ReasonUnknownAuthority {
		t.Fatalf("after the switch to the foreign CA: client error %v, want %s", res.clientErr, ReasonUnknownAuthority)
	}
}

// pipeHandshake makes one TLS connection over a pipe and reports what
// each end saw; safe to call from any goroutine. The client reads one byte
// the server writes after its handshake, so that the server's verdict on
// the client's certificate reaches it.
func pipeHandshake(serverCfg, clientCfg *tls.Config) (serverSaw, clientSaw tls.ConnectionState, serverErr, clientErr error) {
	a, b := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	_ = a.SetDeadline(deadline)
	_ = b.SetDeadline(deadline)
	srv, cli := tls.Server(a, serverCfg), tls.Client(b, clientCfg)
	done := make(chan error, 1)
	go func() {
		err := srv.Handshake()
		if err == nil {
			serverSaw = srv.ConnectionState()
			_, err = srv.Write([]byte{1})
		}
		a.Close() // not srv.Close: its close_notify would wait for a reader
		done <- err
	}()
	clientErr = cli.Handshake()
	if clientErr == nil {
		clientSaw = cli.ConnectionState()
		_, clientErr = io.ReadFull(cli, make([]byte, 1))
	}
	b.Close()
	serverErr = <-done
	return serverSaw, clientSaw, serverErr, clientErr
}

// concurrentSwitches runs handshake from several goroutines while another
// switches c between sets a and b until they are done. handshake makes one
// and tells which set it saw ("a" or "b"), or what is wrong with it. The
// test fails unless both sets were seen.
func concurrentSwitches(t *testing.T, c *Credentials, a, b Files, handshake func() (set string, problem string)) {
	t.Helper()
	const workers, rounds = 4, 40
	stop := make(chan struct{})
	var switches sync.WaitGroup
	switches.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			next := a
			if i%2 == 0 {
				next = b
			}
			if err := c.ReloadFiles(next); err != nil {
				t.Errorf("ReloadFiles: %v", err)
				return
			}
		}
	})
	var seen [2]atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				set, problem := handshake()
				if problem != "" {
					t.Error(problem)
					return
				}
				if set == "a" {
					seen[0].Add(1)
				} else {
					seen[1].Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	switches.Wait()
	t.Logf("handshakes with set a %d, set b %d", seen[0].Load(), seen[1].Load())
	if !t.Failed() && (seen[0].Load() == 0 || seen[1].Load() == 0) {
		t.Error("the handshakes did not see both sets")
	}
}

// TestReloadFilesConcurrentServer: a server switched between two sets of
// files while clients connect presents one set's certificate and trusts
// the same set's CA in every handshake: a client of our CA is accepted by
// relay-a exactly and refused by relay-b exactly (run with -race).
func TestReloadFilesConcurrentServer(t *testing.T) {
	f := newTLSFixture(t)
	sets := newCredSets(f)
	server := f.creds(sets.a.config(RoleRelay))
	serverCfg := server.ServerConfig(ALPNV2)
	certFile, keyFile := f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "laptop"})
	client := f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: sets.bundle})
	concurrentSwitches(t, server, sets.a, sets.b, func() (string, string) {
		_, cs, serverErr, clientErr := pipeHandshake(serverCfg, client.ClientConfig(serverName, ALPNV2))
		presented := peerName(cs)
		ae, _ := errors.AsType[*AuthError](serverErr)
		switch {
		case presented == "relay-a" && serverErr == nil && clientErr == nil:
			return "a", ""
		case presented == "relay-b" && ae != nil && ae.Reason == ReasonUnknownAuthority:
			return "b", ""
		}
		return "", "half-switched or failed handshake: the server presented " + presented +
			" and said " + errString(serverErr) + " (client: " + errString(clientErr) + ")"
	})
}

// TestReloadFilesConcurrentClient: a client switched between two sets of
// files while it dials verifies the server and presents its certificate
// from one set in every handshake, as Dial takes its configuration: the
// server (of our CA, taking clients of both) never sees the foreign
// certificate of a client that verified it with our CA. Run with -race,
// strict and insecure: an insecure client reads which CA file it has at
// every handshake (without one it verifies no server).
func TestReloadFilesConcurrentClient(t *testing.T) {
	for _, insecure := range []bool{false, true} {
		t.Run(fmt.Sprintf("insecure=%v", insecure), func(t *testing.T) {
			f := newTLSFixture(t)
			sets := newCredSets(f)
			server := f.creds(CredentialsConfig{CertFile: sets.a.Cert, KeyFile: sets.a.Key, CAFile: sets.bundle})
			serverCfg := server.ServerConfig(ALPNV2)
			var a, b Files
			a.Cert, a.Key = f.leaf(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "agent-a"})
			a.CA = f.caFile
			b.Cert, b.Key = f.leaf(f.other, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "agent-b"})
			b.CA = sets.b.CA
			cfg := a.config(RoleAgent)
			cfg.Insecure = insecure
			client := f.creds(cfg)
			concurrentSwitches(t, client, a, b, func() (string, string) {
				// As Dial: one configuration, from one set, per handshake.
				cfg := client.clientConfig(client.active.Load(), serverName, "", []string{RoleRelay}, []string{ALPNV2})
				ss, _, serverErr, clientErr := pipeHandshake(serverCfg, cfg)
				ae, _ := errors.AsType[*AuthError](clientErr)
				switch {
				case serverErr == nil && clientErr == nil && peerName(ss) == "agent-a":
					return "a", ""
				case ae != nil && ae.Reason == ReasonUnknownAuthority && peerName(ss) == "":
					return "b", ""
				}
				return "", "half-switched or failed handshake: the server saw " + peerName(ss) + " and said " +
					errString(serverErr) + " (client: " + errString(clientErr) + ")"
			})
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "nothing"
	}
	return err.Error()
}

package tunnel

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// serverName is the TLS name of the test relay.
const serverName = "relay.test"

// tlsFixture holds a test PKI on disk: our CA, a foreign CA, and files.
type tlsFixture struct {
	t      testing.TB
	dir    string
	ca     *CA
	other  *CA
	caFile string // our CA certificate
	files  int    // counter for unique file names
}

func newTLSFixture(t testing.TB) *tlsFixture {
	f := &tlsFixture{t: t, dir: t.TempDir(), ca: mustCA(t, "ztgate CA"), other: mustCA(t, "foreign CA")}
	f.caFile = f.write("ca.crt", f.ca.CertPEM())
	return f
}

// write stores data in a new file of the fixture and returns its path.
func (f *tlsFixture) write(name string, data []byte) string {
	f.files++
	return writeFile(f.t, f.dir, fmt.Sprintf("%d-%s", f.files, name), data)
}

// leaf issues a certificate from ca and writes it and its key.
func (f *tlsFixture) leaf(ca *CA, req IssueRequest) (certFile, keyFile string) {
	f.t.Helper()
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		f.t.Fatal(err)
	}
	return f.write("leaf.crt", certPEM), f.write("leaf.key", keyPEM)
}

// creds loads credentials or fails the test.
func (f *tlsFixture) creds(cfg CredentialsConfig) *Credentials {
	f.t.Helper()
	c, err := NewCredentials(cfg, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// agentCreds returns client credentials with a certificate issued from ca
// for req, trusting our CA for the server.
func (f *tlsFixture) agentCreds(ca *CA, req IssueRequest) *Credentials {
	certFile, keyFile := f.leaf(ca, req)
	return f.creds(CredentialsConfig{CertFile: certFile, KeyFile: keyFile, CAFile: f.caFile})
}

// relayFiles issues the test relay's server certificate.
func (f *tlsFixture) relayFiles(name string) (certFile, keyFile string) {
	return f.leaf(f.ca, IssueRequest{Tenant: "ops", Role: RoleRelay, Name: name,
		DNSNames: []string{serverName}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
}

// relay returns server credentials with a fresh relay certificate and,
// unless cfg names one, our CA; cfg's other fields are kept.
func (f *tlsFixture) relay(cfg CredentialsConfig) *Credentials {
	f.t.Helper()
	cfg.CertFile, cfg.KeyFile = f.relayFiles("relay1")
	if cfg.CAFile == "" {
		cfg.CAFile = f.caFile
	}
	return f.creds(cfg)
}

// replace rewrites path atomically, as deployment tools do.
func replace(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// readFile returns a file's content or fails the test.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rejectLog records OnReject calls.
type rejectLog struct {
	mu      sync.Mutex
	reasons []string
	remotes []net.Addr
}

func (r *rejectLog) record(remote net.Addr, err *AuthError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reasons = append(r.reasons, err.Reason)
	r.remotes = append(r.remotes, remote)
}

func (r *rejectLog) snapshot() ([]string, []net.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reasons...), append([]net.Addr(nil), r.remotes...)
}

// handshakeResult is what both ends of one TLS connection saw.
type handshakeResult struct {
	server    tls.ConnectionState // valid when serverErr is nil
	client    tls.ConnectionState // valid when clientErr is nil
	serverErr error
	clientErr error // includes a refusal the server sent after the client's handshake
}

// connect makes one TLS connection over loopback. Both ends stay open
// until the test ends; the caller may exchange data on them.
func connect(t *testing.T, serverCfg, clientCfg *tls.Config) (srv, cli *tls.Conn, res handshakeResult) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)
	type accepted struct {
		conn *tls.Conn
		err  error
	}
	done := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- accepted{err: err}
			return
		}
		_ = c.SetDeadline(deadline)
		s := tls.Server(c, serverCfg)
		done <- accepted{s, s.Handshake()}
	}()
	raw, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		ln.Close()
		<-done
		t.Fatal(err)
	}
	_ = raw.SetDeadline(deadline)
	cli = tls.Client(raw, clientCfg)
	res.clientErr = cli.Handshake()
	a := <-done
	srv, res.serverErr = a.conn, a.err
	t.Cleanup(func() {
		cli.Close()
		if srv != nil {
			srv.Close()
		}
	})
	if srv == nil {
		t.Fatalf("accept: %v", res.serverErr)
	}
	// A TLS 1.3 client completes its handshake before the server has judged
	// the client's certificate: the verdict arrives with the first read.
	if res.clientErr == nil {
		if res.serverErr == nil {
			res.clientErr = exchange(srv, cli)
		} else {
			srv.Close()
			_, res.clientErr = cli.Read(make([]byte, 1))
		}
	}
	if res.serverErr == nil {
		res.server = srv.ConnectionState()
	}
	if res.clientErr == nil {
		res.client = cli.ConnectionState()
	}
	return srv, cli, res
}

// handshake makes one TLS connection over loopback and closes it.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) handshakeResult {
	t.Helper()
	srv, cli, res := connect(t, serverCfg, clientCfg)
	cli.Close()
	srv.Close()
	return res
}

// exchange sends a few bytes from the server to the client.
func exchange(srv, cli *tls.Conn) error {
	msg := []byte("ping")
	errc := make(chan error, 1)
	go func() {
		_, err := srv.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	_, err := io.ReadFull(cli, got)
	if werr := <-errc; werr != nil {
		return werr
	}
	if err == nil && string(got) != string(msg) {
		err = errors.New("exchange: corrupted data")
	}
	return err
}

// peerName returns the common name of the first peer certificate.
func peerName(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	return cs.PeerCertificates[0].Subject.CommonName
}

// rootPool returns a pool with the given CAs, for plain crypto/tls clients.
func rootPool(cas ...*CA) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca.Certificate())
	}
	return pool
}

// loopbackIPs returns the IPv4 loopback address as a SAN list.
func loopbackIPs() []netip.Addr { return []netip.Addr{netip.MustParseAddr("127.0.0.1")} }

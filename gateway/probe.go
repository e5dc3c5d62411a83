package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/ztgate/ztgate/catalog"
)

// prober runs one active health check against a backend.
type prober interface {
	// probe checks target and returns nil when it is healthy. ctx carries
	// the check's timeout; probe returns promptly once ctx is done and
	// leaves no socket open.
	probe(ctx context.Context, target netip.AddrPort) error
	// close releases what the prober keeps between checks.
	close()
}

// newProber returns the prober for a service's health settings, or nil for
// type none. port is the port its checks probe (checkPort: not always
// h.Port); host is the backend's host name, sent as the HTTP Host (""
// for a backend given by address: the address is); zone is the DNS zone a
// UDP check of port 53 asks for.
func newProber(h catalog.Health, port uint16, host, zone string) prober {
	switch h.Type {
	case catalog.HealthTCP:
		return tcpProbe{}
	case catalog.HealthHTTP:
		return newHTTPProbe(h.Path, h.ExpectStatus, host)
	case catalog.HealthUDP:
		return newUDPProbe(h, port, zone)
	}
	return nil
}

// tcpProbe checks that the backend accepts a connection.
type tcpProbe struct{}

func (tcpProbe) probe(ctx context.Context, target netip.AddrPort) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return fmt.Errorf("tcp check: %w", unwrapOp(err))
	}
	// Reset instead of FIN: checks leave no TIME_WAIT sockets behind.
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	return nil
}

func (tcpProbe) close() {}

// unwrapOp drops the "dial tcp 192.0.2.10:80:" prefix of a *net.OpError,
// which repeats what the log line and the API already say.
func unwrapOp(err error) error {
	if oe, ok := err.(*net.OpError); ok && oe.Err != nil {
		return oe.Err
	}
	return err
}

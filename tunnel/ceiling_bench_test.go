package tunnel

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// BenchmarkDatagramCeiling measures what a quic-go DATAGRAM connection on
// loopback carries at all, set up as the tunnel sets up its connections:
// one client sending full-size datagrams as fast as quic-go takes them, one
// server counting what arrives. It is the ceiling of the agent path, which
// the end-to-end benchmark compares with (reported as delivered_Gbit/s and
// delivered_pps).
func BenchmarkDatagramCeiling(b *testing.B) {
	f := newTLSFixture(b)
	ln, err := Listen("127.0.0.1:0", ListenConfig{Credentials: f.relay(CredentialsConfig{})}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	accepted := make(chan *Session, 1)
	go func() {
		s, err := ln.Accept(ctx)
		if err == nil {
			s.SendWelcome(Welcome{})
			accepted <- s
		}
	}()
	client, err := Dial(ctx, ln.Addr().String(), DialConfig{
		Credentials: f.agentCreds(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "bench"}),
		ServerName:  serverName,
		Hello:       Hello{Role: RoleAgent, Name: "bench", InnerAddr: netip.MustParseAddr("100.64.0.1")},
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close("done")
	server := <-accepted
	defer server.Close("done")
	ceiling(ctx, b, client.MaxDatagram(), client.SendDatagram, server.ReceiveDatagram)
}

// BenchmarkDatagramCeilingQUICDefaults is the same measurement with
// quic-go's own defaults (quic.ListenAddr, quic.DialAddr, only DATAGRAMs
// enabled): what the tunnel's connection settings (padding.go) gain over
// them.
func BenchmarkDatagramCeilingQUICDefaults(b *testing.B) {
	f := newTLSFixture(b)
	conf := &quic.Config{EnableDatagrams: true}
	ln, err := quic.ListenAddr("127.0.0.1:0", f.relay(CredentialsConfig{}).ServerConfig(ALPNV2), conf)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	accepted := make(chan *quic.Conn, 1)
	go func() {
		if c, err := ln.Accept(ctx); err == nil {
			accepted <- c
		}
	}()
	creds := f.agentCreds(f.ca, IssueRequest{Tenant: "acme", Role: RoleAgent, Name: "bench"})
	client, err := quic.DialAddr(ctx, ln.Addr().String(), creds.clientConfig(nil, serverName, "", nil, []string{ALPNV2}), conf)
	if err != nil {
		b.Fatal(err)
	}
	defer client.CloseWithError(0, "done")
	server := <-accepted
	defer server.CloseWithError(0, "done")
	var tooLarge *quic.DatagramTooLargeError
	if err := client.SendDatagram(make([]byte, probeSize)); !errors.As(err, &tooLarge) {
		b.Fatalf("probe: %v", err)
	}
	ceiling(ctx, b, int(tooLarge.MaxDatagramPayloadSize), client.SendDatagram, server.ReceiveDatagram)
}

// ceiling sends b.N datagrams of size bytes with send while a goroutine
// counts what receive returns (and gives each buffer back, as the tunnel's
// readers do), and reports the delivered rate and loss.
func ceiling(ctx context.Context, b *testing.B, size int, send func([]byte) error, receive func(context.Context) ([]byte, error)) {
	var got, bytes atomic.Int64
	go func() {
		for {
			d, err := receive(ctx)
			if err != nil {
				return
			}
			got.Add(1)
			bytes.Add(int64(len(d)))
			quic.ReleaseDatagram(d) // as the tunnel's readers do
		}
	}()
	payload := make([]byte, size)
	payload[0] = 0x45 // looks like IPv4 to anyone parsing it
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		send(payload)
	}
	time.Sleep(50 * time.Millisecond) // the last datagrams in flight
	elapsed := time.Since(start)
	b.ReportMetric(float64(bytes.Load())*8/elapsed.Seconds()/1e9, "delivered_Gbit/s")
	b.ReportMetric(float64(got.Load())/elapsed.Seconds(), "delivered_pps")
	b.ReportMetric(1-float64(got.Load())/float64(b.N), "loss")
}

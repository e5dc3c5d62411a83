package gateway

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/netstack/netstacktest"
)

// BenchmarkTCPConnection: one connection through the gateway per op, as
// the end-to-end suite's connections/s case makes them (connect to the
// VIP, a 1-byte echo, close), by 8 clients per processor at once. The
// client is a second gVisor stack in this process and the backend a
// loopback socket, so an op includes their work too; what a change to the
// gateway's per-connection path saves shows as a difference (benchstat).
// The gateway logs its flow lines as in production (text, info level),
// into io.Discard.
func BenchmarkTCPConnection(b *testing.B) {
	// One client address opens all the connections: no per-source rate
	// (1000 new flows/s by default, which would drop SYNs here).
	const unlimited = "[limits]\nnew_flows_per_second = 0\n"
	port := serveTCP(b, func(c net.Conn) {
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			return
		}
		if _, err := c.Write(one[:]); err != nil {
			return
		}
		io.Copy(io.Discard, c) // until the client closes
	})
	cfg, err := conf.ParseGateway("bench.toml", []byte(strings.ReplaceAll(quietGateway+unlimited+acmeTenant+
		tcpService("echo", `"acme"`, "10.100.0.7", "127.0.0.1", port), "STATE", b.TempDir())))
	if err != nil {
		b.Fatal(err)
	}
	client, err := netstacktest.NewClient(1420, acmeClient)
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	gw, err := New(cfg, Options{Device: client}, log)
	if err != nil {
		b.Fatal(err)
	}
	if err := gw.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { gw.Close() })

	dst := netip.MustParseAddrPort("10.100.0.7:7")
	b.ReportAllocs()
	b.SetParallelism(8) // the gateway busy, not waiting for one client
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		var one [1]byte
		for pb.Next() {
			c, err := client.DialTCP(ctx, acmeClient, dst)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Write(one[:]); err != nil {
				b.Error(err)
			}
			if _, err := io.ReadFull(c, one[:]); err != nil {
				b.Error(err)
			}
			c.Close()
		}
	})
}

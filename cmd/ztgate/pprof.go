package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"

	"github.com/ztgate/ztgate/internal/listenaddr"

	"github.com/ztgate/ztgate/internal/adminapi"
)

// startProfiling serves Go's profiles on the address in ZTGATE_PPROF (for
// performance work on any role: go tool pprof http://ADDR/debug/pprof/profile).
// It is off unless set, and meant for loopback. Only the roles start it:
// the one-shot commands have nothing worth profiling.
func startProfiling(stderr io.Writer) {
	addr := os.Getenv("ZTGATE_PPROF")
	if addr == "" {
		return
	}
	if err := loopbackOnly(addr); err != nil {
		fmt.Fprintln(stderr, "ztgate: ZTGATE_PPROF:", err)
		return
	}
	l, err := listenaddr.Listen(addr)
	if err != nil {
		fmt.Fprintln(stderr, "ztgate: ZTGATE_PPROF:", err)
		return
	}
	go profileServer().Serve(l)
}

// profileServer serves the profiles. Like the admin API without a token,
// it answers only a Host that is an IP address or localhost: a web page
// whose name re-resolves to 127.0.0.1 (DNS rebinding) would read them.
func profileServer() *http.Server {
	return &http.Server{Handler: adminapi.GuardBrowsers("", adminapi.ProfileHandler()), ReadHeaderTimeout: adminapi.ReadHeaderTimeout}
}

// loopbackOnly refuses an address that is not a loopback one: the profiles
// are served without a token (the admin API serves them behind its own).
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip, err := netip.ParseAddr(host); (err == nil && ip.Unmap().IsLoopback()) || host == "localhost" {
		return nil
	}
	return fmt.Errorf("%q is not a loopback address: the profiles are served without a token here (elsewhere, the admin API's /debug/pprof/ is behind its token)", addr)
}

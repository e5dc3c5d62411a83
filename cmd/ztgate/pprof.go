package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

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
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(stderr, "ztgate: ZTGATE_PPROF:", err)
		return
	}
	srv := &http.Server{Handler: adminapi.ProfileHandler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
}

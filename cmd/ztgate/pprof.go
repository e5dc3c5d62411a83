package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"
)

// startProfiling serves Go's profiles on the address in ZTGATE_PPROF (for
// performance work on any role: go tool pprof http://ADDR/debug/pprof/profile).
// It is off unless set, and meant for loopback.
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
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
}

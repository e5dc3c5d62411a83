package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/relay"
)

func runRelay(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/ztgate/relay.toml", "relay configuration `file`")
	var lf logFlags
	lf.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "ztgate:", err)
		return 2
	}
	cfg, err := conf.LoadRelay(*path)
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}
	r, err := relay.New(cfg, relay.Options{}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := r.Start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	// SIGHUP re-reads the certificate, key and CA files.
	serveUntil(ctx, log, r.ReloadCredentials)
	return shutdown(log, r.Close)
}

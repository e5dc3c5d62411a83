package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/ztgate/ztgate/agent"
	"github.com/ztgate/ztgate/conf"
)

func runAgent(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/ztgate/agent.toml", "agent configuration `file`")
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
	cfg, err := conf.LoadAgent(*path)
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}
	a, err := agent.New(cfg, agent.Options{}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := a.Start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	log.Info("agent started", "name", cfg.Name, "server", cfg.Tunnel.Server, "address", cfg.TUN.Address)
	// SIGHUP re-reads the certificate, key and CA files.
	serveUntil(ctx, log, a.ReloadCredentials)
	return shutdown(log, a.Close)
}

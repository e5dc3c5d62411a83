package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/gateway"
)

// shutdownGrace bounds a clean shutdown after SIGTERM or SIGINT.
const shutdownGrace = 5 * time.Second

func runGateway(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/ztgate/gateway.toml", "gateway configuration `file`")
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
	cfg, err := conf.LoadGateway(*path)
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}
	gw, err := gateway.New(cfg, gateway.Options{}, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := gw.Start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	// SIGHUP reloads the configuration and the tunnel credentials; each
	// logs what it did or its errors.
	serveUntil(ctx, log, func() error {
		_, err := gw.Reload()
		return errors.Join(err, gw.ReloadCredentials())
	})
	return shutdown(log, gw.Close)
}

// serveUntil calls reload on every SIGHUP until ctx is done (SIGTERM or
// SIGINT). reload logs its own outcome.
func serveUntil(ctx context.Context, log *slog.Logger, reload func() error) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			log.Info("SIGHUP: reloading")
			reload()
		case <-ctx.Done():
			log.Info("shutting down", "signal", context.Cause(ctx))
			return
		}
	}
}

// shutdown runs close and gives up after shutdownGrace, so the process
// always exits promptly after a signal.
func shutdown(log interface{ Error(string, ...any) }, close func() error) int {
	done := make(chan error, 1)
	go func() { done <- close() }()
	select {
	case err := <-done:
		if err != nil {
			log.Error("shutdown", "err", err)
			return 1
		}
		return 0
	case <-time.After(shutdownGrace):
		log.Error("shutdown took too long; exiting", "grace", shutdownGrace)
		return 1
	}
}

func printConfigErrors(w io.Writer, err error) {
	var errs conf.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			fmt.Fprintln(w, e)
		}
		return
	}
	fmt.Fprintln(w, err)
}

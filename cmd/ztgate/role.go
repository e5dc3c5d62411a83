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
)

// shutdownGrace bounds a clean shutdown after SIGTERM or SIGINT.
const shutdownGrace = 5 * time.Second

// role is a long-running process of ztgate: a gateway, a relay, an agent.
type role interface {
	Start() error
	Close() error
}

// roleCommand describes one role's subcommand.
type roleCommand[C any] struct {
	name          string
	defaultConfig string
	load          func(path string) (*C, error)
	// build makes the role from its configuration and says what SIGHUP
	// does (reload logs its own outcome).
	build func(cfg *C, log *slog.Logger) (r role, reload func() error, err error)
}

// run parses the flags, starts profiling when ZTGATE_PPROF asks for it,
// loads and validates the configuration, starts the role and serves until
// SIGTERM or SIGINT, reloading on SIGHUP; then it shuts down within
// shutdownGrace.
func (rc roleCommand[C]) run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(rc.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", rc.defaultConfig, rc.name+" configuration `file`")
	var lf logFlags
	lf.register(fs)
	if code, ok := parseFlags(fs, args, 0); !ok {
		return code
	}
	log, flushLog, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "ztgate:", err)
		return 2
	}
	defer flushLog()
	// Caught before anything is built: a SIGHUP during a slow start (a
	// gateway's first lookups of its backends' names) is served once the
	// role runs instead of ending the process, its default action.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	startProfiling(stderr)
	cfg, err := rc.load(*path)
	if err != nil {
		printConfigErrors(stderr, err)
		if !flagSet(fs, "config") && errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "ztgate %s: no configuration at %s, the default of -config: write it there, or pass -config FILE (examples/ in the source has one for each role; `ztgate check -config FILE` validates it)\n", rc.name, *path)
		}
		return 1
	}
	r, reload, err := rc.build(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := r.Start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	serveUntil(ctx, log, hup, reload)
	// A second SIGTERM or SIGINT during the shutdown ends the process at
	// once (the kernel removes a TUN device and its routes with it).
	stop()
	return shutdown(log, r.Close)
}

// serveUntil calls reload for every signal on hup (SIGHUP) until ctx is
// done (SIGTERM or SIGINT). reload logs its own outcome.
func serveUntil(ctx context.Context, log *slog.Logger, hup <-chan os.Signal, reload func() error) {
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

// flagSet reports whether the command line set the flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
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

package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// logFlags are the logging flags every long-running command takes.
type logFlags struct {
	format string
	level  string
	flush  time.Duration
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.format, "log-format", "auto", "log format: text, json, or auto (text on a terminal, json otherwise)")
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn, error")
	fs.DurationVar(&l.flush, "log-flush", 100*time.Millisecond, "write info and debug lines together at most this long after they were logged (warnings and errors at once); 0 writes every line at once, as does a terminal")
}

// logger builds the process logger, and flush, which writes what it holds
// back (the process calls it before it exits).
func (l *logFlags) logger(w io.Writer) (log *slog.Logger, flush func(), err error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, nil, fmt.Errorf("-log-level: %q is not debug, info, warn or error", l.level)
	}
	if l.flush < 0 {
		return nil, nil, fmt.Errorf("-log-flush: %v is negative", l.flush)
	}
	opts := &slog.HandlerOptions{Level: level}
	terminal := false
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		terminal = true
	}
	format := l.format
	if format == "auto" {
		format = "json"
		if terminal {
			format = "text"
		}
	}
	var buf *logBuffer
	flush = func() {}
	if l.flush > 0 && !terminal {
		buf = newLogBuffer(w, l.flush)
		w = buf
		flush = func() { buf.Flush() }
	}
	var h slog.Handler
	switch format {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		opts.ReplaceAttr = durationString
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, nil, fmt.Errorf("-log-format: %q is not text, json or auto", l.format)
	}
	if buf != nil {
		h = flushingHandler{h, buf}
	}
	return slog.New(h), flush, nil
}

// durationString writes a duration as the text handler does ("1.5s", "250ms")
// instead of slog's JSON default, an integer of nanoseconds that names no unit.
func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

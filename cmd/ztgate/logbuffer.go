package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// logBufferSize is how much a logBuffer holds before it writes at once.
const logBufferSize = 64 << 10

// logBuffer gathers log lines and writes them together: a line that comes
// interval or more after the last write is written at once, and the lines
// that follow it closer than that wait for the next write, interval after
// the first of them, or until logBufferSize bytes are held, or Flush. A
// gateway writes one line per flow; written one by one at thousands of
// flows a second they cost a system call each and wake whatever reads the
// process's standard error (journald, a pipe) once per flow, while a line
// of a quiet process is never held back. slog's handlers hand over each
// record in one Write, so lines are never split.
type logBuffer struct {
	w        io.Writer
	interval time.Duration

	mu    sync.Mutex
	buf   []byte
	armed bool      // a flush is scheduled
	last  time.Time // when the last write ended
}

func newLogBuffer(w io.Writer, interval time.Duration) *logBuffer {
	return &logBuffer{w: w, interval: interval}
}

// Write takes p; it fails only when a write that p's size forced fails.
func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.armed && time.Since(b.last) >= b.interval {
		n, err := b.w.Write(p) // the buffer is empty: nothing is scheduled
		b.last = time.Now()
		return n, err
	}
	if len(b.buf)+len(p) > logBufferSize {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) >= logBufferSize {
			return b.w.Write(p)
		}
	}
	b.buf = append(b.buf, p...)
	if !b.armed {
		b.armed = true
		time.AfterFunc(b.interval, b.flushScheduled)
	}
	return len(p), nil
}

func (b *logBuffer) flushScheduled() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.armed = false
	b.flushLocked()
}

// Flush writes what the buffer holds.
func (b *logBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *logBuffer) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.last = time.Now()
	// Dropped on an error as well: standard error that fails now would
	// fail again, and the buffer must not grow without bound.
	b.buf = b.buf[:0]
	return err
}

// flushingHandler writes a buffered handler's warnings and errors at once,
// with the lines before them: what an operator must see is not held back.
type flushingHandler struct {
	slog.Handler
	buf *logBuffer
}

func (h flushingHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		if ferr := h.buf.Flush(); err == nil {
			err = ferr
		}
	}
	return err
}

func (h flushingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return flushingHandler{h.Handler.WithAttrs(attrs), h.buf}
}

func (h flushingHandler) WithGroup(name string) slog.Handler {
	return flushingHandler{h.Handler.WithGroup(name), h.buf}
}

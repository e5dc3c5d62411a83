package main

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLogFlags(t *testing.T) {
	tests := []struct {
		name, format, level string
		wantJSON            bool
		wantErr             string
		debugShown          bool
	}{
		{name: "auto off a terminal is JSON", format: "auto", level: "info", wantJSON: true},
		{name: "text", format: "text", level: "info"},
		{name: "json", format: "json", level: "info", wantJSON: true},
		{name: "debug level", format: "json", level: "debug", wantJSON: true, debugShown: true},
		{name: "bad format", format: "xml", level: "info", wantErr: `-log-format: "xml" is not text, json or auto`},
		{name: "bad level", format: "text", level: "loud", wantErr: "-log-level"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			lf := logFlags{format: tc.format, level: tc.level}
			log, _, err := lf.logger(&buf)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("hidden unless debug")
			log.Info("flow", "service", "web", "bytes_up", 80, "duration", 1500*time.Millisecond)
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if want := map[bool]int{true: 2, false: 1}[tc.debugShown]; len(lines) != want {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), want, buf.String())
			}
			last := lines[len(lines)-1]
			var rec map[string]any
			isJSON := json.Unmarshal([]byte(last), &rec) == nil
			if isJSON != tc.wantJSON {
				t.Fatalf("line %q: JSON %v, want %v", last, isJSON, tc.wantJSON)
			}
			if !tc.wantJSON && !strings.Contains(last, "msg=flow service=web bytes_up=80 duration=1.5s") {
				t.Errorf("text line %q", last)
			}
			if tc.wantJSON && (rec["msg"] != "flow" || rec["service"] != "web" || rec["duration"] != "1.5s") {
				t.Errorf("JSON line %v", rec)
			}
		})
	}
}

// writes records every Write call it gets.
type writes struct {
	mu    sync.Mutex
	calls []string
}

func (w *writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, string(p))
	return len(p), nil
}

func (w *writes) get() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.calls)
}

// waitWrites waits up to 5 s for n writes.
func (w *writes) waitWrites(t *testing.T, n int) []string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if got := w.get(); len(got) >= n {
			return got
		} else if time.Now().After(deadline) {
			t.Fatalf("%d writes after 5 s, want %d: %q", len(got), n, got)
		}
	}
}

func TestLogFlush(t *testing.T) {
	t.Run("a quiet process's line is written at once, the lines close after it together", func(t *testing.T) {
		var w writes
		log, flush, err := (&logFlags{format: "text", level: "info", flush: 50 * time.Millisecond}).logger(&w)
		if err != nil {
			t.Fatal(err)
		}
		defer flush()
		log.Info("started")
		if got := w.get(); len(got) != 1 || !strings.Contains(got[0], "msg=started") {
			t.Fatalf("the first line: writes %q", got)
		}
		start := time.Now()
		for i := range 3 {
			log.Info("flow", "n", i)
		}
		if got := w.get(); len(got) != 1 {
			t.Fatalf("the lines right after it written at once: %q", got)
		}
		got := w.waitWrites(t, 2)
		if took := time.Since(start); took < 40*time.Millisecond {
			t.Errorf("written after %v, before the interval", took)
		}
		if len(got) != 2 || strings.Count(got[1], "msg=flow") != 3 || !strings.Contains(got[1], "n=0") || !strings.Contains(got[1], "n=2") {
			t.Fatalf("writes %q, want the three lines in one", got)
		}
		time.Sleep(60 * time.Millisecond) // quiet again
		log.Info("later")
		if got := w.get(); len(got) != 3 || !strings.Contains(got[2], "msg=later") {
			t.Fatalf("a line after a quiet interval waited: %q", got)
		}
	})
	t.Run("a warning is written at once, after the lines before it", func(t *testing.T) {
		var w writes
		log, flush, err := (&logFlags{format: "json", level: "info", flush: time.Hour}).logger(&w)
		if err != nil {
			t.Fatal(err)
		}
		defer flush()
		log.Info("started") // written at once: the first line in an hour
		log.With("component", "gateway").Info("flow")
		log.With("component", "gateway").Warn("backend down")
		got := w.get()
		if len(got) != 2 {
			t.Fatalf("writes %q, want two", got)
		}
		lines := strings.Split(strings.TrimSpace(got[1]), "\n")
		if len(lines) != 2 || !strings.Contains(lines[0], `"msg":"flow"`) || !strings.Contains(lines[1], `"msg":"backend down"`) {
			t.Fatalf("lines %q", lines)
		}
		log.Info("held")
		log.WithGroup("g").Error("e")
		if got := w.get(); len(got) != 3 || !strings.Contains(got[2], "held") {
			t.Fatalf("an error through a group waited, or not after the line before it: %q", got)
		}
	})
	t.Run("flush writes what is held", func(t *testing.T) {
		var w writes
		log, flush, err := (&logFlags{format: "text", level: "info", flush: time.Hour}).logger(&w)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("started")
		log.Info("last words")
		flush()
		if got := w.get(); len(got) != 2 || !strings.Contains(got[1], "last words") {
			t.Fatalf("writes %q", got)
		}
		flush()
		if got := w.get(); len(got) != 2 {
			t.Fatalf("an empty flush wrote: %q", got)
		}
	})
	t.Run("zero writes every line at once", func(t *testing.T) {
		var w writes
		log, _, err := (&logFlags{format: "text", level: "info"}).logger(&w)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("a")
		log.Info("b")
		if got := w.get(); len(got) != 2 {
			t.Fatalf("writes %q, want two", got)
		}
	})
	t.Run("negative", func(t *testing.T) {
		if _, _, err := (&logFlags{format: "text", level: "info", flush: -time.Second}).logger(&writes{}); err == nil || !strings.Contains(err.Error(), "-log-flush") {
			t.Fatalf("error %v", err)
		}
	})
}

func TestLogBufferBounded(t *testing.T) {
	var w writes
	b := newLogBuffer(&w, time.Hour)
	b.last = time.Now() // as after a write: what follows is held
	line := []byte(strings.Repeat("x", 1000) + "\n")
	for range 200 { // 200 KB through a 64 KiB buffer
		if n, err := b.Write(line); n != len(line) || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
	}
	got := w.get()
	if len(got) != 3 {
		t.Fatalf("%d writes of 200 lines, want 3 full buffers", len(got))
	}
	for _, g := range got {
		if len(g) > logBufferSize || len(g)%len(line) != 0 {
			t.Fatalf("a write of %d bytes: over the buffer or a line split", len(g))
		}
	}
	big := []byte(strings.Repeat("y", logBufferSize+1))
	b.Write(big)
	got = w.get()
	if len(got) != 5 || got[4] != string(big) {
		t.Fatalf("a line larger than the buffer: %d writes", len(got))
	}
	b.Flush()
	total := 0
	for _, g := range w.get() {
		total += len(g)
	}
	if total != 200*len(line)+len(big) {
		t.Fatalf("%d bytes written, want %d", total, 200*len(line)+len(big))
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"strings"
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
			log, err := lf.logger(&buf)
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

package main

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"
)

func TestQuicGoLine(t *testing.T) {
	upstream := &debug.Module{Path: "github.com/quic-go/quic-go", Version: "v0.65.0"}
	patched := &debug.Module{Path: "github.com/quic-go/quic-go", Version: "v0.65.0",
		Replace: &debug.Module{Path: "./third_party/quic-go", Version: "(devel)"}}
	other := &debug.Module{Path: "github.com/miekg/dns", Version: "v1.1.73"}
	for _, c := range []struct {
		name string
		deps []*debug.Module
		want string
	}{
		{"patched", []*debug.Module{other, patched}, "quic-go v0.65.0 with ztgate's patch (./third_party/quic-go)"},
		{"upstream", []*debug.Module{upstream}, "quic-go v0.65.0"},
		{"absent", []*debug.Module{other}, "quic-go not in the build information"},
		{"none", nil, "quic-go not in the build information"},
	} {
		if got := quicGoLine(c.deps); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// TestVersionNamesQuicGo: this very build is ztgate's, so it says the
// patched quic-go is in it.
func TestVersionNamesQuicGo(t *testing.T) {
	var out, errOut bytes.Buffer
	if rc := runVersion(nil, &out, &errOut); rc != 0 {
		t.Fatalf("exit %d: %s", rc, errOut.String())
	}
	if !strings.Contains(out.String(), "with ztgate's patch (./third_party/quic-go)") {
		t.Fatalf("version output does not name the patched quic-go:\n%s", out.String())
	}
}

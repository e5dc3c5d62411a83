package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if code, ok := parseFlags(fs, args, 0); !ok {
		return code
	}
	c := commit
	bi, ok := debug.ReadBuildInfo()
	if c == "unknown" && ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				c = s.Value
			}
		}
	}
	fmt.Fprintf(stdout, "ztgate %s\ncommit %s\n%s %s/%s\n", version, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if ok {
		fmt.Fprintln(stdout, quicGoLine(bi.Deps))
	}
	return 0
}

// quicGoLine names the quic-go the binary was built with, and whether it
// is the patched copy in third_party/ (third_party/README.md): what a bug
// report about the tunnel needs to know.
func quicGoLine(deps []*debug.Module) string {
	for _, d := range deps {
		if d.Path != "github.com/quic-go/quic-go" {
			continue
		}
		if d.Replace != nil {
			return fmt.Sprintf("quic-go %s with ztgate's patch (%s)", d.Version, d.Replace.Path)
		}
		return "quic-go " + d.Version
	}
	return "quic-go not in the build information"
}

// Command ztgate is the zero-trust virtual network gateway: one binary for
// the gateway, relay and agent roles and the tools around them.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// Set at build time with -ldflags "-X main.version=… -X main.commit=…".
var (
	version = "dev"
	commit  = "unknown"
)

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"gateway", "run the gateway: TUN + netstack + DNS + health checks + admin API", runGateway},
		{"relay", "run the relay: QUIC server for agents and gateways, central VIPs, tag routing", runRelay},
		{"agent", "run an agent: TUN routing the VIP pool into a QUIC tunnel, local DNS for the zone", runAgent},
		{"check", "validate a configuration file of any role", runCheck},
		{"status", "show services, VIPs, backend health and flows of a running gateway or relay", runStatus},
		{"reload", "make a running gateway reload its configuration file and print what changed", runReload},
		{"pki", "make a CA and the certificates of relays, gateways and agents", runPKI},
		{"version", "print version, commit and Go version", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: ztgate <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'ztgate <command> -h' for the flags of a command.")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "ztgate: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// parseFlags parses the flags of a subcommand that takes at most maxArgs
// arguments after them. It returns ok to go on, else the exit code: 0 after
// -h (the usage is the answer asked for), 2 for a flag it does not know, a
// bad value, or an argument too many. An argument too many is named:
// otherwise `ztgate gateway gw.toml` would run on the default file, and
// flags after an argument (`ztgate check gw.toml -v`) would go unread.
func parseFlags(fs *flag.FlagSet, args []string, maxArgs int) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > maxArgs {
		extra := fs.Arg(maxArgs)
		hint := ""
		switch {
		case strings.HasPrefix(extra, "-"):
			hint = ": flags go before arguments"
		case fs.Lookup("config") != nil && maxArgs == 0:
			hint = fmt.Sprintf(" (a configuration file is given with -config %s)", extra)
		}
		fmt.Fprintf(fs.Output(), "ztgate %s: unexpected argument %q%s\n", fs.Name(), extra, hint)
		return 2, false
	}
	return 0, true
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/ztgate/ztgate/conf"
)

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration `file` to validate (gateway, relay or agent)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ztgate check -config FILE\n\nValidates a configuration file and prints every error; exits 1 on error, 0 when valid.")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, 1); !ok {
		return code
	}
	if fs.NArg() == 1 {
		if *path != "" {
			fmt.Fprintf(stderr, "ztgate check: unexpected argument %q: the file is %s (-config)\n", fs.Arg(0), *path)
			return 2
		}
		*path = fs.Arg(0)
	}
	if *path == "" {
		fs.Usage()
		return 2
	}
	role, err := conf.Check(*path)
	if err != nil {
		printConfigErrors(stderr, err)
		var errs conf.Errors
		if errors.As(err, &errs) {
			fmt.Fprintf(stderr, "%s: %d error(s)\n", *path, len(errs))
		}
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid %s configuration\n", *path, role)
	return 0
}

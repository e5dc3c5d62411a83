package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
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
	role, own, err := conf.Check(*path)
	if err == nil {
		if cerr := checkOwnCertificate(own, role); cerr != nil {
			err = conf.Errors{own.CertError(cerr)}
		}
	}
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

// checkOwnCertificate loads the role's own TLS files as the role will at
// start, its role included (tunnel.CredentialsConfig.Role): `check` then
// refuses a certificate of another role, or the CA's, which conf cannot
// tell (it reads no ztgate identity). own is nil for a role that opens no
// tunnel.
func checkOwnCertificate(own *conf.OwnTLS, role conf.Role) error {
	if own == nil || own.Insecure && own.Cert == "" && own.Key == "" {
		return nil
	}
	_, err := tunnel.NewCredentials(tunnel.CredentialsConfig{
		CertFile: own.Cert, KeyFile: own.Key, CAFile: own.CA, Insecure: own.Insecure, Role: string(role),
	}, nil)
	return err
}

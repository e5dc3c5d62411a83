package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/ztgate/ztgate/conf"
	"github.com/ztgate/ztgate/tunnel"
)

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration `file` to validate (gateway, relay or agent)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ztgate check -config FILE\n\nValidates a configuration file and prints every error; exits 1 on error, 0 when valid\n(with a warning for what the role starts with but its peers refuse, such as a certificate\nits own CA file does not verify).")
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
	var warnings []error
	if err == nil {
		var cerr error
		if warnings, cerr = checkOwnCertificate(own, role); cerr != nil {
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
	// What the role only warns about at start is valid, but said: a
	// certificate that its own CA file does not verify (the wrong ca, or
	// a cert from another CA) starts, and then every peer that trusts only
	// that CA refuses it.
	for _, w := range warnings {
		fmt.Fprintln(stderr, w)
	}
	if len(warnings) > 0 {
		fmt.Fprintf(stdout, "%s: valid %s configuration, %d warning(s)\n", *path, role, len(warnings))
		return 0
	}
	fmt.Fprintf(stdout, "%s: valid %s configuration\n", *path, role)
	return 0
}

// checkOwnCertificate loads the role's own TLS files as the role will at
// start, its role included (tunnel.CredentialsConfig.Role): `check` then
// refuses a certificate of another role, or the CA's, which conf cannot
// tell (it reads no ztgate identity). own is nil for a role that opens no
// tunnel. What the load only warns about (the role starts with it) comes
// back as warnings, one line each.
func checkOwnCertificate(own *conf.OwnTLS, role conf.Role) (warnings []error, err error) {
	if own == nil {
		return nil, nil
	}
	creds, err := tunnel.NewCredentials(tunnel.CredentialsConfig{
		CertFile: own.Cert, KeyFile: own.Key, CAFile: own.CA, Insecure: own.Insecure, Role: string(role),
	}, nil)
	if err != nil {
		return nil, err
	}
	for _, w := range creds.Warnings() {
		warnings = append(warnings, checkWarning(w, own))
	}
	return warnings, nil
}

// checkWarning words a warning of the credentials' load for check, with
// what to do where it is known, at the key it is about.
func checkWarning(w *tunnel.CertWarning, own *conf.OwnTLS) error {
	switch w.Msg {
	case tunnel.CertNotVerified:
		return own.CertError(fmt.Errorf("warning: %s does not verify against the CA of %s.ca (%s): %v; peers that trust only that CA refuse it (%s): "+
			"issue the certificate from that CA (ztgate pki issue -dir with that CA's directory), or set %s.ca to the ca.crt of the CA that signed it",
			own.Cert, own.Section, own.CA, w.Err, w.Reason, own.Section))
	case tunnel.CertCAIsPeer:
		return own.FileError("ca", fmt.Errorf("warning: %s holds the certificate of %s, not a CA's: peers are verified against it alone, and every other certificate is refused (unknown_authority); set it to the ca.crt of `ztgate pki init`",
			w.CA, strings.Join(w.Peers, ", ")))
	}
	return own.CertError(errors.New("warning: " + w.Error()))
}

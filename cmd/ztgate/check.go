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
	role, err := conf.Check(*path)
	if err != nil {
		printConfigErrors(stderr, err)
		var errs conf.Errors
		if errors.As(err, &errs) {
			fmt.Fprintf(stderr, "%s: %d error(s)\n", *path, len(errs))
		}
		return 1
	}
	if key, err := checkOwnCertificate(*path, role); err != nil {
		fmt.Fprintf(stderr, "%s: %s: %v\n", *path, key, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid %s configuration\n", *path, role)
	return 0
}

// checkOwnCertificate loads the role's own TLS files as the role will at
// start, its role included (tunnel.CredentialsConfig.Role): `check` then
// refuses a certificate of another role, or the CA's, which conf cannot
// tell (it reads no ztgate identity). It returns the key the error is
// about and the error; none for a role that opens no tunnel.
func checkOwnCertificate(path string, role conf.Role) (string, error) {
	var cc tunnel.CredentialsConfig
	var key string
	switch role {
	case conf.RoleRelay:
		c, err := conf.LoadRelay(path)
		if err != nil {
			return "", err
		}
		cc, key = tunnel.CredentialsConfig{CertFile: c.Cert, KeyFile: c.Key, CAFile: c.CA, Insecure: c.Insecure, Role: tunnel.RoleRelay}, "relay.cert"
	case conf.RoleAgent:
		c, err := conf.LoadAgent(path)
		if err != nil {
			return "", err
		}
		t := c.Tunnel
		cc, key = tunnel.CredentialsConfig{CertFile: t.Cert, KeyFile: t.Key, CAFile: t.CA, Insecure: t.Insecure, Role: tunnel.RoleAgent}, "tunnel.cert"
	default:
		c, err := conf.LoadGateway(path)
		if err != nil {
			return "", err
		}
		t := c.Tunnel
		if t.Relay == "" && t.Listen == "" {
			return "", nil
		}
		cc, key = tunnel.CredentialsConfig{CertFile: t.Cert, KeyFile: t.Key, CAFile: t.CA, Insecure: t.Insecure, Role: tunnel.RoleGateway}, "tunnel.cert"
	}
	if cc.Insecure && cc.CertFile == "" && cc.KeyFile == "" {
		return "", nil
	}
	_, err := tunnel.NewCredentials(cc, nil)
	return key, err
}

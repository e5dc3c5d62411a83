package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/ztgate/ztgate/gateway"
)

func runReload(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := fs.String("api", "http://127.0.0.1:7780", "admin API `URL` of the gateway")
	asJSON := fs.Bool("json", false, "print the API's JSON answer instead of text")
	tokenFile := fs.String("token-file", "", "`file` with the API's bearer token")
	// A reload looks up new backends' names (up to 2 s each) and waits for
	// a change through the API in progress.
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for the gateway's answer")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ztgate reload [-api URL] [-token-file FILE] [-timeout D] [-json]\n\nMakes a running gateway reload its configuration file (POST /v1/reload) and prints what changed,\nor why nothing did: exits 1 when the configuration is invalid or the gateway failed, 0 when it reloaded.")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args, 0); !ok {
		return code
	}
	c, err := newAPIClient(*api, *tokenFile, *timeout)
	if err != nil {
		fmt.Fprintln(stderr, "ztgate reload:", err)
		return 1
	}
	code, body, err := c.do("POST", "/v1/reload")
	switch {
	case err != nil:
		printAPIError(stderr, "reload", *api, err)
		return 1
	case code == http.StatusUnauthorized:
		printAPIError(stderr, "reload", *api, errUnauthorized)
		return 1
	case code == http.StatusNotFound:
		fmt.Fprintf(stderr, "ztgate reload: %s has no /v1/reload: only a gateway reloads through its API (a relay or an agent reloads on SIGHUP)\n", *api)
		return 1
	case *asJSON:
		stdout.Write(body)
		if code != http.StatusOK {
			return 1
		}
		return 0
	case code == http.StatusOK:
		var d gateway.Diff
		if err := json.Unmarshal(body, &d); err != nil {
			fmt.Fprintf(stderr, "ztgate reload: %s does not look like a ztgate gateway: %v\n", *api, err)
			return 1
		}
		renderDiff(stdout, d)
		return 0
	}
	var answer struct {
		Errors []string `json:"errors"`
	}
	if json.Unmarshal(body, &answer) != nil || len(answer.Errors) == 0 {
		answer.Errors = []string{strings.TrimSpace(string(body))}
	}
	switch code {
	case http.StatusBadRequest:
		fmt.Fprintln(stderr, "ztgate reload: the configuration is invalid; the gateway keeps running the previous one. Fix it and reload:")
	case http.StatusConflict:
		fmt.Fprintln(stderr, "ztgate reload: the gateway has no configuration file to reload:")
	default:
		fmt.Fprintf(stderr, "ztgate reload: the gateway failed to reload (%d %s), not because of what the configuration says; it keeps running the previous one (its log has more):\n",
			code, http.StatusText(code))
	}
	for _, e := range answer.Errors {
		fmt.Fprintln(stderr, "  "+strings.ReplaceAll(e, "\n", "\n  "))
	}
	return 1
}

// renderDiff prints what a reload changed.
func renderDiff(w io.Writer, d gateway.Diff) {
	if d.Empty() && len(d.RestartRequired) == 0 {
		fmt.Fprintln(w, "reloaded: nothing changed")
		return
	}
	fmt.Fprintln(w, "reloaded")
	list := func(what string, names []string) {
		if len(names) > 0 {
			fmt.Fprintf(w, "  %s: %s\n", what, strings.Join(names, ", "))
		}
	}
	changed := make([]string, len(d.Changed))
	for i, c := range d.Changed {
		changed[i] = fmt.Sprintf("%s (%s)", c.Name, strings.Join(c.Fields, ", "))
	}
	list("added", d.Added)
	list("removed", d.Removed)
	list("changed", changed)
	if d.TenantsChanged {
		fmt.Fprintln(w, "  tenants changed")
	}
	if d.LimitsChanged {
		fmt.Fprintln(w, "  limits changed")
	}
	list("tunnel credentials from new files", d.TunnelFiles)
	list("not applied until the next start", d.RestartRequired)
}

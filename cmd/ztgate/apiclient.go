package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

// apiClient calls the admin API of a running gateway, relay or agent for the
// commands that talk to one (status, reload).
type apiClient struct {
	base  string // e.g. http://127.0.0.1:7780
	token string // "" : none
	http  *http.Client
}

// apiTimeout bounds a command's request to the API.
const apiTimeout = 5 * time.Second

// newAPIClient reads the bearer token from tokenFile ("" : no token).
// Requests time out after timeout. base is the API's URL; an [api] listen
// address as the configuration writes it (127.0.0.1:7780) is taken as its
// http:// URL.
func newAPIClient(base, tokenFile string, timeout time.Duration) (*apiClient, error) {
	u, err := apiURL(base)
	if err != nil {
		return nil, err
	}
	c := &apiClient{base: u, http: &http.Client{Timeout: timeout}}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("-token-file: %w", err)
		}
		c.token = strings.TrimSpace(string(b))
	}
	return c, nil
}

// apiURL checks -api: an http or https URL of a host, with no path beyond
// "/" (the commands add /v1/…), or a bare host:port.
func apiURL(base string) (string, error) {
	s := base
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err == nil && (u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || strings.Trim(u.Path, "/") != "" ||
		u.RawQuery != "" || u.Fragment != "" || u.User != nil) {
		err = errors.New("not the API's base URL")
	}
	if err != nil {
		return "", fmt.Errorf("-api %q: want the URL of the API, http://IP:PORT or https://HOST:PORT without a path, e.g. http://127.0.0.1:7780", base)
	}
	return u.Scheme + "://" + u.Host, nil
}

// do sends a request without a body and returns the answer's status and
// body (at most 64 MiB of it).
func (c *apiClient) do(method, path string) (int, []byte, error) {
	req, err := http.NewRequest(method, c.base+path, nil)
	if err != nil {
		return 0, nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, body, nil
}

// errUnauthorized is a 401 from the API, errNotFound a 404.
var (
	errUnauthorized = errors.New("401 Unauthorized")
	errNotFound     = errors.New("404 Not Found")
)

// printAPIError says why a command's request to the API at api failed, with
// the likely fix. A request that timed out may still have been carried
// out: the API did not answer in time, which says nothing about whether it
// runs.
func printAPIError(w io.Writer, cmd, api string, err error) {
	var nerr net.Error
	switch {
	case errors.As(err, &nerr) && nerr.Timeout():
		fmt.Fprintf(w, "ztgate %s: no answer from %s in time; what was asked may still have been done (look at its log or `ztgate status`): %v\n", cmd, api, err)
	case errors.Is(err, syscall.ECONNREFUSED):
		fmt.Fprintf(w, "ztgate %s: nothing answers at %s: is the gateway, relay or agent running, and is its [api] listen this address? (%v)\n", cmd, api, err)
	case errors.Is(err, errUnauthorized):
		fmt.Fprintf(w, "ztgate %s: %v: the API has a token_file; pass it with -token-file\n", cmd, err)
	default:
		fmt.Fprintf(w, "ztgate %s: %v\n", cmd, err)
	}
}

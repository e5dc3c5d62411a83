package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// apiClient calls the admin API of a running gateway, relay or agent for the
// commands that talk to one (status, reload).
type apiClient struct {
	base  string // e.g. http://127.0.0.1:7780
	token string // "" : none
	http  *http.Client
}

// newAPIClient reads the bearer token from tokenFile ("" : no token).
func newAPIClient(base, tokenFile string) (*apiClient, error) {
	c := &apiClient{base: strings.TrimRight(base, "/"), http: &http.Client{Timeout: 5 * time.Second}}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, err
		}
		c.token = strings.TrimSpace(string(b))
	}
	return c, nil
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
// the likely fix.
func printAPIError(w io.Writer, cmd, api string, err error) {
	var uerr interface{ Timeout() bool }
	switch {
	case errors.As(err, &uerr) || strings.Contains(err.Error(), "connection refused"):
		fmt.Fprintf(w, "ztgate %s: nothing answers at %s: is the gateway, relay or agent running, and is its [api] listen this address? (%v)\n", cmd, api, err)
	case errors.Is(err, errUnauthorized):
		fmt.Fprintf(w, "ztgate %s: %v: the API has a token_file; pass it with -token-file\n", cmd, err)
	default:
		fmt.Fprintf(w, "ztgate %s: %v\n", cmd, err)
	}
}

package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
)

// httpProbe checks that GET path answers 2xx, or exactly expect when set.
// It follows no redirect and uses no proxy from the environment.
type httpProbe struct {
	client *http.Client
	path   string
	expect int
	host   string // Host header; empty: the target address
}

// maxProbeBody bounds how much of a check's response body is read.
const maxProbeBody = 64 << 10

func newHTTPProbe(path string, expect int, host string) *httpProbe {
	p := &httpProbe{path: path, expect: expect, host: host} // virtual hosts see the backend's host name
	var d net.Dialer
	p.client = &http.Client{
		Transport: &http.Transport{
			DialContext:            d.DialContext,
			DisableKeepAlives:      true, // one connection per check, closed after it
			DisableCompression:     true,
			MaxResponseHeaderBytes: 64 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return p
}

func (p *httpProbe) probe(ctx context.Context, target netip.AddrPort) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target.String()+p.path, nil)
	if err != nil {
		return fmt.Errorf("http check: %w", err)
	}
	if p.host != "" {
		req.Host = p.host
	}
	req.Header.Set("User-Agent", "ztgate-health-check")
	resp, err := p.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = unwrapOp(ue.Err)
		}
		return fmt.Errorf("http check: %w", err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxProbeBody))
	resp.Body.Close()
	if p.expect != 0 && resp.StatusCode != p.expect {
		return fmt.Errorf("http check: GET %s: status %d, want %d", p.path, resp.StatusCode, p.expect)
	}
	if p.expect == 0 && (resp.StatusCode < 200 || resp.StatusCode > 299) {
		return fmt.Errorf("http check: GET %s: status %d, want 2xx", p.path, resp.StatusCode)
	}
	return nil
}

func (p *httpProbe) close() { p.client.CloseIdleConnections() }

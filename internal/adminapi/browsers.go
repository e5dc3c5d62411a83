package adminapi

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Browsers. The API listens on loopback by default and, by default,
// without a token, and a web page open on the same machine can make its
// browser send requests there:
//
//   - DNS rebinding: a page of attacker.example whose name then resolves to
//     127.0.0.1 is the same origin as the API for the browser, and reads
//     its answers (services, flows, identities). The browser sends the
//     page's name as Host: without a token the API answers only a Host
//     that is an IP address or localhost, except on /healthz and /metrics,
//     which are open to anyone who reaches the port, by any name. With a token it answers any Host
//     (a name in front of the API, a Prometheus scraping it by name): the
//     page does not know the token, so /v1/ and the profiles stay shut to
//     it.
//   - Cross-site requests: a page of any site can send a POST in a form's
//     encoding, or text/plain, without asking the API first (no CORS
//     preflight); it cannot read the answer, but the change is made. A
//     request other than GET, HEAD or OPTIONS is refused when the browser
//     says it comes from another origin (Sec-Fetch-Site, or an Origin that
//     is not the Host: http.CrossOriginProtection), and when it carries a
//     Content-Type other than application/json (the three a page may send
//     without a preflight among them). One without a Content-Type is
//     taken: a browser's cross-origin POST carries an Origin.
//
// The API's own clients (ztgate status and reload, curl, scripts) send no
// Origin and Host 127.0.0.1:PORT or localhost:PORT.

// GuardBrowsers refuses, before next sees them, the requests a web page
// could make a browser send to the API (see the top of the file): without
// a token (token == ""), any whose Host is not an IP address or localhost;
// and any that changes something (a method other than GET, HEAD or
// OPTIONS) from another origin or with a Content-Type other than
// application/json. It counts them as rejected (forbidden_host,
// cross_origin, unsupported_media_type) behind Handler.
func GuardBrowsers(token string, next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token == "" && !openPath(r.URL.Path) && !localHost(r.Host) {
			Reject(w, r, http.StatusForbidden, ForbiddenHost, fmt.Errorf(
				"host %q refused: without [api] token_file the API answers only a Host that is an IP address or localhost (a web page's DNS rebinding sends its own name); call it by address, or set a token", r.Host))
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			next.ServeHTTP(w, r)
			return
		}
		if err := cop.Check(r); err != nil {
			Reject(w, r, http.StatusForbidden, CrossOrigin, fmt.Errorf("%w: the API takes no request that changes something from a web page", err))
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "" {
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
				Reject(w, r, http.StatusUnsupportedMediaType, UnsupportedMediaType, fmt.Errorf(
					"Content-Type %q refused: send a body as application/json (curl -H 'Content-Type: application/json'), or no body and no Content-Type", ct))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// openPath reports whether path is one of the endpoints open to everyone
// who reaches the port, token or not: /healthz and /metrics. They take any
// Host, as a Prometheus or a load balancer that names the gateway sends
// it; a rebound page reads no more there than anyone on the network.
func openPath(path string) bool { return path == "/healthz" || path == "/metrics" }

// localHost says whether a Host header names the API in a way a web page
// of another site cannot: an IP address or localhost, with or without a
// port. An empty Host (HTTP/1.0) is no browser's.
func localHost(host string) bool {
	if host == "" {
		return true
	}
	h, _, err := net.SplitHostPort(host)
	if err != nil { // no port: localhost, 127.0.0.1, [::1]
		h = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	_, err = netip.ParseAddr(h)
	return err == nil
}

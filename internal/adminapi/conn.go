package adminapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"sync/atomic"
)

// Telling why a connection ended. net/http closes a connection whose
// client is too slow without telling anyone, and its ConnState hook alone
// cannot tell a server's timeout from a client that hung up. So the
// listener wraps each connection and watches three things:
//
//   - a Read or Write that fails with os.ErrDeadlineExceeded: only the
//     server's deadlines can cause it (ReadHeaderTimeout, ReadTimeout,
//     WriteTimeout, IdleTimeout), with one exception below;
//   - the connection's state (ConnState), whether bytes arrived since it
//     went idle, and whether the current request reached the handler and
//     is in it, which say which deadline it was:
//     in the handler, reading → ReadTimeout on the body;
//     idle with nothing read → IdleTimeout;
//     new, or idle with part of the next request read → ReadHeaderTimeout;
//     after the handler → net/http aborting its own background read
//     (abortPendingRead sets a deadline in the past), not a timeout;
//   - a Write before the request reached the handler: net/http answering
//     a request it could not parse (400, 431, 501, 505, 417) before it
//     hangs up.
//
// When the connection closes, the server counts what it saw.

// listener wraps the connections it accepts in conns.
type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c}, nil
}

// conn is an accepted connection and what the server needs to know of its
// history when it closes. Read runs on net/http's background reader too,
// hence the atomics.
type conn struct {
	net.Conn
	state     atomic.Int32 // the last http.ConnState
	gotBytes  atomic.Bool  // bytes read since the connection went idle
	handled   atomic.Bool  // the current request reached the handler
	inHandler atomic.Bool
	refused   atomic.Bool // net/http answered a request it could not parse
	cut       atomic.Int32
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.gotBytes.Store(true)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.readTimedOut()
	}
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	if !c.handled.Load() {
		c.refused.Store(true)
	}
	n, err := c.Conn.Write(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.cut.CompareAndSwap(int32(notCut), int32(writeTimeout))
	}
	return n, err
}

// CloseWrite half-closes the connection when the underlying one can:
// net/http sends its FIN this way before hanging up on a request it
// refused (a 413, say), so that the client reads the answer instead of
// a reset.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// readTimedOut records which deadline a read ran into (see the top of the
// file).
func (c *conn) readTimedOut() {
	reason := notCut
	switch st := http.ConnState(c.state.Load()); {
	case c.inHandler.Load():
		reason = readTimeout
	case st == http.StateIdle && !c.gotBytes.Load():
		reason = idleTimeout
	case st == http.StateNew, st == http.StateIdle, !c.handled.Load():
		reason = headerTimeout
	}
	if reason != notCut {
		c.cut.CompareAndSwap(int32(notCut), int32(reason))
	}
}

// connState is http.Server.ConnState: it follows the connections and
// counts, when one closes, the timeout that closed it or the request
// net/http refused on it.
func (m *metrics) connState(nc net.Conn, st http.ConnState) {
	c, ok := nc.(*conn)
	if !ok {
		return
	}
	switch st {
	case http.StateIdle:
		c.gotBytes.Store(false)
		c.handled.Store(false)
	case http.StateClosed:
		if k := cut(c.cut.Load()); k != notCut {
			m.closed[k].Inc()
		}
		if c.refused.Load() {
			m.reject(MalformedRequest)
		}
	}
	c.state.Store(int32(st))
}

// connKey is the context key of a request's connection.
type connKey struct{}

// connContext is http.Server.ConnContext: it gives the handler wrapper
// (inHandler) the connection.
func connContext(ctx context.Context, nc net.Conn) context.Context {
	if c, ok := nc.(*conn); ok {
		return context.WithValue(ctx, connKey{}, c)
	}
	return ctx
}

// inHandler marks the request's connection while next serves it.
func inHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(*conn); ok {
			c.handled.Store(true)
			c.inHandler.Store(true)
			defer c.inHandler.Store(false)
		}
		next.ServeHTTP(w, r)
	})
}

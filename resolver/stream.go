package resolver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// Bounds of the pause after a failed Accept that may heal (no file
// descriptors, a connection aborted before it was accepted).
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// ServeStream answers DNS over TCP (RFC 7766) on the connections l accepts,
// one goroutine per connection, at most MaxTCPConns at once and
// MaxTCPConnsPerClient of one client address; a connection is
// closed after TCPIdleTimeout without a query and when a query or an answer
// takes longer than TCPReadTimeout. It blocks until Shutdown (then returns
// nil, having closed l) or until Accept fails for good. Called after
// Shutdown, it closes l and returns ErrServerClosed.
func (s *Server) ServeStream(l net.Listener) error {
	if !s.acquire(l) {
		_ = l.Close() // as after Shutdown: the listener was handed over
		return ErrServerClosed
	}
	defer s.release(l)
	s.startProbing()
	delay := time.Duration(0)
	for {
		c, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			if !retryAccept(err) {
				return fmt.Errorf("resolver: accept: %w", err)
			}
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			select {
			case <-time.After(delay):
			case <-s.ctx.Done():
				return nil
			}
			continue
		}
		delay = 0
		client, ok := s.acquireTCP(c)
		if !ok {
			_ = c.Close()
			continue
		}
		go s.serveConn(c, client)
	}
}

// retryAccept reports whether an Accept error may heal.
func retryAccept(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() ||
		errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED)
}

// acquireTCP registers a connection unless the server is closed, serves
// MaxTCPConns already, or MaxTCPConnsPerClient of its client. It returns
// the client address the connection is counted under: the connection is
// served and let go under it, since a netstack connection's RemoteAddr
// tells nothing once the peer has reset it.
func (s *Server) acquireTCP(c net.Conn) (client netip.Addr, ok bool) {
	client = addrPortOf(c.RemoteAddr()).Addr().Unmap()
	s.mu.Lock()
	reason := numDropReasons
	switch {
	case s.tcp >= s.cfg.MaxTCPConns:
		reason = dropTCPLimit
	case s.tcpOf[client] >= s.cfg.MaxTCPConnsPerClient:
		reason = dropTCPClientLimit
	default:
		s.tcp++
		s.tcpOf[client]++
	}
	s.mu.Unlock()
	if reason != numDropReasons {
		s.m.drop(reason)
		return client, false
	}
	if !s.acquire(c) {
		s.releaseTCP(client, nil)
		return client, false
	}
	return client, true
}

// releaseTCP ends what acquireTCP registered for a connection of client.
func (s *Server) releaseTCP(client netip.Addr, c net.Conn) {
	s.mu.Lock()
	s.tcp--
	if s.tcpOf[client]--; s.tcpOf[client] <= 0 {
		delete(s.tcpOf, client)
	}
	s.mu.Unlock()
	if c != nil {
		s.release(c)
	}
}

// serveConn answers the queries of one TCP connection of client (as
// acquireTCP counted it) in order.
func (s *Server) serveConn(c net.Conn, client netip.Addr) {
	defer s.releaseTCP(client, c)
	defer c.Close()
	w := s.newStreamWorker()
	var buf []byte
	frame := make([]byte, 0, 512)
	send := func(b []byte) error {
		frame = binary.BigEndian.AppendUint16(frame[:0], uint16(len(b)))
		frame = append(frame, b...)
		if err := c.SetWriteDeadline(time.Now().Add(s.cfg.TCPReadTimeout)); err != nil {
			return err
		}
		_, err := c.Write(frame)
		return err
	}
	for {
		raw, err := s.readFrame(c, &buf)
		if err != nil {
			return // EOF, idle or read timeout, or Shutdown
		}
		out, fwd := s.handle(w, raw, client, true)
		switch {
		case out != nil:
			err = send(out)
		case fwd:
			s.forward(raw, client, true, send)
		}
		if err != nil {
			s.m.drop(dropWrite)
			return
		}
	}
}

// readFrame reads one length-prefixed message: the length within the idle
// timeout, the message within the read timeout.
// It grows *buf to the largest message seen.
func (s *Server) readFrame(c net.Conn, buf *[]byte) ([]byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(s.cfg.TCPIdleTimeout)); err != nil {
		return nil, err
	}
	var length [2]byte
	if _, err := io.ReadFull(c, length[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(length[:]))
	if cap(*buf) < n {
		*buf = make([]byte, n)
	}
	if err := c.SetReadDeadline(time.Now().Add(s.cfg.TCPReadTimeout)); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c, (*buf)[:n]); err != nil {
		return nil, err
	}
	return (*buf)[:n], nil
}

// newStreamWorker returns a worker for a TCP connection: TCP queries are
// rare, so it shares nothing and caches nothing, and its reply buffer
// starts small (packing grows it when an answer needs more).
func (s *Server) newStreamWorker() *worker {
	return &worker{key: make([]byte, 0, maxNameLen+5), out: make([]byte, streamReplyBuf)}
}

// streamReplyBuf is the initial reply buffer of a TCP connection.
const streamReplyBuf = 4096

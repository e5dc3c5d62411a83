package resolver

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// ServePacket answers the DNS queries arriving on pc with Config.Readers
// goroutines. It blocks until Shutdown (then returns nil, having closed pc)
// or until reading pc fails (then it closes pc and returns the error).
// Called after Shutdown, it closes pc and returns ErrServerClosed.
func (s *Server) ServePacket(pc net.PacketConn) error {
	if !s.acquire(pc) {
		_ = pc.Close() // as after Shutdown: the conn was handed over
		return ErrServerClosed
	}
	defer s.release(pc)
	s.startProbing()
	read := func() error { return s.readPackets(pc) }
	if c, ok := pc.(*net.UDPConn); ok {
		read = func() error { return s.readBatches(c) }
	}
	errs := make([]error, max(s.cfg.Readers, 1))
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			errs[i] = read()
			_ = pc.Close() // stops the other readers
		})
	}
	wg.Wait()
	if s.ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("resolver: read: %w", cmp.Or(errs...))
}

// readPackets is one reader's loop on a PacketConn other than a
// *net.UDPConn (a netstack's), one datagram at a time.
func (s *Server) readPackets(pc net.PacketConn) error {
	w := s.newWorker()
	buf := make([]byte, maxMsgSize)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		client := addrPortOf(addr).Addr().Unmap()
		out, fwd := s.handle(w, buf[:n], client, false)
		switch {
		case out != nil:
			if _, err := pc.WriteTo(out, addr); err != nil {
				s.m.drop(dropWrite)
			}
		case fwd:
			s.forwardAsync(buf[:n], client, func(b []byte) error {
				_, err := pc.WriteTo(b, addr)
				return err
			})
		}
	}
}

// forwardAsync forwards a UDP query on its own goroutine, so that readers
// never wait for upstreams; at most MaxForwards run at once, and
// MaxForwardsPerClient of one client address; beyond that queries are
// dropped (the client will retry).
func (s *Server) forwardAsync(raw []byte, client netip.Addr, send func([]byte) error) {
	select {
	case s.fwdSem <- struct{}{}:
	default:
		s.m.drop(dropBusy)
		return
	}
	if !s.takeForward(client) {
		<-s.fwdSem
		s.m.drop(dropClientBusy)
		return
	}
	if !s.acquire(nil) {
		s.giveForward(client)
		<-s.fwdSem
		return
	}
	query := append([]byte(nil), raw...)
	go func() {
		defer s.release(nil)
		defer func() { <-s.fwdSem }()
		defer s.giveForward(client)
		s.forward(query, client, false, send)
	}()
}

// takeForward counts a forward of client, or reports false when client
// has MaxForwardsPerClient in flight already.
func (s *Server) takeForward(client netip.Addr) bool {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	if s.fwdOf[client] >= s.cfg.MaxForwardsPerClient {
		return false
	}
	s.fwdOf[client]++
	return true
}

// giveForward ends a forward takeForward counted.
func (s *Server) giveForward(client netip.Addr) {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	if s.fwdOf[client]--; s.fwdOf[client] <= 0 {
		delete(s.fwdOf, client)
	}
}

// addrPortOf returns the address and port of a UDP or TCP address.
func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String()) // invalid for other kinds: no view
	return ap
}

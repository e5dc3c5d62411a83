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
// never wait for upstreams; at most MaxForwards run at once, beyond that
// queries are dropped (the client will retry).
func (s *Server) forwardAsync(raw []byte, client netip.Addr, send func([]byte) error) {
	select {
	case s.fwdSem <- struct{}{}:
	default:
		s.m.drop(dropBusy)
		return
	}
	if !s.acquire(nil) {
		<-s.fwdSem
		return
	}
	query := append([]byte(nil), raw...)
	go func() {
		defer s.release(nil)
		defer func() { <-s.fwdSem }()
		s.forward(query, client, false, send)
	}()
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

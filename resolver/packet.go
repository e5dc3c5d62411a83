package resolver

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// endpoint is where a datagram came from: the address to answer and, for
// conns other than *net.UDPConn, the net.Addr to write to.
type endpoint struct {
	ap   netip.AddrPort
	addr net.Addr
}

// packetIO reads and writes datagrams of one PacketConn.
type packetIO struct {
	read  func(buf []byte) (int, endpoint, error)
	write func(b []byte, to endpoint) error
}

// ioFor returns the way to read pc: a *net.UDPConn is read and written with
// netip addresses, which allocates nothing per datagram.
func ioFor(pc net.PacketConn) packetIO {
	if c, ok := pc.(*net.UDPConn); ok {
		return packetIO{
			read: func(buf []byte) (int, endpoint, error) {
				n, ap, err := c.ReadFromUDPAddrPort(buf)
				return n, endpoint{ap: ap}, err
			},
			write: func(b []byte, to endpoint) error {
				_, err := c.WriteToUDPAddrPort(b, to.ap)
				return err
			},
		}
	}
	return packetIO{
		read: func(buf []byte) (int, endpoint, error) {
			n, addr, err := pc.ReadFrom(buf)
			return n, endpoint{ap: addrPortOf(addr), addr: addr}, err
		},
		write: func(b []byte, to endpoint) error {
			_, err := pc.WriteTo(b, to.addr)
			return err
		},
	}
}

// ServePacket answers the DNS queries arriving on pc with Config.Readers
// goroutines. It blocks until Shutdown (then returns nil, having closed pc)
// or until reading pc fails (then it closes pc and returns the error).
func (s *Server) ServePacket(pc net.PacketConn) error {
	if !s.acquire(pc) {
		return ErrServerClosed
	}
	defer s.release(pc)
	pio := ioFor(pc)
	errs := make([]error, max(s.cfg.Readers, 1))
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			errs[i] = s.readPackets(pio)
			_ = pc.Close() // stops the other readers
		})
	}
	wg.Wait()
	if s.ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("resolver: read: %w", cmp.Or(errs...))
}

// readPackets is one reader's loop.
func (s *Server) readPackets(pio packetIO) error {
	w := s.newWorker()
	buf := make([]byte, maxMsgSize)
	for {
		n, from, err := pio.read(buf)
		if err != nil {
			return err
		}
		out, fwd := s.handle(w, buf[:n], from.ap.Addr().Unmap(), false)
		switch {
		case out != nil:
			if pio.write(out, from) != nil {
				s.m.drop(dropWrite)
			}
		case fwd:
			s.forwardAsync(buf[:n], func(b []byte) error { return pio.write(b, from) })
		}
	}
}

// forwardAsync forwards a UDP query on its own goroutine, so that readers
// never wait for upstreams; at most MaxForwards run at once, beyond that
// queries are dropped (the client will retry).
func (s *Server) forwardAsync(raw []byte, send func([]byte) error) {
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
		s.forward(query, false, send)
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

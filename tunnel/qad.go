package tunnel

import (
	"net/netip"
	"time"
)

// announceAddress sends the client its observed address (QAD, 0x01) at
// connect and whenever it changes, which ReceiveDatagram notices and the
// keepalive-period poll catches otherwise. An IPv6 address has no QAD
// encoding: it reaches ztna-v2 clients in the welcome only. The goroutine
// ends with the session; the listener waits for it.
func (l *Listener) announceAddress(s *Session) {
	defer l.wg.Done()
	tick := time.NewTicker(KeepAlivePeriod)
	defer tick.Stop()
	var sent netip.AddrPort
	var buf [QADLen]byte
	for {
		if cur := s.RemoteAddr(); cur != sent {
			sent = cur
			if qad, ok := AppendQAD(buf[:0], cur); ok {
				_ = s.SendDatagram(qad)
			}
		}
		select {
		case <-s.Done():
			return
		case <-tick.C:
			s.noticeRemote()
		case <-s.remoteChange:
		}
	}
}

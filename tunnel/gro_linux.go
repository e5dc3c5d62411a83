package tunnel

import (
	"net"

	"golang.org/x/sys/unix"
)

// receiveOffload reports whether c's socket takes runs of datagrams whole
// (UDP GRO), which ztgate's quic-go turns on where the kernel has it
// (third_party/README.md). The listener's log line says so.
func receiveOffload(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	on := 0
	var gerr error
	if err := rc.Control(func(fd uintptr) { on, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO) }); err != nil {
		return false
	}
	return gerr == nil && on == 1
}

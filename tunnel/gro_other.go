//go:build !linux

package tunnel

import "net"

// receiveOffload reports whether c's socket takes runs of datagrams whole
// (UDP GRO): Linux only.
func receiveOffload(*net.UDPConn) bool { return false }

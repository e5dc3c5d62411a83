// Package udpseg holds the Linux UDP segmentation offloads that more than
// one role uses: UDP_SEGMENT (GSO) on send, a run of equal-sized datagrams
// given to the kernel as one buffer, and UDP_GRO on receive, such a run
// read back as one buffer with its segment size in a control message.
// Datagrams keep their boundaries either way: a receiver without GRO sees
// the same datagrams, in order, as if each had been sent on its own.
package udpseg

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Limits of one GSO send.
const (
	// MaxSegments is Linux's UDP_MAX_SEGMENTS before 6.x raised it.
	MaxSegments = 64
	// MaxBytes bounds a run's payload: it travels as one IP datagram
	// until it is segmented.
	MaxBytes = 65000
)

// CmsgSpace is the room one UDP_SEGMENT control message takes;
// GROCmsgSpace the room of the UDP_GRO one a read returns (an int).
var (
	CmsgSpace    = unix.CmsgSpace(2)
	GROCmsgSpace = unix.CmsgSpace(4)
)

// GSO reports whether the kernel takes UDP_SEGMENT (Linux 4.18+).
var GSO = sync.OnceValue(func() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	_, err = unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	return err == nil
})

// PutSegmentSize writes a UDP_SEGMENT control message for datagrams of
// size bytes into b, which has at least CmsgSpace bytes, and returns that
// part of b.
func PutSegmentSize(b []byte, size int) []byte {
	b = b[:CmsgSpace]
	clear(b)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], uint16(size))
	return b
}

// EnableGRO turns UDP_GRO on for c's socket (Linux 5.0+) and reports
// whether it is on. Reads then need room for a run (up to 64 KiB) and for
// a control message (GROSize).
func EnableGRO(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil {
		return false
	}
	return serr == nil
}

// GROEnabled reports whether c's socket has UDP_GRO on (set by EnableGRO,
// or by ztgate's quic-go on its own sockets).
func GROEnabled(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	on, gerr := 0, error(nil)
	if err := rc.Control(func(fd uintptr) { on, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO) }); err != nil {
		return false
	}
	return gerr == nil && on == 1
}

// GROSize returns the segment size of a read's run of datagrams from its
// control messages, or 0 when the read holds one datagram. It allocates
// nothing.
func GROSize(oob []byte) int {
	hdr := unix.CmsgLen(0)
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO {
			switch data := oob[hdr:l]; {
			case len(data) >= 4:
				return int(binary.NativeEndian.Uint32(data))
			case len(data) >= 2:
				return int(binary.NativeEndian.Uint16(data))
			}
			return 0
		}
		oob = oob[min(unix.CmsgSpace(l-hdr), len(oob)):]
	}
	return 0
}

// Segments returns how many datagrams a run of n bytes cut at size holds.
func Segments(n, size int) int {
	if size <= 0 || n <= size {
		return 1
	}
	return (n + size - 1) / size
}

// Refused reports whether a send's error means that the path does not take
// GSO (EINVAL: a segment larger than the route's MTU; EIO: a path that
// cannot segment, such as IPsec): the sender should send the datagrams one
// by one from then on.
func Refused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EIO)
}

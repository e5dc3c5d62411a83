package tunnel

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"unicode/utf8"
)

// DatagramType is the first byte of a DATAGRAM payload. Control types sit
// below 0x40 so that they never collide with an IPv4 (0x4X) or IPv6 (0x6X)
// packet, which travels unwrapped.
type DatagramType uint8

// Datagram types. The values are the bytes on the wire, except TypeUnknown
// (no such byte is sent) and TypeIP (Kind's answer for every byte ≥ 0x40).
const (
	TypeUnknown             DatagramType = 0x00 // empty or unassigned first byte
	TypeQAD                 DatagramType = 0x01 // observed address: IPv4 + port
	TypeAgentRegistration   DatagramType = 0x10 // agent asks for a service
	TypeGatewayRegistration DatagramType = 0x11 // the original's "connector" offers a service
	TypeAck                 DatagramType = 0x12 // registration accepted
	TypeNack                DatagramType = 0x13 // registration refused, with a Status
	TypeRouted              DatagramType = 0x2F // agent → relay: service id + IP packet
	TypeTagged              DatagramType = 0x30 // v2, relay → gateway: tag + service id + IP packet
	TypeTagReturn           DatagramType = 0x31 // v2, gateway → relay: tag + IP packet
	TypeIP                  DatagramType = 0x40 // the whole datagram is an IP packet
)

// String names the type for logs.
func (t DatagramType) String() string {
	switch t {
	case TypeQAD:
		return "qad"
	case TypeAgentRegistration:
		return "agent_registration"
	case TypeGatewayRegistration:
		return "gateway_registration"
	case TypeAck:
		return "ack"
	case TypeNack:
		return "nack"
	case TypeRouted:
		return "routed"
	case TypeTagged:
		return "tagged"
	case TypeTagReturn:
		return "tag_return"
	case TypeIP:
		return "ip"
	}
	return "unknown"
}

// Status is the status byte of a registration ACK or NACK.
type Status uint8

// Registration statuses.
const (
	StatusOK      Status = 0x00 // the only status of an ACK
	StatusInvalid Status = 0x01 // NACK: malformed request (e.g. a service id that is not UTF-8)
	StatusDenied  Status = 0x02 // NACK: the identity may not register for the service
)

// Layout constants.
const (
	// MaxServiceIDLen is the longest service id: its length is one byte.
	MaxServiceIDLen = 255
	// QADLen is the exact size of an observed-address datagram.
	QADLen = 7
	// TagReturnOverhead is what a TypeTagReturn header adds to a packet.
	TagReturnOverhead = 5
)

// Errors of the datagram codec. Parse* functions return them unwrapped so
// that the packet path allocates nothing even when it drops a datagram.
var (
	// ErrTruncated: the datagram ends inside its header or service id.
	ErrTruncated = errors.New("tunnel: truncated datagram")
	// ErrInvalidServiceID: a service id is empty or not UTF-8. A receiver of
	// a registration answers it with a NACK StatusInvalid.
	ErrInvalidServiceID = errors.New("tunnel: invalid service id")
	// ErrUnknownType: the first byte is not a type of the protocol version,
	// or not the type the specific Parse* function decodes.
	ErrUnknownType = errors.New("tunnel: unknown datagram type")
	// ErrTooLong: a service id over MaxServiceIDLen bytes (sender side), or
	// bytes after the end of a fixed-layout message (receiver side).
	ErrTooLong = errors.New("tunnel: datagram field too long")
	// ErrBadStatus: an ACK whose status is not StatusOK, or a NACK whose
	// status is StatusOK.
	ErrBadStatus = errors.New("tunnel: bad registration status")
)

// Fixed parts of the headers that carry a service id: TypeRouted is type
// and length; TypeTagged is type, 4-byte tag and length.
const (
	routedFixed = 2
	taggedFixed = 6
)

// Bounds of the framing for ztgate's services, whose names are DNS labels
// (docs/protocol.md, "Sizing").
const (
	// MaxServiceName is the longest service name ztgate configures.
	MaxServiceName = 63
	// MaxRoutedOverhead is the largest TypeRouted header of a ztgate service.
	MaxRoutedOverhead = routedFixed + MaxServiceName
	// MaxTaggedOverhead is the largest TypeTagged header of a ztgate service.
	MaxTaggedOverhead = taggedFixed + MaxServiceName
)

// RoutedOverhead is what a TypeRouted header adds to a packet for service.
func RoutedOverhead(service string) int { return routedFixed + len(service) }

// TaggedOverhead is what a TypeTagged header adds to a packet for service.
func TaggedOverhead(service string) int { return taggedFixed + len(service) }

// Kind classifies a datagram by its first byte without validating the rest.
// It knows every type of every version: whether TypeTagged and
// TypeTagReturn are allowed is decided by Parse.
func Kind(b []byte) DatagramType {
	if len(b) == 0 {
		return TypeUnknown
	}
	switch t := DatagramType(b[0]); t {
	case TypeQAD, TypeAgentRegistration, TypeGatewayRegistration, TypeAck, TypeNack,
		TypeRouted, TypeTagged, TypeTagReturn:
		return t
	}
	if b[0] >= byte(TypeIP) {
		return TypeIP
	}
	return TypeUnknown
}

// checkServiceID validates a service id a sender is about to encode.
func checkServiceID(id string, allowEmpty bool) error {
	switch {
	case len(id) > MaxServiceIDLen:
		return ErrTooLong
	case len(id) == 0 && !allowEmpty, !utf8.ValidString(id):
		return ErrInvalidServiceID
	}
	return nil
}

// splitServiceID reads a length-prefixed service id from the start of b.
// The id's capacity is capped so that appending to it cannot overwrite rest.
func splitServiceID(b []byte, allowEmpty bool) (id, rest []byte, err error) {
	if len(b) == 0 {
		return nil, nil, ErrTruncated
	}
	n := 1 + int(b[0])
	if len(b) < n {
		return nil, nil, ErrTruncated
	}
	id = b[1:n:n]
	if (len(id) == 0 && !allowEmpty) || !utf8.Valid(id) {
		return nil, nil, ErrInvalidServiceID
	}
	return id, b[n:], nil
}

// isType reports whether b starts with typ.
func isType(b []byte, typ DatagramType) bool { return len(b) > 0 && b[0] == byte(typ) }

// AppendQAD appends an observed-address datagram for addr. The layout has
// room for IPv4 only: a v4-mapped IPv6 address is unmapped, any other
// address is not encodable and ok is false (dst is returned unchanged).
func AppendQAD(dst []byte, addr netip.AddrPort) (_ []byte, ok bool) {
	ip := addr.Addr().Unmap()
	if !ip.Is4() {
		return dst, false
	}
	a := ip.As4()
	dst = append(dst, byte(TypeQAD), a[0], a[1], a[2], a[3])
	return binary.BigEndian.AppendUint16(dst, addr.Port()), true
}

// ParseQAD decodes an observed-address datagram.
func ParseQAD(b []byte) (netip.AddrPort, error) {
	switch {
	case !isType(b, TypeQAD):
		return netip.AddrPort{}, ErrUnknownType
	case len(b) < QADLen:
		return netip.AddrPort{}, ErrTruncated
	case len(b) > QADLen:
		return netip.AddrPort{}, ErrTooLong
	}
	ip := netip.AddrFrom4([4]byte(b[1:5]))
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b[5:7])), nil
}

// AppendRegistration appends a registration of role for service; role is
// TypeAgentRegistration or TypeGatewayRegistration.
func AppendRegistration(dst []byte, role DatagramType, service string) ([]byte, error) {
	if role != TypeAgentRegistration && role != TypeGatewayRegistration {
		return dst, ErrUnknownType
	}
	if err := checkServiceID(service, false); err != nil {
		return dst, err
	}
	dst = append(dst, byte(role), byte(len(service)))
	return append(dst, service...), nil
}

// ParseRegistration decodes an agent or gateway registration and returns
// its type and service id.
func ParseRegistration(b []byte) (role DatagramType, service []byte, err error) {
	if !isType(b, TypeAgentRegistration) && !isType(b, TypeGatewayRegistration) {
		return TypeUnknown, nil, ErrUnknownType
	}
	service, rest, err := splitServiceID(b[1:], false)
	if err == nil && len(rest) > 0 {
		err = ErrTooLong
	}
	if err != nil {
		return TypeUnknown, nil, err
	}
	return DatagramType(b[0]), service, nil
}

// AppendAck appends a registration ACK for service.
func AppendAck(dst []byte, service string) ([]byte, error) {
	if err := checkServiceID(service, false); err != nil {
		return dst, err
	}
	dst = append(dst, byte(TypeAck), byte(StatusOK), byte(len(service)))
	return append(dst, service...), nil
}

// ParseAck decodes a registration ACK and returns its service id.
func ParseAck(b []byte) (service []byte, err error) {
	status, service, err := parseReply(b, TypeAck)
	if err == nil && status != StatusOK {
		return nil, ErrBadStatus
	}
	return service, err
}

// AppendNack appends a registration NACK. The service id may be empty: a
// request whose id was invalid is answered with an empty one, as the
// original relay does.
func AppendNack(dst []byte, status Status, service string) ([]byte, error) {
	if status == StatusOK {
		return dst, ErrBadStatus
	}
	if err := checkServiceID(service, true); err != nil {
		return dst, err
	}
	dst = append(dst, byte(TypeNack), byte(status), byte(len(service)))
	return append(dst, service...), nil
}

// ParseNack decodes a registration NACK. Its service id may be empty. A
// status other than StatusInvalid and StatusDenied is returned as is: the
// caller treats it as a refusal.
func ParseNack(b []byte) (Status, []byte, error) {
	status, service, err := parseReply(b, TypeNack)
	if err == nil && status == StatusOK {
		return 0, nil, ErrBadStatus
	}
	return status, service, err
}

// parseReply decodes the common layout of ACK and NACK: type, status,
// length-prefixed service id, nothing after it.
func parseReply(b []byte, typ DatagramType) (Status, []byte, error) {
	if !isType(b, typ) {
		return 0, nil, ErrUnknownType
	}
	if len(b) < 2 {
		return 0, nil, ErrTruncated
	}
	service, rest, err := splitServiceID(b[2:], typ == TypeNack)
	if err == nil && len(rest) > 0 {
		err = ErrTooLong
	}
	if err != nil {
		return 0, nil, err
	}
	return Status(b[1]), service, nil
}

// AppendRouted appends a service-routed packet (agent → relay).
func AppendRouted(dst []byte, service string, packet []byte) ([]byte, error) {
	if err := checkServiceID(service, false); err != nil {
		return dst, err
	}
	dst = append(dst, byte(TypeRouted), byte(len(service)))
	dst = append(dst, service...)
	return append(dst, packet...), nil
}

// ParseRouted decodes a service-routed packet.
func ParseRouted(b []byte) (service, packet []byte, err error) {
	if !isType(b, TypeRouted) {
		return nil, nil, ErrUnknownType
	}
	return splitServiceID(b[1:], false)
}

// AppendTagged appends a tagged packet (v2, relay → gateway).
func AppendTagged(dst []byte, tag uint32, service string, packet []byte) ([]byte, error) {
	if err := checkServiceID(service, false); err != nil {
		return dst, err
	}
	dst = binary.BigEndian.AppendUint32(append(dst, byte(TypeTagged)), tag)
	dst = append(dst, byte(len(service)))
	dst = append(dst, service...)
	return append(dst, packet...), nil
}

// ParseTagged decodes a tagged packet (v2, relay → gateway).
func ParseTagged(b []byte) (tag uint32, service, packet []byte, err error) {
	tag, rest, err := splitTag(b, TypeTagged)
	if err != nil {
		return 0, nil, nil, err
	}
	service, packet, err = splitServiceID(rest, false)
	if err != nil {
		return 0, nil, nil, err
	}
	return tag, service, packet, nil
}

// AppendTagReturn appends a tag-return packet (v2, gateway → relay).
func AppendTagReturn(dst []byte, tag uint32, packet []byte) []byte {
	dst = binary.BigEndian.AppendUint32(append(dst, byte(TypeTagReturn)), tag)
	return append(dst, packet...)
}

// ParseTagReturn decodes a tag-return packet (v2, gateway → relay).
func ParseTagReturn(b []byte) (tag uint32, packet []byte, err error) {
	return splitTag(b, TypeTagReturn)
}

// splitTag reads the type byte and the big-endian tag of a v2 packet.
func splitTag(b []byte, typ DatagramType) (uint32, []byte, error) {
	switch {
	case !isType(b, typ):
		return 0, nil, ErrUnknownType
	case len(b) < TagReturnOverhead:
		return 0, nil, ErrTruncated
	}
	return binary.BigEndian.Uint32(b[1:5]), b[5:], nil
}

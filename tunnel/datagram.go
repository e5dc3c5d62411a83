package tunnel

import "net/netip"

// Datagram is a decoded DATAGRAM payload. Its byte-slice fields alias the
// parsed buffer: they stay valid only as long as the caller keeps that
// buffer unchanged. Which fields are set depends on Type:
//
//	TypeQAD                     Addr
//	TypeAgentRegistration,
//	TypeGatewayRegistration     Service
//	TypeAck, TypeNack           Status, Service (may be empty for a NACK)
//	TypeRouted                  Service, Packet
//	TypeTagged                  Tag, Service, Packet
//	TypeTagReturn               Tag, Packet
//	TypeIP                      Packet (the whole datagram)
type Datagram struct {
	Type    DatagramType
	Status  Status
	Tag     uint32
	Service []byte
	Packet  []byte
	Addr    netip.AddrPort
}

// Parse decodes one DATAGRAM payload of protocol version v without
// copying. TypeTagged and TypeTagReturn exist only from V2 on; in V1 they
// are ErrUnknownType, like every unassigned byte below 0x40. Every byte
// from 0x40 up is an IP packet whose content the codec does not inspect.
func Parse(v Version, b []byte) (Datagram, error) {
	d := Datagram{Type: Kind(b)}
	var err error
	switch d.Type {
	case TypeIP:
		d.Packet = b
	case TypeQAD:
		d.Addr, err = ParseQAD(b)
	case TypeAgentRegistration, TypeGatewayRegistration:
		_, d.Service, err = ParseRegistration(b)
	case TypeAck:
		d.Service, err = ParseAck(b)
	case TypeNack:
		d.Status, d.Service, err = ParseNack(b)
	case TypeRouted:
		d.Service, d.Packet, err = ParseRouted(b)
	case TypeTagged, TypeTagReturn:
		d, err = parseV2(v, d.Type, b)
	default:
		err = ErrUnknownType
		if len(b) == 0 {
			err = ErrTruncated
		}
	}
	if err != nil {
		return Datagram{Type: d.Type}, err
	}
	return d, nil
}

// parseV2 decodes the tagged types, which V1 does not know.
func parseV2(v Version, typ DatagramType, b []byte) (Datagram, error) {
	d := Datagram{Type: typ}
	if v < V2 {
		return d, ErrUnknownType
	}
	var err error
	if typ == TypeTagged {
		d.Tag, d.Service, d.Packet, err = ParseTagged(b)
	} else {
		d.Tag, d.Packet, err = ParseTagReturn(b)
	}
	return d, err
}

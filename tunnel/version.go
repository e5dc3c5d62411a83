package tunnel

// ALPN protocol names. A connection's negotiated protocol selects the
// datagram layout (see Parse) and whether a control stream exists.
const (
	// ALPNV1 is the original system's protocol, kept byte-exact so that its
	// agents keep working.
	ALPNV1 = "ztna-v1"
	// ALPNV2 is ztgate's own protocol: v1 plus tagged relay↔gateway
	// datagrams and the JSON control stream.
	ALPNV2 = "ztna-v2"
)

// Version is a tunnel protocol version, negotiated by ALPN.
type Version uint8

// Protocol versions.
const (
	V1 Version = 1 // ALPN ztna-v1
	V2 Version = 2 // ALPN ztna-v2
)

// ALPN returns the ALPN protocol name of v, or "" for an unknown version.
func (v Version) ALPN() string {
	switch v {
	case V1:
		return ALPNV1
	case V2:
		return ALPNV2
	}
	return ""
}

// String returns the ALPN name of v, or "unknown".
func (v Version) String() string {
	if s := v.ALPN(); s != "" {
		return s
	}
	return "unknown"
}

// VersionFromALPN maps a negotiated ALPN protocol name to its version.
func VersionFromALPN(proto string) (Version, bool) {
	switch proto {
	case ALPNV1:
		return V1, true
	case ALPNV2:
		return V2, true
	}
	return 0, false
}

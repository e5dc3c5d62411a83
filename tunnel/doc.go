// Package tunnel carries ztgate's traffic between agents, relays and
// gateways over QUIC. It is the only package that imports quic-go.
//
// The lower layer, which needs no live connection, is:
//
//   - wire.go, datagram.go: the DATAGRAM codec of ALPN ztna-v1 (byte-exact
//     with the original agents) and ztna-v2 (tagged relay↔gateway packets).
//     Append* functions append to a caller's buffer and Parse* functions
//     return sub-slices of their input, so the packet path allocates
//     nothing.
//   - frame.go, frame_error.go: length-prefixed JSON messages of the
//     ztna-v2 control stream and the error message answering a bad one.
//   - identity.go: the ztgate identity carried by a certificate, from a URI
//     SAN ztna://<tenant>/<role>/<name> or the original system's DNS SANs.
//   - pki.go: a small ECDSA P-256 certificate authority for operators and
//     tests.
//   - creds.go, verify.go, autherror.go: TLS 1.3 configurations with mutual
//     authentication whose certificate and CA can be reloaded without
//     dropping live sessions, and the reasons a peer is refused.
package tunnel

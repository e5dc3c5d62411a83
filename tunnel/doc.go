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
//
// The session layer on quic-go:
//
//   - listen.go, dial.go, session.go: Listen/Accept and Dial give a Session
//     (datagrams both ways, the v2 control stream, identity, version);
//     hello.go runs the hello/welcome exchange and refusals; qad.go sends
//     the observed address; sizing.go learns the largest datagram;
//     quicconfig.go holds the timers and limits; metrics.go the
//     ztgate_tunnel_* collectors.
//   - messages.go, signal.go, control.go: the control messages (signaling
//     and liveness of the direct path in signal.go) and their decoding.
//   - redial.go: a client that reconnects with jittered backoff.
//   - DialConfig.ExpectIdentity: a server known by its ztgate identity
//     rather than a name, for gateways reached by address.
//   - flow.go: the 5-tuple of a carried packet and a bounded flow table
//     with idle expiry, on which the relay and the agent keep each flow on
//     the path it started on; candidates.go: the host addresses offered
//     for the direct path.
//   - tunneltest: a lossy UDP proxy for component tests.
package tunnel

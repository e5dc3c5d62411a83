// Package agent is ztgate's agent role: a TUN device that routes the VIP
// pool into a QUIC tunnel to a relay or a gateway, and answers DNS for the
// service zone at the gateway address itself from the directory the server
// pushes, so names work without a round trip. Directory changes (new
// services, VIPs, health) apply without a restart, and the tunnel
// reconnects on its own. New flows to a service the directory marks down
// are refused locally (RST, ICMP unreachable, no echo reply).
//
// Attached to a relay, the agent also tries a direct path to the gateway
// of each service it has traffic for (direct.go, directpath.go;
// docs/direct-path.md): signaling through the relay, then a direct QUIC
// session with the same mutual TLS, used both ways and watched by pings;
// the relay takes over within a second when it fails. The router keeps
// each flow on the path it started on (router.go), so paths coming and
// going break no flow that is not on a path that died.
package agent

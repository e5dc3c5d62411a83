// Package agent is ztgate's agent role: a TUN device that routes the VIP
// pool into a QUIC tunnel to a relay or a gateway, and answers DNS for the
// service zone at the gateway address itself from the directory the server
// pushes, so names work without a round trip. Directory changes (new
// services, VIPs, health) apply without a restart, and the tunnel
// reconnects on its own.
package agent

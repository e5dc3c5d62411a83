// Package relay is ztgate's relay role: the QUIC server that agents and
// gateways connect to with mutual TLS.
//
// It keeps the registry of gateways and the services they register (several
// gateways may serve one service), allocates the services' VIPs centrally
// with the catalog pool (persisted in its state directory), pushes to each
// agent the directory of the services its tenant may reach, and routes the
// agents' packets to gateways by tag (docs/protocol.md, "Tags"), so that
// return traffic reaches only the agent session that opened the flow.
//
// Each agent session keeps a flow table (flows.go): a gateway is chosen for
// new flows only, among the healthy, undrained gateways of the service, so
// that existing flows stay where they started when gateways come, go, are
// drained or report the service down. Gateways are pinged (liveness.go):
// one that stops answering is closed within seconds, not at QUIC's idle
// timeout. The relay carries the signaling of the direct path between an
// agent and a gateway (signal.go, signalmsg.go; docs/direct-path.md), each
// session bound at offer time to its two parties.
//
// Files: relay.go (lifecycle), admit.go (who a session is), serve.go (the
// goroutines of a session), registry.go (registrations, health, VIPs),
// tags.go (the tag table and the choice of a gateway), flows.go (the flow
// tables), route.go (the datagram path), legacy.go (ztna-v1 agents),
// liveness.go, janitor.go, drain.go, signal.go, signalmsg.go, directory.go,
// api.go, apigateways.go, metrics.go.
package relay

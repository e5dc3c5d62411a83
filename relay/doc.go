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
// Files: relay.go (lifecycle), admit.go (who a session is), serve.go (the
// goroutines of a session), registry.go (registrations, health, VIPs),
// tags.go (the tag table and the choice of a gateway), route.go (the
// datagram path), legacy.go (ztna-v1 agents), directory.go, api.go,
// metrics.go.
package relay

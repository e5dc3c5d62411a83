// Package e2e holds component tests that wire the roles together in one
// process: a relay, a gateway and agents over loopback QUIC, with
// throwaway certificates. It has no code of its own; its tests are the only
// place besides cmd where the roles meet (DESIGN.md §2, enforced by
// internal/archtest).
package e2e

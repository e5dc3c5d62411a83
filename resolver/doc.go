// Package resolver is ztgate's built-in DNS: an authoritative server for the
// service zone (ztna.internal. by default) and the reverse zones of the VIP
// pools, answered per client from a Directory the roles implement, with
// forwarding of every other name to configured upstreams.
//
// It also holds the DNS client the roles use for backend discovery
// (Client.LookupHost, Client.LookupSRV) and the probe used by health checks of
// DNS backends (ProbeQuery, CheckProbeReply). It is the only package of ztgate
// that imports github.com/miekg/dns; no miekg type appears in its API.
//
// The UDP path is built for throughput: several readers per socket, a
// hand-written parser for the common query shape and, per reader, a bounded
// cache of packed answers keyed by (View, lower-case name, type, class, EDNS)
// so that a repeated question costs one copy and a few byte patches.
package resolver

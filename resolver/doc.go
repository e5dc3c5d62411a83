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
// # Answers
//
//   - <service>.<zone> A and AAAA (when the Entry has VIP6) → the VIPs;
//     _<port name or number>._<tcp|udp>.<service>.<zone> SRV → <service>.<zone>
//     and the VIP port, with the addresses as additional records;
//     _<tcp|udp>.<service>.<zone> is an empty non-terminal (NODATA).
//   - The apex has SOA and NS ns.<zone>, whose address is Config.NSAddr; the
//     label "ns" is therefore never a service.
//   - The reverse zones of Pool and Pool6 answer PTR from View.Reverse. Their
//     apex is the first label boundary at or below the prefix length (a /22
//     pool is four /24 zones, a /26 one zone per address); names between an
//     apex and an address are empty non-terminals; an unknown address is
//     NXDOMAIN.
//   - Unknown names are NXDOMAIN, existing names without the type NODATA;
//     both carry the SOA (TTL and minimum both Config.TTL). Zone answers have
//     AA set. Names are matched without regard to ASCII case and the question
//     is echoed as asked.
//   - ANY gets the synthesised HINFO "RFC8482" of RFC 8482; zone transfers
//     and classes other than IN (and ANY) are REFUSED.
//   - EDNS: the reply carries OPT when the query did, with the DO bit copied;
//     the client's UDP size (at least 512) is honoured up to
//     Config.MaxUDPSize; a larger answer is truncated by whole records,
//     with TC set when answer or authority records are left out (additional
//     ones, an SRV target's addresses, go without TC: RFC 2181 §9). EDNS
//     versions other than 0 get BADVERS, whatever the opcode.
//   - Other opcodes get NOTIMP, question counts other than one and messages
//     that do not parse FORMERR: a header, with an OPT record when the
//     query had one that can be read (RFC 6891 §6.1.1); messages shorter
//     than a header and responses are dropped and counted.
//   - A nil View refuses every name. Other names go to the upstreams in
//     order, with a fresh random ID, each within ForwardTimeout; the first
//     answer that is for the question asked and is not SERVFAIL or REFUSED
//     is relayed with the client's ID, its question as asked (letter case
//     included, whatever case the upstream echoed) and RA set, else
//     SERVFAIL. A truncated upstream answer is asked again over TCP when
//     the client came over TCP; one larger than a UDP client accepts is
//     cut to its header, question and OPT record, with TC set.
//     Each upstream gets a loop probe at the first Serve call and every 30
//     s (loopprobe.go); one whose probe comes back to this server is
//     skipped until a probe is answered, and when every upstream loops
//     other names get SERVFAIL at once.
//
// # Performance
//
// Each reader of a *net.UDPConn reads and writes in batches (recvmmsg and
// sendmmsg on Linux). A hand-written parser reads the common query shape,
// and each reader keeps a bounded cache of packed answers keyed by (View,
// lower-case name, type, class, EDNS and DO): Views are immutable
// snapshots, so a repeated question costs a map lookup, a copy and a few
// byte patches (ID, RD, CD, the question's case), without allocating.
package resolver

package resolver

import (
	"fmt"
	"net/netip"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztgate/ztgate/internal/promreg"
)

// dropReason says why a query got no reply at all: the reason label of
// ztgate_dns_dropped_total.
type dropReason uint8

// Reasons for ztgate_dns_dropped_total.
const (
	dropMalformed      dropReason = iota // shorter than a DNS header
	dropResponse                         // QR set: a response sent to the server
	dropBusy                             // too many forwarded queries in flight
	dropClientBusy                       // too many forwarded queries of its client in flight
	dropTCPLimit                         // a TCP connection over MaxTCPConns
	dropTCPClientLimit                   // a TCP connection over MaxTCPConnsPerClient of its client
	dropWrite                            // the reply could not be sent
	numDropReasons
)

var dropNames = [numDropReasons]string{"malformed", "response", "busy", "client_busy", "tcp_limit", "tcp_client_limit", "write"}

// String returns the reason as a metric label.
func (r dropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return "unknown"
}

// Reasons for ztgate_dns_forward_errors_total.
const (
	fwdTimeout  = "timeout"   // no valid answer in time
	fwdNetwork  = "network"   // dial, write or read failed
	fwdRcode    = "rcode"     // the upstream answered SERVFAIL or REFUSED
	fwdBadReply = "bad_reply" // the answer was not for our question
	fwdLoop     = "loop"      // the query came back to this server (forward.go, inflight), or a loop probe did (loopprobe.go)
)

// rcodeSlots covers the rcodes that fit in a header and BADVERS; higher ones
// are counted as "other".
const rcodeSlots = dns.RcodeBadVers + 1

// metrics are the counters of one Server. Counters used per query are
// resolved once so that counting costs one atomic add.
type metrics struct {
	queries   [rcodeSlots]prometheus.Counter
	other     prometheus.Counter
	dropped   [numDropReasons]prometheus.Counter
	malformed prometheus.Counter
	fwdErrors *prometheus.CounterVec
	looping   *prometheus.GaugeVec
	cache     *prometheus.CounterVec
	hits      prometheus.Counter
	misses    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_dns_queries_total",
		Help: "DNS replies sent, by response code.",
	}, []string{"rcode"})
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_dns_dropped_total",
		Help: "DNS queries that got no reply, by reason.",
	}, []string{"reason"})
	malformed := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztgate_dns_malformed_total",
		Help: "DNS queries that could not be parsed (answered FORMERR, or dropped when even the header was missing).",
	})
	fwdErrors := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_dns_forward_errors_total",
		Help: "Failed attempts to forward a query to an upstream, by upstream and reason.",
	}, []string{"upstream", "reason"})
	looping := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ztgate_dns_upstream_looping",
		Help: "1 while a loop probe sent to the upstream came back to this server (no query is forwarded to it), else 0.",
	}, []string{"upstream"})
	cache := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztgate_dns_cache_lookups_total",
		Help: "Lookups in the cache of packed answers, by result (hit, miss).",
	}, []string{"result"})
	m := &metrics{}
	var err error
	if queries, err = register(reg, queries); err != nil {
		return nil, err
	}
	if dropped, err = register(reg, dropped); err != nil {
		return nil, err
	}
	if malformed, err = register(reg, malformed); err != nil {
		return nil, err
	}
	if fwdErrors, err = register(reg, fwdErrors); err != nil {
		return nil, err
	}
	if looping, err = register(reg, looping); err != nil {
		return nil, err
	}
	if cache, err = register(reg, cache); err != nil {
		return nil, err
	}
	for rc := range m.queries {
		if name, ok := dns.RcodeToString[rc]; ok {
			m.queries[rc] = queries.WithLabelValues(name)
		}
	}
	m.queries[dns.RcodeBadVers] = queries.WithLabelValues("BADVERS")
	m.other = queries.WithLabelValues("other")
	for r := range m.dropped {
		m.dropped[r] = dropped.WithLabelValues(dropReason(r).String())
	}
	m.malformed, m.fwdErrors, m.looping, m.cache = malformed, fwdErrors, looping, cache
	m.hits, m.misses = cache.WithLabelValues("hit"), cache.WithLabelValues("miss")
	return m, nil
}

// register registers c, or returns the collector already registered under
// its name so that a Server rebuilt on reload keeps counting in the same
// series (see promreg.Register).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := promreg.Register(reg, c)
	if err != nil {
		return c, fmt.Errorf("resolver: %w", err)
	}
	return c, nil
}

func (m *metrics) reply(rcode int) {
	if rcode >= 0 && rcode < rcodeSlots && m.queries[rcode] != nil {
		m.queries[rcode].Inc()
		return
	}
	m.other.Inc()
}

// drop counts a query that got no reply; a flood of them costs one atomic
// add each.
func (m *metrics) drop(r dropReason) { m.dropped[r].Inc() }

func (m *metrics) forwardError(upstream netip.AddrPort, reason string) {
	m.fwdErrors.WithLabelValues(upstream.String(), reason).Inc()
}

// upstreamLooping sets ztgate_dns_upstream_looping of upstream.
func (m *metrics) upstreamLooping(upstream netip.AddrPort, looping bool) {
	v := 0.0
	if looping {
		v = 1
	}
	m.looping.WithLabelValues(upstream.String()).Set(v)
}

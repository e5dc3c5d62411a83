package resolver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztgate/ztgate/internal/listenaddr"

	"golang.org/x/time/rate"
)

// ErrServerClosed is returned by ServePacket and ServeStream when they are
// called after Shutdown.
var ErrServerClosed = errors.New("resolver: server closed")

// Server is an authoritative DNS server for the service zone and the pools'
// reverse zones, with forwarding. One Server may serve several packet conns
// and listeners at once.
type Server struct {
	cfg  Config
	dir  Directory
	log  *slog.Logger
	zone atomic.Pointer[zone] // replaced whole by SetPools
	m    *metrics
	ra   uint16 // flagRA when upstreams are configured

	ctx      context.Context // canceled by Shutdown; bounds forwarding
	cancel   context.CancelFunc
	fwdSem   chan struct{} // slots of forwarded UDP queries
	fwdMu    sync.Mutex
	fwdOf    map[netip.Addr]int // forwarded UDP queries in flight by client address; none at 0
	inflight inflight           // the queries forwarded, awaiting answers
	chainID  [chainIDLen]byte   // this server's part of the forwarding chain's entries (chain.go)
	// upstreamAddrs are the upstreams' addresses that name them: a query
	// from one of them that this server has in flight is a loop
	// (inflight). A loopback address names no one: every local process
	// sends from it, clients and a local upstream alike; nor does an
	// address of this host (a resolver on the router's LAN address, which
	// the router's own clients send from too).
	upstreamAddrs []netip.Addr
	loopWarn      *rate.Limiter // warnings of queries that came back
	bufs          sync.Pool     // *[]byte of maxMsgSize for forwarding
	workers       sync.Pool     // *worker for serveRaw

	// Loop probes (loopprobe.go): those in flight; the upstreams a probe
	// came back from, by index in cfg.Upstreams, and how many they are;
	// the time between two rounds while one loops and while none does
	// (0: no probes), set by New, which tests change before the first
	// Serve call that starts them.
	probes     loopProbes
	looping    []atomic.Bool
	nLooping   atomic.Int32
	probeEvery time.Duration
	probeQuiet time.Duration
	probeOnce  sync.Once

	mu      sync.Mutex
	closed  bool
	active  int                    // Serve* calls and goroutines not yet done
	idle    chan struct{}          // closed when closed and active is 0
	closers map[io.Closer]struct{} // conns and listeners to close on Shutdown
	tcp     int                    // open TCP connections
	tcpOf   map[netip.Addr]int     // open TCP connections by client address; none at 0
}

// New returns a Server answering from dir. cfg's zero fields take their
// defaults; log may be nil.
func New(cfg Config, dir Directory, log *slog.Logger) (*Server, error) {
	if dir == nil {
		return nil, errors.New("resolver: nil Directory")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("resolver: config: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:    cfg,
		dir:    dir,
		log:    log,
		m:      m,
		fwdSem: make(chan struct{}, cfg.MaxForwards),
		fwdOf:  map[netip.Addr]int{},
		// One warning a minute: a loop is a standing misconfiguration.
		loopWarn: rate.NewLimiter(rate.Every(time.Minute), 1),
		idle:     make(chan struct{}),
		closers:  map[io.Closer]struct{}{},
		chainID:  newChainID(),
		tcpOf:    map[netip.Addr]int{},
	}
	s.zone.Store(newZone(&cfg, uint32(time.Now().Unix())))
	if len(cfg.Upstreams) > 0 {
		s.ra = flagRA
		s.probeEvery, s.probeQuiet = loopProbeInterval, loopProbeQuietInterval
	}
	s.looping = make([]atomic.Bool, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		m.upstreamLooping(u, false)
	}
	local := hostAddrs()
	for _, u := range cfg.Upstreams {
		if a := u.Addr().Unmap(); !a.IsLoopback() && !slices.Contains(local, a) {
			s.upstreamAddrs = append(s.upstreamAddrs, a)
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.bufs.New = func() any { b := make([]byte, maxMsgSize); return &b }
	s.workers.New = func() any { return s.newWorker() }
	return s, nil
}

// Shutdown stops every Serve* call: it closes the conns and listeners they
// serve and every open TCP connection, aborts forwarded queries, and waits
// until their goroutines are done or ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.cancel()
		for c := range s.closers {
			_ = c.Close() // unblocks the reader; its error is expected
		}
		if s.active == 0 {
			close(s.idle)
		}
	}
	s.mu.Unlock()
	select {
	case <-s.idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("resolver: shutdown: %w", ctx.Err())
	}
}

// acquire registers a goroutine (and c, to be closed on Shutdown, unless
// nil). It reports false once the server is closed.
func (s *Server) acquire(c io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.active++
	if c != nil {
		s.closers[c] = struct{}{}
	}
	return true
}

// release ends what acquire registered.
func (s *Server) release(c io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c != nil {
		delete(s.closers, c)
	}
	s.active--
	if s.closed && s.active == 0 {
		close(s.idle)
	}
}

// SetPools makes pool and pool6 the reverse zones the server answers for
// (an agent's pool follows what its server pushes); the zero Prefix: none.
// Queries in flight finish with the zones they started with.
func (s *Server) SetPools(pool, pool6 netip.Prefix) {
	s.mu.Lock() // one SetPools at a time: each zone's serial is the last one's + 1
	defer s.mu.Unlock()
	cfg := s.cfg
	cfg.Pool, cfg.Pool6 = pool, pool6
	s.zone.Store(newZone(&cfg, s.zone.Load().serial+1))
}

// hostAddrs returns the addresses of this host's interfaces (tests
// replace it).
var hostAddrs = listenaddr.HostAddrs

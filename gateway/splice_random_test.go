package gateway

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// TestSpliceRandomized runs a crowd of flows at once through one gateway,
// each of a pattern drawn from a seeded generator (randPatterns: echoes,
// a backend that pushes to a slow reader, half-closes from either side,
// aborts from either side, a backend that stops reading, one-byte writes
// both ways, request and answer after pauses), and checks that every byte
// arrives intact and in order, that every flow ends as its pattern says
// (EOF, or a reset where one side aborted) within randBudget, that the
// gateway's flows go back to 0 and that no goroutine is left. The seed is
// logged; ZTGATE_SPLICE_SEED replays one.
func TestSpliceRandomized(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) }) // after the gateway's Close
	seed := uint64(1)
	if s := os.Getenv(randSeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", randSeedEnv, err)
		}
	}
	t.Logf("seed %d (%s=%d replays it)", seed, randSeedEnv, seed)
	r := rand.New(rand.NewPCG(seed, 0))
	block := make([]byte, randBlock)
	for i := range block {
		block[i] = byte(r.Uint32())
	}
	deadline := time.Now().Add(randBudget)
	logs := &flowLog{lines: map[netip.AddrPort]string{}}
	flows := make([]*spliceFlow, spliceFlowCount)
	count := map[string]int{}
	for i := range flows {
		f := &spliceFlow{i: i, block: block, seed: r.Uint64(), deadline: deadline, backend: make(chan error, 1), logs: logs}
		f.pat = &randPatterns[r.IntN(len(randPatterns))]
		f.start = time.Duration(r.Int64N(int64(randStartSpread)))
		f.upAt, f.downAt = r.IntN(len(block)), r.IntN(len(block))
		f.pat.gen(r, f)
		flows[i] = f
		count[f.pat.name]++
	}
	t.Logf("flows: %v", count)

	port := serveTCP(t, func(c net.Conn) {
		c.SetDeadline(deadline)
		var hdr [4]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return // a flow whose client never got to send its header: it reports
		}
		i := binary.BigEndian.Uint32(hdr[:])
		if int(i) >= len(flows) {
			return
		}
		f := flows[i]
		f.backend <- f.pat.backend(f, c.(*net.TCPConn))
	})
	h := newHarnessWith(t, spliceConfig(port, "1h"), func(g *Gateway) {
		g.log = slog.New(logs)
		g.dial = smallSendBuffers()
	})

	var wg sync.WaitGroup
	for _, f := range flows {
		wg.Go(func() {
			time.Sleep(f.start)
			began := time.Now()
			f.clientErr = f.run(h)
			f.took = time.Since(began)
			select {
			case f.backendErr = <-f.backend:
			case <-time.After(time.Until(deadline) + time.Second):
				f.backendErr = errors.New("the backend never ended (or never saw the flow)")
			}
		})
	}
	wg.Wait()
	slow := slices.SortedFunc(slices.Values(flows), func(a, b *spliceFlow) int { return cmp.Compare(b.took, a.took) })
	for _, f := range slow[:3] {
		t.Logf("slowest: flow %d took %v: %s", f.i, f.took.Round(time.Millisecond), f)
	}
	failed := 0
	for _, f := range flows {
		if f.clientErr != nil || f.backendErr != nil {
			failed++
			t.Errorf("flow %d, %s: client: %v; backend: %v", f.i, f, f.clientErr, f.backendErr)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d flows failed (seed %d); %s", failed, len(flows), seed, stackCounters(h))
	}
	end := time.Now().Add(5 * time.Second)
	for h.gw.flows.len() != 0 {
		if time.Now().After(end) {
			t.Fatalf("%d flows still in the gateway 5 s after their clients and backends ended", h.gw.flows.len())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stackCounters tells a machine too slow for the test (packets dropped,
// retransmissions, handshakes refused) from a splice that lost its way.
func stackCounters(h *harness) string {
	st := h.gw.ns.Stats()
	s := fmt.Sprintf("the gateway's stack retransmitted %d segments and sent %d resets", st.TCPRetransmits, st.TCPResetsSent)
	for r, c := range h.gw.m.droppedBy {
		if v := testutil.ToFloat64(c); v > 0 {
			s += fmt.Sprintf("; %v packets dropped (reason %d)", v, r)
		}
	}
	for k, c := range h.gw.m.refusedBy {
		if v := testutil.ToFloat64(c); v > 0 {
			s += fmt.Sprintf("; %v flows refused (%s)", v, k.reason)
		}
	}
	return s
}

const (
	randSeedEnv     = "ZTGATE_SPLICE_SEED"
	spliceFlowCount = 300
	randStartSpread = time.Second      // flows start within it
	randBudget      = 60 * time.Second // every flow ends within it, or it hangs
	randBlock       = 1<<20 + 13       // the random bytes every flow's payload is cut from
	randQuiet       = time.Second      // a side waiting for a reset pokes the other after so long without a byte
)

// smallSendBuffers dials every other backend connection with a send
// buffer of 64 KiB (32 KiB asked, which the kernel doubles), the others as
// the gateway does. On loopback the kernel grows a socket's send buffer to
// 4 MiB: a backend that stops reading would have to leave that much unread
// before the splice's write to it waits (finishWrite); the stall pattern
// sends up to 1.5 MiB.
func smallSendBuffers() func(ctx context.Context, network, addr string) (net.Conn, error) {
	var n atomic.Int64
	small := net.Dialer{KeepAlive: -1, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 32<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	plain := net.Dialer{KeepAlive: -1}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if n.Add(1)%2 == 0 {
			return small.DialContext(ctx, network, addr)
		}
		return plain.DialContext(ctx, network, addr)
	}
}

// spliceFlow is one flow of TestSpliceRandomized: its pattern and the
// parameters drawn for it, and what each side found.
type spliceFlow struct {
	i      int
	pat    *randPattern
	seed   uint64        // of the sides' own generators (write and read sizes, pauses)
	start  time.Duration // after the test's start
	block  []byte
	upAt   int // where in block the client's payload starts
	downAt int // where the backend's does

	up, down int             // payload sizes (or where a side cuts the flow)
	gap      time.Duration   // a pause of the pattern
	stream   bool            // the side that does not abort streams meanwhile
	small    bool            // the stalled backend shrinks its receive buffer
	pauses   []randPause     // the slow reader's
	rounds   []randRound     // request and answer sizes
	hold     []time.Duration // the backend's pause before each answer

	deadline              time.Time // the test's: a flow not over by then hangs
	backend               chan error
	clientErr, backendErr error
	local                 netip.AddrPort // the client's address
	took                  time.Duration
	logs                  *flowLog
}

type randPause struct {
	at int // after this many bytes read
	d  time.Duration
}

type randRound struct{ req, ans int }

func (f *spliceFlow) String() string {
	return fmt.Sprintf("%s up %d down %d gap %v stream %v small %v pauses %v rounds %v; the gateway's flow line:%s",
		f.pat.name, f.up, f.down, f.gap, f.stream, f.small, f.pauses, f.rounds, f.logs.line(f.local))
}

// flowLog keeps the gateway's flow lines by client address.
type flowLog struct {
	mu    sync.Mutex
	lines map[netip.AddrPort]string
}

func (l *flowLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *flowLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *flowLog) WithGroup(string) slog.Handler            { return l }
func (l *flowLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "flow" {
		return nil
	}
	var client netip.AddrPort
	line := ""
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "client" {
			client, _ = a.Value.Any().(netip.AddrPort)
		}
		if a.Key == "bytes_up" || a.Key == "bytes_down" || a.Key == "duration" || a.Key == "reason" {
			line += " " + a.String()
		}
		return true
	})
	l.mu.Lock()
	l.lines[client] = line
	l.mu.Unlock()
	return nil
}

func (l *flowLog) line(client netip.AddrPort) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.lines[client]; ok {
		return s
	}
	return " none (the flow never started, or has not ended)"
}

func (f *spliceFlow) upData() *stream   { return &stream{block: f.block, pos: f.upAt} }
func (f *spliceFlow) downData() *stream { return &stream{block: f.block, pos: f.downAt} }

// rng is a generator of a side of the flow (1: client, 2: backend, more
// for their goroutines).
func (f *spliceFlow) rng(side uint64) *rand.Rand { return rand.New(rand.NewPCG(f.seed, side)) }

// run is the client's side: it opens the flow, sends its header (the
// flow's index, which tells the backend what to do) and plays the pattern.
func (f *spliceFlow) run(h *harness) error {
	ctx, cancel := context.WithDeadline(context.Background(), f.deadline)
	defer cancel()
	c, err := h.client.DialTCP(ctx, acmeClient, netip.MustParseAddrPort("10.100.0.12:9"))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	f.local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	c.SetDeadline(f.deadline)
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(f.i))
	if _, err := c.Write(hdr[:]); err != nil {
		return fmt.Errorf("header: %w", err)
	}
	if err := f.pat.client(f, c); err != nil {
		if isTimeout(err) {
			return fmt.Errorf("hung: %w (%s)", err, spliceState(h, f.local))
		}
		return err
	}
	return nil
}

// spliceState describes the gateway's side of the flow from client.
func spliceState(h *harness, client netip.AddrPort) string {
	fs := h.gw.flows.list(func(f *flow) bool { return f.client == client })
	if len(fs) != 1 {
		return "the gateway has no such flow"
	}
	f := fs[0]
	s := fmt.Sprintf("the gateway moved %d bytes up, %d down, the last %v ago", f.up.Load(), f.down.Load(), f.idleFor(h.gw.now()))
	if t := f.splice.Load(); t != nil {
		s += fmt.Sprintf("; splice state %#x, upBusy %v, downBusy %v, waiting %v, disarmed %v",
			t.state.Load(), t.upBusy.Load(), t.downBusy.Load(), t.waiting.Load(), t.disarmed.Load())
	}
	return s
}

// randPattern is a way for a flow to go: gen draws its parameters, client
// and backend play it (the header already sent and read) and say what
// went wrong.
type randPattern struct {
	name    string
	gen     func(r *rand.Rand, f *spliceFlow)
	client  func(f *spliceFlow, c net.Conn) error
	backend func(f *spliceFlow, c *net.TCPConn) error
}

var randPatterns = []randPattern{
	{"echo", genEcho, clientEcho, backendEcho},
	{"push to a slow reader", genPush, clientPush, backendPush},
	{"backend closes first", genHalfFirst, clientHalfFirst, backendHalfFirst},
	{"client aborts", genAbort, clientAborts, backendSeesAbort},
	{"backend aborts", genAbort, clientSeesAbort, backendAborts},
	{"backend stalls", genStall, clientStall, backendStall},
	{"one byte at a time", genTiny, clientTiny, backendTiny},
	{"requests after pauses", genRounds, clientRounds, backendRounds},
}

// size draws a payload size up to most: 0 one time in ten, else
// log-uniform from 1, so that small and large both come often.
func size(r *rand.Rand, most int) int {
	if r.IntN(10) == 0 {
		return 0
	}
	return int(math.Exp2(r.Float64() * math.Log2(float64(most))))
}

// chunks returns a draw of write sizes from 1 to most.
func chunks(r *rand.Rand, most int) func() int { return func() int { return 1 + r.IntN(most) } }

// Echo: the client sends while it reads the echo, then half-closes; the
// backend echoes until the client's FIN, then half-closes.

func genEcho(r *rand.Rand, f *spliceFlow) { f.up = size(r, 256<<10) }

func clientEcho(f *spliceFlow, c net.Conn) error {
	werr := make(chan error, 1)
	go func() {
		err := f.upData().send(c, f.up, chunks(f.rng(3), 64<<10))
		if err == nil {
			err = closeWrite(c)
		}
		werr <- err
	}()
	err := f.upData().expect(c, f.up, 1+f.rng(1).IntN(32<<10), nil)
	if err == nil {
		err = expectEOF(c)
	}
	return errors.Join(err, <-werr)
}

func backendEcho(f *spliceFlow, c *net.TCPConn) error {
	buf := make([]byte, 1+f.rng(2).IntN(32<<10))
	for {
		n, err := c.Read(buf)
		if _, werr := c.Write(buf[:n]); werr != nil {
			return werr
		}
		if err == io.EOF {
			return c.CloseWrite()
		}
		if err != nil {
			return err
		}
	}
}

// Push: the backend sends a large answer before it reads anything, then
// half-closes; the client reads it slowly, with pauses, then sends its
// own and half-closes.

func genPush(r *rand.Rand, f *spliceFlow) {
	f.down = 32<<10 + size(r, 1<<20)
	f.up = size(r, 16<<10)
	for range 1 + r.IntN(4) {
		f.pauses = append(f.pauses, randPause{at: r.IntN(f.down), d: time.Duration(20+r.IntN(130)) * time.Millisecond})
	}
}

func clientPush(f *spliceFlow, c net.Conn) error {
	pending := append([]randPause(nil), f.pauses...)
	pace := func(got int) {
		for i, p := range pending {
			if p.at >= 0 && p.at <= got {
				time.Sleep(p.d)
				pending[i].at = -1
			}
		}
	}
	if err := f.downData().expect(c, f.down, 1+f.rng(1).IntN(16<<10), pace); err != nil {
		return err
	}
	if err := expectEOF(c); err != nil {
		return err
	}
	if err := f.upData().send(c, f.up, chunks(f.rng(1), 8<<10)); err != nil {
		return err
	}
	return closeWrite(c)
}

func backendPush(f *spliceFlow, c *net.TCPConn) error {
	if err := f.downData().send(c, f.down, func() int { return f.down }); err != nil {
		return err
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	if err := f.upData().expect(c, f.up, 4096, nil); err != nil {
		return err
	}
	return expectEOF(c)
}

// Backend closes first: the backend sends and half-closes at once; the
// client sends part of its payload meanwhile, reads to the backend's FIN,
// pauses, then sends the rest, which must all reach the backend.

func genHalfFirst(r *rand.Rand, f *spliceFlow) {
	f.down = size(r, 64<<10)
	f.up = 1 + size(r, 128<<10)
	f.gap = time.Duration(r.IntN(150)) * time.Millisecond
}

func clientHalfFirst(f *spliceFlow, c net.Conn) error {
	up := f.upData()
	split := f.rng(1).IntN(f.up + 1)
	werr := make(chan error, 1)
	go func() { werr <- up.send(c, split, chunks(f.rng(3), 16<<10)) }()
	err := f.downData().expect(c, f.down, 1+f.rng(1).IntN(16<<10), nil)
	if err == nil {
		err = expectEOF(c)
	}
	if err = errors.Join(err, <-werr); err != nil {
		return err
	}
	time.Sleep(f.gap)
	if err := up.send(c, f.up-split, chunks(f.rng(4), 16<<10)); err != nil {
		return fmt.Errorf("after the backend's FIN: %w", err)
	}
	return closeWrite(c)
}

func backendHalfFirst(f *spliceFlow, c *net.TCPConn) error {
	if err := f.downData().send(c, f.down, chunks(f.rng(2), 16<<10)); err != nil {
		return err
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	if err := f.upData().expect(c, f.up, 1+f.rng(2).IntN(16<<10), nil); err != nil {
		return err
	}
	return expectEOF(c)
}

// Aborts: one side resets the flow (SO_LINGER 0) after sending up to up
// (the client) or reading up and sending down (the backend), while the
// other streams to it or waits; the other side must see a reset, never a
// clean EOF that would pass a cut stream off as complete.

func genAbort(r *rand.Rand, f *spliceFlow) {
	f.up = size(r, 64<<10)
	f.down = size(r, 64<<10)
	f.stream = r.IntN(2) == 0
}

// randStreamMost bounds what a side streams to one that aborts.
const randStreamMost = 16 << 20

func clientAborts(f *spliceFlow, c net.Conn) error {
	down := f.downData()
	if err := down.expect(c, 1, 1, nil); err != nil { // the backend has the header
		return err
	}
	if err := f.upData().send(c, f.up, chunks(f.rng(1), 16<<10)); err != nil {
		return err
	}
	if f.stream {
		if err := down.expect(c, f.down, 1+f.rng(1).IntN(16<<10), nil); err != nil {
			return err
		}
	}
	return abort(c)
}

func backendSeesAbort(f *spliceFlow, c *net.TCPConn) error {
	down := f.downData()
	if err := down.send(c, 1, func() int { return 1 }); err != nil {
		return err
	}
	werr := make(chan error, 1)
	go func() {
		if !f.stream {
			werr <- nil
			return
		}
		werr <- down.send(c, randStreamMost, chunks(f.rng(3), 64<<10))
	}()
	var poke func() error
	if !f.stream {
		poke = func() error { _, err := c.Write([]byte{0}); return err }
	}
	n, rerr := f.upData().drain(c, f.deadline, poke)
	var err error
	if n > f.up {
		err = fmt.Errorf("read %d bytes, the client sent %d", n, f.up)
	}
	we := <-werr
	if !isReset(rerr) && !isReset(we) {
		err = errors.Join(err, fmt.Errorf("read %d of the %d bytes sent, then %v (writing: %v): want a reset", n, f.up, rerr, we))
	}
	return err
}

func clientSeesAbort(f *spliceFlow, c net.Conn) error {
	up := f.upData()
	werr := make(chan error, 1)
	var sent atomic.Bool
	go func() {
		if f.stream {
			werr <- up.send(c, randStreamMost, chunks(f.rng(3), 64<<10))
			return
		}
		err := up.send(c, f.up, chunks(f.rng(3), 16<<10))
		sent.Store(true)
		werr <- err
	}()
	var poke func() error
	if !f.stream {
		poke = func() error {
			if !sent.Load() { // after the payload, which the backend reads to its end
				return nil
			}
			_, err := c.Write([]byte{0})
			return err
		}
	}
	n, rerr := f.downData().drain(c, f.deadline, poke)
	we := <-werr
	var err error
	if n > f.down {
		err = fmt.Errorf("read %d bytes, the backend sent %d", n, f.down)
	}
	if !f.stream && we != nil {
		err = errors.Join(err, fmt.Errorf("sending before the backend's reset: %w", we))
	}
	if !isReset(rerr) && !(f.stream && isReset(we)) {
		err = errors.Join(err, fmt.Errorf("read %d of the %d bytes sent, then %v (writing: %v): want a reset", n, f.down, rerr, we))
	}
	return err
}

func backendAborts(f *spliceFlow, c *net.TCPConn) error {
	if err := f.upData().expect(c, f.up, 1+f.rng(2).IntN(16<<10), nil); err != nil {
		return err
	}
	if err := f.downData().send(c, f.down, chunks(f.rng(2), 16<<10)); err != nil {
		return err
	}
	return abort(c)
}

// Stall: the backend reads nothing for a while (with a small receive
// buffer or not) while the client sends, then reads it all and answers.

func genStall(r *rand.Rand, f *spliceFlow) {
	f.small = r.IntN(2) == 0
	if f.small {
		// A small buffer is slow whoever sends: the kernel's window is
		// a fraction of it, opened a read at a time.
		f.up = 16<<10 + size(r, 128<<10)
	} else {
		f.up = 512<<10 + r.IntN(1<<20)
	}
	f.down = 1 + r.IntN(64)
	f.gap = time.Duration(50+r.IntN(350)) * time.Millisecond
}

func clientStall(f *spliceFlow, c net.Conn) error {
	if err := f.upData().send(c, f.up, chunks(f.rng(1), 64<<10)); err != nil {
		return err
	}
	if err := closeWrite(c); err != nil {
		return err
	}
	if err := f.downData().expect(c, f.down, 64, nil); err != nil {
		return err
	}
	return expectEOF(c)
}

func backendStall(f *spliceFlow, c *net.TCPConn) error {
	if f.small {
		c.SetReadBuffer(16 << 10)
	}
	time.Sleep(f.gap)
	if err := f.upData().expect(c, f.up, 1+f.rng(2).IntN(64<<10), nil); err != nil {
		return err
	}
	if err := expectEOF(c); err != nil {
		return err
	}
	return f.downData().send(c, f.down, func() int { return f.down })
}

// One byte at a time: both sides send their payload a byte per write,
// with short pauses now and then, while they read the other's, then
// half-close.

func genTiny(r *rand.Rand, f *spliceFlow) {
	f.up = 1 + r.IntN(300)
	f.down = 1 + r.IntN(300)
}

func clientTiny(f *spliceFlow, c net.Conn) error {
	return tiny(c, f.upData(), f.up, f.rng(3), f.downData(), f.down, closeWrite)
}

func backendTiny(f *spliceFlow, c *net.TCPConn) error {
	return tiny(c, f.downData(), f.down, f.rng(4), f.upData(), f.up, func(net.Conn) error { return c.CloseWrite() })
}

func tiny(c net.Conn, out *stream, nout int, r *rand.Rand, in *stream, nin int, closeWrite func(net.Conn) error) error {
	size := 1 + r.IntN(8)
	werr := make(chan error, 1)
	go func() {
		one := func() int {
			if r.IntN(16) == 0 {
				time.Sleep(time.Duration(r.IntN(300)) * time.Microsecond)
			}
			return 1
		}
		err := out.send(c, nout, one)
		if err == nil {
			err = closeWrite(c)
		}
		werr <- err
	}()
	err := in.expect(c, nin, size, nil)
	if err == nil {
		err = expectEOF(c)
	}
	return errors.Join(err, <-werr)
}

// Requests after pauses: rounds of a request and an answer, the backend
// pausing before some answers longer than a worker lingers (the reactor
// wakes the flow), then the client closes.

func genRounds(r *rand.Rand, f *spliceFlow) {
	for range 1 + r.IntN(5) {
		f.rounds = append(f.rounds, randRound{req: 1 + r.IntN(2<<10), ans: 1 + r.IntN(32<<10)})
		f.hold = append(f.hold, []time.Duration{0, 10 * time.Millisecond, 2 * lingerTime, 3 * lingerTime}[r.IntN(4)])
	}
}

func clientRounds(f *spliceFlow, c net.Conn) error {
	up, down := f.upData(), f.downData()
	for i, rd := range f.rounds {
		if err := up.send(c, rd.req, func() int { return rd.req }); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if err := down.expect(c, rd.ans, 16<<10, nil); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
	}
	return c.Close()
}

func backendRounds(f *spliceFlow, c *net.TCPConn) error {
	up, down := f.upData(), f.downData()
	for i, rd := range f.rounds {
		if err := up.expect(c, rd.req, 4096, nil); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		time.Sleep(f.hold[i])
		if err := down.send(c, rd.ans, func() int { return rd.ans }); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
	}
	return expectEOF(c)
}

// stream is one direction's payload: the test's random block from a
// start, round and round.
type stream struct {
	block []byte
	pos   int
}

// next returns the next bytes of s, at most n, in one piece.
func (s *stream) next(n int) []byte {
	p := s.pos % len(s.block)
	b := s.block[p:min(len(s.block), p+n)]
	s.pos += len(b)
	return b
}

// send writes the next n bytes of s to w, chunk() at most per write.
func (s *stream) send(w io.Writer, n int, chunk func() int) error {
	for sent := 0; sent < n; {
		b := s.next(min(n-sent, chunk()))
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("write at %d of %d bytes: %w", sent, n, err)
		}
		sent += len(b)
	}
	return nil
}

// expect reads n bytes, size at most per read, and checks that they are
// the next of s; pace, if not nil, is told how many came so far after each
// read.
func (s *stream) expect(r io.Reader, n, size int, pace func(int)) error {
	buf := make([]byte, size)
	for got := 0; got < n; {
		k, err := r.Read(buf[:min(size, n-got)])
		if cerr := s.check(buf[:k], got); cerr != nil {
			return cerr
		}
		got += k
		if err != nil {
			return fmt.Errorf("read %d of %d bytes: %w", got, n, err)
		}
		if pace != nil {
			pace(got)
		}
	}
	return nil
}

// drain reads until an error, checking what comes against s, and returns
// how many bytes came and the error (io.EOF for a FIN). When nothing came
// for randQuiet it calls poke, if not nil, and reads on, until deadline;
// a poke that fails ends it with the poke's error. A side that waits for
// the other's reset, sending nothing, pokes: a reset is sent once, and one
// that is lost or refused on the way (a RST whose sequence number is not
// the next expected one is answered by a challenge ACK, which a stack
// sends a limited number of per second) is sent again only when a segment
// of the connection comes after it. The poke's write may meet the reset
// first: a socket hands its error to one call.
func (s *stream) drain(c net.Conn, deadline time.Time, poke func() error) (int, error) {
	defer c.SetReadDeadline(deadline)
	buf := make([]byte, 16<<10)
	for got := 0; ; {
		if poke != nil {
			c.SetReadDeadline(time.Now().Add(randQuiet))
		}
		k, err := c.Read(buf)
		if cerr := s.check(buf[:k], got); cerr != nil {
			return got, cerr
		}
		got += k
		if err != nil && isTimeout(err) && poke != nil && time.Now().Before(deadline) {
			if perr := poke(); perr != nil {
				return got, perr
			}
			continue
		}
		if err != nil {
			return got, err
		}
	}
}

// check compares b, which came at offset at of the stream, with s.
func (s *stream) check(b []byte, at int) error {
	for len(b) > 0 {
		want := s.next(len(b))
		if !bytes.Equal(b[:len(want)], want) {
			for i := range want {
				if b[i] != want[i] {
					return fmt.Errorf("byte %d is not the one sent", at+i)
				}
			}
		}
		b, at = b[len(want):], at+len(want)
	}
	return nil
}

// expectEOF reads the peer's FIN: no more bytes, and io.EOF.
func expectEOF(r io.Reader) error {
	var b [1]byte
	for {
		n, err := r.Read(b[:])
		if n > 0 {
			return errors.New("more bytes than were sent")
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("want EOF, got %w", err)
		}
	}
}

func closeWrite(c net.Conn) error { return c.(interface{ CloseWrite() error }).CloseWrite() }

// abort closes c with a RST.
func abort(c net.Conn) error {
	if err := c.(interface{ SetLinger(int) error }).SetLinger(0); err != nil {
		return err
	}
	return c.Close()
}

// isReset tells a reset from the kernel (ECONNRESET) or from gVisor's
// adapter ("connection reset by peer").
func isReset(err error) bool {
	return err != nil && (errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "connection reset"))
}

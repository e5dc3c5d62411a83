package tunnel

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Application error codes of CONNECTION_CLOSE.
const (
	closeNormal  quic.ApplicationErrorCode = 0x0 // Close: nothing wrong
	closeRefused quic.ApplicationErrorCode = 0x1 // Refuse: "code: message" in the reason
	closeBusy    quic.ApplicationErrorCode = 0x2 // too many handshakes in progress
)

// ErrNoControlStream is returned by Send and Next on a ztna-v1 session,
// which has no control stream.
var ErrNoControlStream = errors.New("tunnel: ztna-v1 session has no control stream")

// Session is one tunnel connection: datagrams both ways and, for ztna-v2,
// the control stream. Its methods are safe for concurrent use, except that
// ReceiveDatagram and Next each expect one reader. Every session must be
// closed with Close or Refuse (even after the peer went away).
type Session struct {
	id      uint64
	conn    *quic.Conn
	version Version
	side    string
	peer    Identity
	hello   Hello
	welcome Welcome
	log     *slog.Logger
	m       *metrics

	stream *quic.Stream // control stream (v2); nil for v1
	reader *Reader      // reads stream; used by one goroutine at a time

	sendMu     sync.Mutex
	sendBroken error // guarded by sendMu: a failed write left a partial frame

	postMu      sync.Mutex
	posted      [][]byte // guarded by postMu: frames Post queued, not yet taken by writePosts
	postBytes   int      // guarded by postMu: their size
	postWriting bool     // guarded by postMu: a writePosts goroutine runs (or the stream broke)

	size sizing
	// pad: the peer announced that it trims padding (ztna-v2 hello or
	// welcome); set during the exchange. Atomic: the QAD announcer may
	// send while the server still reads the hello.
	pad atomic.Bool

	// Server side: the client's address changes are noticed on received
	// datagrams and announced with QAD by the listener's goroutine.
	seenRemote   atomic.Pointer[net.UDPAddr]
	remoteChange chan struct{}
	// Server side: admitted once the listener hands the session to
	// Accept, from when a switch of the credentials rechecks it. Both
	// sides: revoked once a recheck refused the peer, the client on a
	// server, the server on a client (counted once).
	// Client side: admitted once Dial judged the server with the
	// credentials in use after the hello, from when a switch of the
	// credentials or the server's expiry rechecks it; checkMu orders
	// Dial's judgement before the rechecks.
	admitted, revoked atomic.Bool
	checkMu           sync.Mutex
	// Client side: set before the session is closed because the
	// credentials switched to another own identity (endOwnChanged).
	ownChanged atomic.Pointer[OwnIdentityChangedError]

	closeOnce sync.Once
}

// newSession wraps an established connection.
func newSession(conn *quic.Conn, v Version, side string, peer Identity, m *metrics, log *slog.Logger) *Session {
	s := &Session{
		id:           newSessionID(),
		conn:         conn,
		version:      v,
		side:         side,
		peer:         peer,
		m:            m,
		remoteChange: make(chan struct{}, 1),
	}
	if ua, ok := conn.RemoteAddr().(*net.UDPAddr); ok {
		s.seenRemote.Store(ua)
	}
	s.log = log.With("session", s.id, "remote", s.RemoteAddr().String(), "version", v.String())
	if peer.Tenant != "" {
		s.log = s.log.With("peer", peer.String())
	}
	gauge := m.sessionGauge(side, v)
	gauge.Inc()
	context.AfterFunc(conn.Context(), gauge.Dec)
	return s
}

// newSessionID draws the id of a session. Random rather than counted: it
// is sent to peers and must not tell how many sessions a process has
// served.
func newSessionID() uint64 { return RandomID() }

// RandomID draws an unguessable non-zero id below 2^53, so that it
// survives JSON in any language: for sessions, and for the signaling
// sessions of the direct path.
func RandomID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return binary.BigEndian.Uint64(b[:])&(1<<53-1) | 1
}

// ID returns the session's id, unique in this process.
func (s *Session) ID() uint64 { return s.id }

// Version returns the protocol version negotiated by ALPN.
func (s *Session) Version() Version { return s.version }

// Peer returns the peer's identity: the client's on a server, the server's
// on a client. It is zero when the peer has none that verifies (only
// possible with Insecure credentials, or a server certificate without a
// ztgate identity).
func (s *Session) Peer() Identity { return s.peer }

// Hello returns, on a server, what the client said in its hello; on a
// client, what it sent. Zero for ztna-v1.
func (s *Session) Hello() Hello { return s.hello }

// Welcome returns, on a client, the server's welcome; on a server, the
// welcome sent with SendWelcome. Zero for ztna-v1.
func (s *Session) Welcome() Welcome { return s.welcome }

// RemoteAddr returns the peer's current address.
func (s *Session) RemoteAddr() netip.AddrPort { return addrPort(s.conn.RemoteAddr()) }

// addrPort converts a UDP address, unmapping IPv4-mapped IPv6.
func addrPort(a net.Addr) netip.AddrPort {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ErrDatagramQueueFull is SendDatagram's error for a datagram dropped
// because the send queue stayed full (a burst, a stalled window): the
// session itself goes on.
var ErrDatagramQueueFull = quic.ErrDatagramQueueFull

// SendDatagram queues b as one DATAGRAM; quic-go copies it, so the caller
// may reuse b at once. It waits at most 5 ms for room in quic-go's send
// queue; a peer that acknowledges nothing keeps it full, and b is dropped
// then (third_party/README.md). Failures are counted by reason
// (DropTooLarge, DropClosed, DropFull, DropError) and
// returned unwrapped, so that the packet path allocates nothing; a
// *quic.DatagramTooLargeError also updates MaxDatagram.
//
// To a ztna-v2 peer that trims padding, a data datagram a little short of
// the largest is padded to it (padding.go), so that quic-go sends runs of
// them with GSO.
func (s *Session) SendDatagram(b []byte) error {
	if s.pad.Load() {
		if size := s.MaxDatagram(); paddable(b, size) {
			var buf [maxPadded]byte // zeroed only for the datagrams padded
			b = fill(b, size, &buf)
		}
	}
	err := s.conn.SendDatagram(b)
	if err == nil {
		s.m.out.Inc()
		return nil
	}
	var tooLarge *quic.DatagramTooLargeError
	switch {
	case errors.As(err, &tooLarge):
		s.m.dropLarge.Inc()
		s.size.set(tooLarge.MaxDatagramPayloadSize)
	case s.conn.Context().Err() != nil:
		s.m.dropClosed.Inc()
	case err == quic.ErrDatagramQueueFull:
		s.m.dropFull.Inc()
	default:
		s.m.dropElse.Inc()
	}
	return err
}

// ReceiveDatagram returns the next DATAGRAM payload, whatever its type
// (QAD included). The slice is the caller's; ReleaseDatagram gives it back
// once the caller is done with it. It fails when ctx is done or the
// session has ended. A ztna-v2 data datagram comes without its padding.
func (s *Session) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	b, err := s.conn.ReceiveDatagram(ctx)
	if err != nil {
		return nil, err
	}
	if s.version == V2 {
		b = trimPadding(b)
	}
	s.m.in.Inc()
	if s.side == sideServer {
		s.noticeRemote()
	}
	return b, nil
}

// noticeRemote wakes the QAD goroutine when the client's address changed.
// Comparing the pointer quic-go stores is enough and allocates nothing.
func (s *Session) noticeRemote() {
	ua, ok := s.conn.RemoteAddr().(*net.UDPAddr)
	if !ok || ua == s.seenRemote.Load() {
		return
	}
	s.seenRemote.Store(ua)
	select {
	case s.remoteChange <- struct{}{}:
	default:
	}
}

// Send writes one control message (ztna-v2); concurrent calls are
// serialised and each write has ControlWriteTimeout. msg must encode to a
// JSON object with a "type", as the message structs of messages.go do. A
// write that fails midway leaves the stream unusable: the session is then
// closed.
func (s *Session) Send(msg any) error {
	if s.stream == nil {
		return ErrNoControlStream
	}
	frame, err := encodeFrame(msg) // an error here leaves the stream intact
	if err != nil {
		return err
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.sendBroken != nil {
		return s.sendBroken
	}
	_ = s.stream.SetWriteDeadline(writeDeadline(len(frame)))
	if _, err := s.stream.Write(frame); err != nil {
		err = fmt.Errorf("tunnel: write control message: %w", err)
		s.brokenLocked(err)
		return err
	}
	return nil
}

// brokenLocked records a failed write, which may have left part of a frame
// on the stream, and closes the session. Callers hold sendMu.
func (s *Session) brokenLocked(err error) {
	s.sendBroken = err
	s.Close("control stream write failed: " + err.Error())
}

// PostQueueBytes bounds the control messages Post holds for one session
// that its writer has not taken yet. The writer drains them as fast as the
// peer reads, each within its write deadline; a peer that stops reading
// ends the session when a write's deadline passes, and the queue is the
// memory that may pile up meanwhile.
const PostQueueBytes = 4 << 20

// ErrPostBackedUp: Post found PostQueueBytes of messages still waiting,
// and closed the session, whose peer does not read them.
var ErrPostBackedUp = errors.New("tunnel: control messages backed up: the peer does not read them")

// Post sends msg on the control stream without waiting for the peer: it
// is encoded at once (an invalid or oversized message is an error, as in
// Send), queued, and written by a goroutine of the session, in the order
// of the Post calls. Use it to tell a session something from another
// session's goroutine, or under a lock: a peer that stops reading then
// holds up only its own session, which ends when a write's deadline
// passes (or, sooner, when PostQueueBytes wait: ErrPostBackedUp). Messages
// sent with Send may overtake posted ones.
func (s *Session) Post(msg any) error {
	if s.stream == nil {
		return ErrNoControlStream
	}
	frame, err := encodeFrame(msg)
	if err != nil {
		return err
	}
	select {
	case <-s.Done():
		return fmt.Errorf("tunnel: post: %w", context.Cause(s.conn.Context()))
	default:
	}
	s.postMu.Lock()
	if s.postBytes+len(frame) > PostQueueBytes {
		s.postMu.Unlock()
		s.Close(ErrPostBackedUp.Error())
		return ErrPostBackedUp
	}
	s.posted = append(s.posted, frame)
	s.postBytes += len(frame)
	start := !s.postWriting
	s.postWriting = true
	s.postMu.Unlock()
	if start {
		go s.writePosts()
	}
	return nil
}

// writePosts writes the frames Post queued, each run of them taken at
// once, and returns when none is left: a session holds a goroutine for
// its posts only while some wait. Once the stream broke (the session is
// closing) it drops what is left and no writer starts again.
func (s *Session) writePosts() {
	for {
		s.postMu.Lock()
		frames := s.posted
		s.posted, s.postBytes = nil, 0
		if len(frames) == 0 {
			s.postWriting = false
			s.postMu.Unlock()
			return
		}
		s.postMu.Unlock()
		for _, frame := range frames {
			if !s.writePosted(frame) {
				return // postWriting stays set
			}
		}
	}
}

// writePosted writes one posted frame, taking sendMu for it alone so that
// Send (a pong, say) is not held up by a long run of posts; false once the
// stream is broken.
func (s *Session) writePosted(frame []byte) bool {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.sendBroken != nil {
		return false
	}
	_ = s.stream.SetWriteDeadline(writeDeadline(len(frame)))
	if _, err := s.stream.Write(frame); err != nil {
		s.brokenLocked(fmt.Errorf("tunnel: write control message: %w", err))
		return false
	}
	return true
}

// minControlRate is the slowest a peer may read a large control message:
// its write deadline grows by a second for each minControlRate bytes
// beyond the first ControlWriteTimeout, so a 1 MiB directory on a slow
// link is not cut off while a peer that reads nothing still is.
const minControlRate = 64 << 10

// writeDeadline is the deadline of writing n bytes of control messages.
func writeDeadline(n int) time.Time {
	return time.Now().Add(ControlWriteTimeout + time.Duration(n/minControlRate)*time.Second)
}

// Next reads the next control message (ztna-v2); see Reader.Next for its
// errors. One goroutine reads at a time.
func (s *Session) Next() (typ string, raw json.RawMessage, err error) {
	if s.reader == nil {
		return "", nil, ErrNoControlStream
	}
	return s.reader.Next()
}

// Close closes the connection with reason, which the peer sees, and logs
// it. Later calls do nothing.
func (s *Session) Close(reason string) error {
	return s.closeWith(closeNormal, reason, "tunnel session closed")
}

// refuseGrace is how long Refuse lets a ztna-v2 peer read the error
// message and close by itself: closing at once would discard the message.
const refuseGrace = time.Second

// Refuse tells a ztna-v2 peer why it is refused (an error message with
// code and message) and closes the connection with "code: message" as its
// reason, which a ztna-v1 peer sees too; Dial returns either as a
// *RefusedError. On ztna-v2 it waits up to a second for the peer to close
// first, so that the error message arrives.
func (s *Session) Refuse(code, message string) error {
	if s.stream != nil {
		if s.Send(ErrorMessage{Type: MessageTypeError, Code: code, Message: message}) == nil {
			t := time.NewTimer(refuseGrace)
			select {
			case <-s.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
	return s.closeWith(closeRefused, code+": "+message, "tunnel session refused")
}

// closeWith closes the connection once, with an application error code.
func (s *Session) closeWith(code quic.ApplicationErrorCode, reason, logMsg string) error {
	var err error
	s.closeOnce.Do(func() {
		s.log.Info(logMsg, "reason", reason)
		err = s.conn.CloseWithError(code, reason)
	})
	return err
}

// revoke ends an admitted session whose peer the credentials in use now
// refuse (the client on a listener's side, the server on a dialer's),
// counted and logged once: the caller set revoked. The peer sees the
// reason ("revoked: <reason>").
func (s *Session) revoke(ae *AuthError) {
	peer := "client"
	if s.side == sideClient {
		peer = "server"
	}
	s.m.revoked(s.side, ae.Reason)
	s.log.Warn("tunnel session ended: its "+peer+"'s certificate is refused now", "reason", ae.Reason, "err", ae.Err)
	_ = s.closeWith(closeRefused, "revoked: "+ae.Reason, "tunnel session revoked")
}

// endOwnChanged ends a dialed session made with an own identity the
// credentials no longer present, logged; the server sees the reason.
func (s *Session) endOwnChanged(changed *OwnIdentityChangedError) {
	s.ownChanged.Store(changed)
	s.log.Warn("tunnel session ended: the credentials switched to another own identity",
		"identity", changed.New, "previous_identity", changed.Old)
	_ = s.closeWith(closeNormal, changed.Error(), "tunnel session closed")
}

// ownIdentityChanged returns, on a dialed session, the change of this
// side's own identity that ended it, nil if none did.
func (s *Session) ownIdentityChanged() *OwnIdentityChangedError { return s.ownChanged.Load() }

// Done is closed when the session has ended, for whatever reason.
func (s *Session) Done() <-chan struct{} { return s.conn.Context().Done() }

// Err returns why the session ended, or nil while it lives.
func (s *Session) Err() error {
	ctx := s.conn.Context()
	if ctx.Err() == nil {
		return nil
	}
	return context.Cause(ctx)
}

// String describes the session for logs.
func (s *Session) String() string {
	return fmt.Sprintf("session %d (%s, %s)", s.id, s.version, s.RemoteAddr())
}

// Revoked reports whether the credentials in use refused the session's
// peer after they admitted it — a reload that dropped its CA, the end of
// its certificate (Listener.recheck, watchExpiry; a dialed session's
// recheckServer) — which ends the session ("revoked: <reason>"). Set
// before the session closes, so that once Done is closed it tells a
// session ended because its peer is no longer trusted from one that ended
// for any other reason (the peer left, the network, idle). A session that
// Accept or Dial returned was admitted: false for one refused in its
// handshake, which they never return. A dialed session ended because this
// side's own identity changed (ErrOwnIdentityChanged) was not revoked:
// its server is still trusted.
func (s *Session) Revoked() bool { return s.revoked.Load() && s.ownChanged.Load() == nil }

package tunnel

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Reconnection timing (docs/protocol.md, "Connections").
const (
	// RedialMin is the first wait after a failed dial or an ended session.
	RedialMin = time.Second
	// RedialMax caps the wait, which doubles after each failure.
	RedialMax = 30 * time.Second
	// RedialReset is how long a session must have lived for the wait to
	// start again from RedialMin.
	RedialReset = 30 * time.Second
)

// Redialer keeps a client connected: it dials, runs OnSession for the
// session's life, and redials with jittered exponential backoff, or at
// once, without a backoff step, when the session (or the dial) ended
// because the credentials switched to another own identity
// (ErrOwnIdentityChanged): the client is back with the new one. It runs
// in the caller's goroutine (Run) and touches nothing else, so the data
// path never waits for it: while it is disconnected there is no session
// to send on, and the caller drops and counts.
type Redialer struct {
	Addr   string
	Config DialConfig
	Log    *slog.Logger
	// OnSession runs for the life of each session and returns when the
	// session has ended (s.Done()) or ctx is done; Run then closes s. Its
	// error is logged.
	OnSession func(ctx context.Context, s *Session) error
	// OnDisconnect, if set, is told why a session ended or a dial failed
	// and how long Run waits before it dials again (0: at once, for an
	// ErrOwnIdentityChanged).
	OnDisconnect func(err error, retryIn time.Duration)
	// Wake, if set, cuts a wait after a failed dial short: the host's
	// network changed (an address came, a link came up), so the server may be
	// reachable now rather than at the end of a wait grown to RedialMax
	// while the network was gone. The next dial starts RedialMin after the
	// last one began at the earliest, and the waits start again from
	// RedialMin. A change while connected needs no redial (QUIC carries the
	// session to the new address); it is forgotten when the session ends.
	Wake <-chan struct{}

	// Test hooks; nil means the real clock.
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration, wake <-chan struct{}) bool
}

// Run dials and redials until ctx is done, then returns nil.
func (r *Redialer) Run(ctx context.Context) error {
	if r.OnSession == nil {
		return errors.New("tunnel: redial: no OnSession")
	}
	log := r.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now, sleep := r.now, r.sleep
	if now == nil {
		now = time.Now
	}
	if sleep == nil {
		sleep = sleepCtx
	}
	b := backoff{rand: rand.Float64}
	for ctx.Err() == nil {
		start := now()
		s, err := Dial(ctx, r.Addr, r.Config, log)
		if err == nil {
			log.Info("tunnel connected", "server", r.Addr, "session", s.ID(), "version", s.Version().String())
			err = r.OnSession(ctx, s)
			_ = s.Close("client done with the session")
			if now().Sub(start) >= RedialReset {
				b.reset()
			}
			if changed := s.ownIdentityChanged(); changed != nil {
				err = changed
			}
			select { // a network change while connected
			case <-r.Wake:
			default:
			}
		}
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, ErrOwnIdentityChanged) {
			log.Info("tunnel session ended for the new own identity; redialing now", "server", r.Addr, "err", err)
			if r.OnDisconnect != nil {
				r.OnDisconnect(err, 0)
			}
			continue
		}
		wait := b.next()
		log.Warn("tunnel disconnected; redialing", "server", r.Addr, "err", err, "in", wait.Round(time.Millisecond))
		if r.OnDisconnect != nil {
			r.OnDisconnect(err, wait)
		}
		if !sleep(ctx, wait, r.Wake) || ctx.Err() != nil {
			continue
		}
		b.reset()
		rest := max(RedialMin-now().Sub(start), 0)
		log.Info("network changed; redialing", "server", r.Addr, "in", rest.Round(time.Millisecond))
		if r.OnDisconnect != nil {
			r.OnDisconnect(err, rest)
		}
		sleep(ctx, rest, nil)
	}
	return nil
}

// sleepCtx waits for d, until ctx is done, or until wake (nil: never)
// fires, and reports whether wake did.
func sleepCtx(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
		return true
	}
	return false
}

// backoff computes jittered exponential waits from RedialMin to RedialMax.
// The zero value with rand set is ready to use.
type backoff struct {
	rand     func() float64 // in [0, 1)
	attempts int
}

// next returns the next wait: d ± 20 % kept within [RedialMin,
// RedialMax], where d doubles from RedialMin with each call. The jitter
// keeps clients cut off together from coming back together.
func (b *backoff) next() time.Duration {
	d := RedialMax
	if b.attempts < 16 && RedialMin<<b.attempts < RedialMax {
		d = RedialMin << b.attempts
	}
	b.attempts++
	j := time.Duration(float64(d) * (0.8 + 0.4*b.rand()))
	return min(max(j, RedialMin), RedialMax)
}

// reset starts again from RedialMin.
func (b *backoff) reset() { b.attempts = 0 }

// Backoff is the Redialer's jittered exponential wait, from RedialMin to
// RedialMax, for other retries (the agent's direct-path attempts). The zero
// value is ready to use; it is not safe for concurrent use.
type Backoff struct{ b backoff }

// Next returns the next wait and doubles the one after it.
func (b *Backoff) Next() time.Duration {
	if b.b.rand == nil {
		b.b.rand = rand.Float64
	}
	return b.b.next()
}

// Reset starts again from RedialMin.
func (b *Backoff) Reset() { b.b.reset() }

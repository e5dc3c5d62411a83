package tunnel

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	s := time.Second
	tests := []struct {
		name   string
		jitter float64
		want   []time.Duration
	}{
		{"middle", 0.5, []time.Duration{1 * s, 2 * s, 4 * s, 8 * s, 16 * s, 30 * s, 30 * s}},
		{"low", 0, []time.Duration{1 * s, 1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond, 12800 * time.Millisecond, 24 * s, 24 * s}},
		{"high", 0.75, []time.Duration{1100 * time.Millisecond, 2200 * time.Millisecond, 4400 * time.Millisecond, 8800 * time.Millisecond, 17600 * time.Millisecond, 30 * s}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := backoff{rand: func() float64 { return tc.jitter }}
			for i, want := range tc.want {
				if got := b.next().Round(time.Microsecond); got != want {
					t.Errorf("wait %d = %v, want %v", i, got, want)
				}
			}
			b.reset()
			if got := b.next().Round(time.Microsecond); got != tc.want[0] {
				t.Errorf("after reset %v, want %v", got, tc.want[0])
			}
		})
	}
	t.Run("bounds", func(t *testing.T) {
		b := backoff{rand: func() float64 { return 0.999999 }}
		for range 100 {
			if d := b.next(); d < RedialMin || d > RedialMax {
				t.Fatalf("wait %v out of bounds", d)
			}
		}
	})
}

func TestRedialerBacksOffOnFailures(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waits []time.Duration
	r := &Redialer{
		Addr:      "no port", // Dial fails at once
		Config:    DialConfig{Credentials: &Credentials{}},
		OnSession: func(context.Context, *Session) error { t.Error("no session expected"); return nil },
		sleep: func(_ context.Context, d time.Duration, _ <-chan struct{}) bool {
			waits = append(waits, d)
			if len(waits) == 7 {
				cancel()
			}
			return false
		},
	}
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	for i, d := range waits {
		lo := min(RedialMin<<i, RedialMax) * 8 / 10
		hi := min(RedialMin<<i, RedialMax) * 12 / 10
		if d < max(lo, RedialMin) || d > min(hi, RedialMax) {
			t.Errorf("wait %d = %v, want in [%v, %v]", i, d, lo, hi)
		}
	}
	if len(waits) != 7 {
		t.Errorf("%d waits", len(waits))
	}
}

// TestRedialerWake: a network change cuts the wait after failed dials
// short; the next dial comes RedialMin after the last one began, and the
// waits start again from RedialMin.
func TestRedialerWake(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clock := time.Unix(1e9, 0)
	type sleepCall struct {
		d     time.Duration
		wakes bool // could be woken
	}
	var sleeps []sleepCall
	var retries []time.Duration
	wake := make(chan struct{}, 1)
	r := &Redialer{
		Addr:         "no port", // Dial fails at once
		Config:       DialConfig{Credentials: &Credentials{}},
		OnSession:    func(context.Context, *Session) error { t.Error("no session expected"); return nil },
		OnDisconnect: func(_ error, retryIn time.Duration) { retries = append(retries, retryIn) },
		Wake:         wake,
		now:          func() time.Time { return clock },
		sleep: func(_ context.Context, d time.Duration, w <-chan struct{}) bool {
			sleeps = append(sleeps, sleepCall{d, w != nil})
			switch len(sleeps) {
			case 5: // the fifth wait: the network comes back 300 ms into it
				clock = clock.Add(300 * time.Millisecond)
				return true
			case 8:
				cancel()
			}
			clock = clock.Add(d)
			return false
		},
	}
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if len(sleeps) != 8 {
		t.Fatalf("%d sleeps: %v", len(sleeps), sleeps)
	}
	if d := sleeps[4].d; d < 16*RedialMin*8/10 {
		t.Errorf("the fifth wait %v, want about 16 s", d)
	}
	// Woken 300 ms after a dial that began when the wait did: the rest of
	// RedialMin, not to be woken again; then the waits from RedialMin.
	if got := sleeps[5]; got.d != RedialMin-300*time.Millisecond || got.wakes {
		t.Errorf("after the wake-up: %+v, want %v, not wakeable", got, RedialMin-300*time.Millisecond)
	}
	if got := retries[5]; got != RedialMin-300*time.Millisecond {
		t.Errorf("OnDisconnect told %v after the wake-up", got)
	}
	for i, want := range []time.Duration{RedialMin, 2 * RedialMin} {
		if got := sleeps[6+i]; got.d < want*8/10 || got.d > want*12/10 || !got.wakes {
			t.Errorf("wait %d after the wake-up: %+v, want about %v, wakeable", i, got, want)
		}
	}
}

// TestSleepCtxWake: the real wait ends at a wake-up, and says so.
func TestSleepCtxWake(t *testing.T) {
	wake := make(chan struct{}, 1)
	wake <- struct{}{}
	start := time.Now()
	if !sleepCtx(context.Background(), time.Minute, wake) || time.Since(start) > 10*time.Second {
		t.Error("a wake-up did not end the wait")
	}
	if sleepCtx(context.Background(), time.Millisecond, nil) {
		t.Error("woken without a wake channel")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if sleepCtx(ctx, time.Minute, wake) {
		t.Error("woken by a cancelled context")
	}
}

func TestRedialerRequiresOnSession(t *testing.T) {
	if err := (&Redialer{Addr: "x:1"}).Run(context.Background()); err == nil {
		t.Fatal("Run without OnSession succeeded")
	}
}

// TestRedialerReconnects restarts the server on the same port: the client
// notices at once (CONNECTION_CLOSE), waits its backoff and reconnects; a
// network change while it was connected does not cut that wait.
func TestRedialerReconnects(t *testing.T) {
	sf := newSessionFixture(t, false)
	addr := sf.addr()
	creds := sf.f.relay(CredentialsConfig{})
	serve := func(ln *Listener) *sync.WaitGroup {
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				s, err := ln.Accept(context.Background())
				if err != nil {
					return
				}
				_ = s.SendWelcome(Welcome{})
			}
		})
		return &wg
	}
	served := serve(sf.ln)

	type event struct {
		at time.Time
		id uint64
	}
	connected := make(chan event, 4)
	ctx, cancel := context.WithCancel(context.Background())
	wake := make(chan struct{}, 1)
	var logs lockedBuffer
	r := &Redialer{
		Addr:   addr,
		Config: sf.dialConfig(sf.agentCreds()),
		Wake:   wake,
		Log:    slog.New(slog.NewTextHandler(&logs, nil)),
		OnSession: func(ctx context.Context, s *Session) error {
			connected <- event{time.Now(), s.Welcome().Session}
			select {
			case <-s.Done():
				return s.Err()
			case <-ctx.Done():
				return nil
			}
		},
	}
	var run sync.WaitGroup
	run.Go(func() {
		if err := r.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	defer func() {
		cancel()
		run.Wait()
	}()

	first := waitEvent(t, connected)
	wake <- struct{}{} // a network change while connected: no redial for it
	sf.ln.Close()
	served.Wait()
	closedAt := time.Now()
	ln2, err := Listen(addr, ListenConfig{Credentials: creds}, nil)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	defer ln2.Close()
	served2 := serve(ln2)
	defer served2.Wait()
	defer ln2.Close()

	second := waitEvent(t, connected)
	if second.id == first.id {
		t.Error("the same session twice")
	}
	if gap := second.at.Sub(closedAt); gap < RedialMin*9/10 || gap > 3*RedialMin {
		t.Errorf("reconnected after %v, want the first backoff (%v..%v)", gap, RedialMin, RedialMin*12/10)
	}
	if strings.Contains(logs.String(), "network changed") {
		t.Errorf("a wait cut short by the network change while connected:\n%s", logs.String())
	}
}

func waitEvent[T any](t *testing.T, c <-chan T) T {
	t.Helper()
	select {
	case e := <-c:
		return e
	case <-time.After(testTimeout):
		t.Fatal("timed out")
	}
	panic("unreachable")
}

func TestRedialerStopsWhileConnected(t *testing.T) {
	sf := newSessionFixture(t, false)
	go func() {
		for {
			s, err := sf.ln.Accept(context.Background())
			if err != nil {
				return
			}
			_ = s.SendWelcome(Welcome{})
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	sessions := make(chan *Session, 1)
	r := &Redialer{Addr: sf.addr(), Config: sf.dialConfig(sf.agentCreds()),
		OnSession: func(ctx context.Context, s *Session) error {
			sessions <- s
			<-ctx.Done()
			return errors.New("cancelled")
		}}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	s := waitEvent(t, sessions)
	cancel()
	if err := waitEvent(t, done); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(testTimeout):
		t.Fatal("Run left the session open")
	}
}

func TestBackoffExported(t *testing.T) {
	var b Backoff
	prev := time.Duration(0)
	for i := range 8 {
		d := b.Next()
		if d < RedialMin || d > RedialMax {
			t.Fatalf("wait %d is %v", i, d)
		}
		if i < 4 && d < prev { // doubling outgrows the ±20 % jitter
			t.Fatalf("wait %d (%v) shorter than wait %d (%v)", i, d, i-1, prev)
		}
		prev = d
	}
	b.Reset()
	if d := b.Next(); d > RedialMin*12/10 {
		t.Errorf("after Reset: %v", d)
	}
}

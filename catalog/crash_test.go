package catalog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// Environment of the child process of TestPoolCrash.
const (
	crashEnvDir  = "ZTGATE_POOL_CRASH_DIR"
	crashEnvSeed = "ZTGATE_POOL_CRASH_SEED"
)

func crashCfg(dir string, clock *fakeClock) PoolConfig {
	return PoolConfig{Prefix: pfx("10.100.0.0/28"), Prefix6: pfx("fd00:ab::/120"), StateDir: dir, HoldDown: 2 * time.Second, Now: clock.Now}
}

// crashOps runs up to n pseudo-random changes against p, the same ones for
// the same seed, advancing the clock by 500ms before each. After change i
// it calls done(i), which returns false to stop. Errors the requests can
// cause (conflicts, exhaustion) are expected; any other error is returned.
func crashOps(p *Pool, clock *fakeClock, seed uint64, n int, done func(i int) bool) error {
	rng := rand.New(rand.NewPCG(seed, 0))
	s4 := p.spaces[fam4]
	for i := 1; i <= n; i++ {
		clock.Advance(500 * time.Millisecond)
		name := fmt.Sprintf("s%d", rng.IntN(20))
		var err error
		switch op := rng.IntN(10); {
		case op < 4:
			r := req(name)
			if rng.IntN(4) == 0 {
				r.VIP = s4.addr(rng.Uint64N(s4.slots))
			}
			_, err = p.Acquire(r)
		case op < 7:
			err = p.Release(name)
		default:
			var reqs []Request
			for j := range 20 {
				if rng.IntN(2) == 0 {
					reqs = append(reqs, req(fmt.Sprintf("s%d", j)))
				}
			}
			_, err = p.Reconcile(reqs)
		}
		if err != nil && !errors.Is(err, ErrPinConflict) && !errors.Is(err, ErrPoolExhausted) {
			return fmt.Errorf("change %d: %w", i, err)
		}
		if !done(i) {
			return nil
		}
	}
	return nil
}

// TestPoolCrashChild is the child process of TestPoolCrash: it changes the
// pool in a loop, printing the number of each completed change, until it
// is killed (or 5s have passed).
func TestPoolCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnvDir)
	if dir == "" {
		t.Skip("the child process of TestPoolCrash")
	}
	seed, err := strconv.ParseUint(os.Getenv(crashEnvSeed), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock()
	p := mustOpen(t, crashCfg(dir, clock))
	start := time.Now()
	err = crashOps(p, clock, seed, 1_000_000, func(i int) bool {
		fmt.Fprintf(os.Stdout, "%d\n", i) // one write: the parent sees whole lines only
		return time.Since(start) < 5*time.Second
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPoolCrash kills a process that changes the pool at random moments
// and checks every time that the state file loads and holds exactly the
// state after the last change the child reported, or after the next one.
func TestPoolCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 30 processes")
	}
	moments := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	base := t.TempDir()
	for round := range 30 {
		dir := filepath.Join(base, strconv.Itoa(round))
		seed := moments.Uint64()
		delay := time.Duration(moments.IntN(50_000)) * time.Microsecond
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			t.Parallel() // the rounds are independent processes and directories
			last := runCrashChild(t, dir, seed, delay)
			t.Logf("seed %d: killed %v after the first change, after change %d", seed, delay, last)
			checkCrashState(t, dir, seed, last)
		})
	}
}

// runCrashChild starts the child, waits for its first change, kills it
// with SIGKILL after delay and returns the number of the last change it
// reported.
func runCrashChild(t *testing.T, dir string, seed uint64, delay time.Duration) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestPoolCrashChild$", "-test.timeout=30s")
	cmd.Env = append(os.Environ(), crashEnvDir+"="+dir, crashEnvSeed+"="+strconv.FormatUint(seed, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var last atomic.Int64
	started, eof := make(chan struct{}), make(chan struct{})
	go func() { // owned: runCrashChild waits for eof
		defer close(eof)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if n, err := strconv.Atoi(sc.Text()); err == nil {
				if last.Swap(int64(n)) == 0 {
					close(started)
				}
			}
		}
	}()
	select {
	case <-started:
		time.Sleep(delay)
	case <-eof:
	case <-time.After(20 * time.Second):
		t.Error("the child reported no change in 20s")
	}
	_ = cmd.Process.Kill() // fails only if it has exited already
	<-eof
	err = cmd.Wait()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && !exit.Exited()) { // killed by the signal
		t.Fatalf("child: %v\n%s", err, stderr.Bytes())
	}
	return int(last.Load())
}

// checkCrashState checks that dir holds a consistent state equal to the
// state after change last or last+1 of the seed's sequence.
func checkCrashState(t *testing.T, dir string, seed uint64, last int) {
	t.Helper()
	p, warnings, err := OpenPool(crashCfg(dir, newFakeClock()))
	if err != nil || len(warnings) > 0 {
		t.Fatalf("reopen after the crash: %v %q", err, warnings)
	}
	checkConsistent(t, p)
	if temps, _ := filepath.Glob(filepath.Join(dir, tempPattern)); len(temps) > 0 {
		t.Errorf("temporary files left after reopening: %q", temps)
	}
	got, err := os.ReadFile(p.Path())
	if errors.Is(err, os.ErrNotExist) {
		got, err = encodeState(newTable(), p.spaces)
	}
	if err != nil {
		t.Fatal(err)
	}

	// Replay the child's changes in memory.
	clock := newFakeClock()
	cfg := crashCfg("", clock)
	replay := mustOpen(t, cfg)
	want := make([][]byte, 0, 2)
	if last == 0 {
		empty, _ := encodeState(newTable(), replay.spaces)
		want = append(want, empty)
	}
	err = crashOps(replay, clock, seed, last+1, func(i int) bool {
		if i >= last {
			enc, err := encodeState(replay.t, replay.spaces)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, enc)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if bytes.Equal(got, w) {
			return
		}
	}
	t.Errorf("state after a crash after change %d is neither the state after it nor after the next:\n%s\nwant one of\n%s", last, got, bytes.Join(want, []byte("\n")))
}

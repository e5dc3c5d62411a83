package gopool

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// eventually polls cond every millisecond for up to two seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 2000 {
		if cond() {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("%s: not within 2 s", what)
}

// TestWorkerTakesTheNextTask: tasks handed over one after the other, each
// once the last one's worker waits, run on that worker. A worker counts as
// waiting a moment before it can take a task (Go never blocks: a task that
// finds none ready gets a goroutine of its own), so a few of them may not.
func TestWorkerTakesTheNextTask(t *testing.T) {
	p := New(time.Minute, 4)
	defer p.Close()
	const tasks = 100
	done := make(chan int, 1)
	for i := range tasks {
		p.Go(func() { done <- i })
		if got := <-done; got != i {
			t.Fatalf("task %d ran, want %d", got, i)
		}
		eventually(t, "the worker waits", func() bool { return p.Waiting() >= 1 })
	}
	if n := p.Started(); n > tasks/2 {
		t.Errorf("%d goroutines started for %d tasks one after the other, want most on a kept one", n, tasks)
	}
}

func TestIdleWorkersEnd(t *testing.T) {
	for _, tc := range []struct {
		name          string
		idle          time.Duration
		maxIdle, busy int
		wantWaiting   int
	}{
		{"one worker", 200 * time.Millisecond, 4, 1, 1},
		{"bounded by maxIdle", 200 * time.Millisecond, 2, 5, 2},
		{"all kept", 200 * time.Millisecond, 8, 5, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(tc.idle, tc.maxIdle)
			defer p.Close()
			release := make(chan struct{})
			var running sync.WaitGroup
			running.Add(tc.busy)
			for range tc.busy {
				p.Go(func() { running.Done(); <-release })
			}
			running.Wait()
			close(release)
			eventually(t, "the workers wait", func() bool { return p.Waiting() == tc.wantWaiting })
			time.Sleep(tc.idle / 4)
			if n := p.Waiting(); n > tc.wantWaiting {
				t.Fatalf("%d workers wait, at most %d may", n, tc.wantWaiting)
			}
			eventually(t, "idle workers end", func() bool { return p.Waiting() == 0 })
		})
	}
}

func TestClose(t *testing.T) {
	p := New(time.Hour, 8)
	release := make(chan struct{})
	var running sync.WaitGroup
	running.Add(3)
	for range 3 { // three at once: none finds another waiting
		p.Go(func() { running.Done(); <-release })
	}
	running.Wait()
	close(release)
	eventually(t, "the workers wait", func() bool { return p.Waiting() == 3 })
	p.Close()
	p.Close() // idempotent
	eventually(t, "Close ends the waiting workers", func() bool { return p.Waiting() == 0 })
	ran := make(chan struct{})
	p.Go(func() { close(ran) })
	select {
	case <-ran:
	case <-time.After(2 * time.Second):
		t.Fatal("a task handed over after Close did not run")
	}
	// goleak (TestMain) checks that nothing stays.
}

// TestEveryTaskOnce hands tasks over from many goroutines while workers
// come and go (a short idle time): each runs exactly once.
func TestEveryTaskOnce(t *testing.T) {
	p := New(time.Millisecond, 3)
	defer p.Close()
	const senders, each = 8, 500
	var ran [senders * each]atomic.Int32
	var wg sync.WaitGroup
	wg.Add(senders * each)
	for s := range senders {
		go func() {
			for i := range each {
				p.Go(func() { ran[s*each+i].Add(1); wg.Done() })
			}
		}()
	}
	wg.Wait()
	for i := range ran {
		if n := ran[i].Load(); n != 1 {
			t.Fatalf("task %d ran %d times", i, n)
		}
	}
	if n := p.Started(); n >= senders*each {
		t.Logf("no task found a waiting worker (%d goroutines for %d tasks)", n, senders*each)
	}
}

// deep uses about n KiB of stack, as gVisor's output path or a dial does.
//
//go:noinline
func deep(n int) byte {
	var frame [1024]byte
	frame[n%1024] = byte(n)
	if n == 0 {
		return frame[0]
	}
	return deep(n-1) + frame[n%1024]
}

// BenchmarkDeepTask runs tasks that need 32 KiB of stack one after the
// other on a new goroutine each (go) and through a pool, which keeps the
// grown stack.
func BenchmarkDeepTask(b *testing.B) {
	run := func(b *testing.B, start func(func())) {
		done := make(chan struct{})
		task := func() { deep(32); done <- struct{}{} }
		for b.Loop() {
			start(task)
			<-done
		}
	}
	b.Run("go", func(b *testing.B) { run(b, func(f func()) { go f() }) })
	b.Run("pool", func(b *testing.B) {
		p := New(time.Minute, 4)
		defer p.Close()
		run(b, p.Go)
	})
}

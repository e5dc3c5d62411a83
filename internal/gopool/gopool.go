// Package gopool runs short tasks on goroutines that stay a moment after
// their task for the next one.
//
// A new goroutine starts on a small stack, and a task that goes deep —
// gVisor's TCP output path, the dial of a backend — grows it by copying
// it, several times, every time: under a rate of new connections the
// gateway spent 9 % of its CPU in runtime.newstack (a CPU profile during
// the connections/s benchmark). A goroutine that is kept keeps its grown
// stack, so the next task it takes grows nothing.
//
// A worker waits for a next task at most Idle, and at most MaxIdle wait at
// once; the rest end with their task. Idle workers are no flows' state:
// the goroutines of a gateway with idle flows still go back to their
// baseline, within Idle.
package gopool

import (
	"sync/atomic"
	"time"
)

// Defaults of a Pool's Idle and MaxIdle.
const (
	DefaultIdle    = time.Second
	DefaultMaxIdle = 64
)

// Pool runs tasks on goroutines it keeps for a while. The zero Pool is not
// usable; make one with New. Close stops the idle workers.
type Pool struct {
	tasks   chan func() // unbuffered: a send succeeds only into a waiting worker
	quit    chan struct{}
	idle    time.Duration
	maxIdle int32

	waiting atomic.Int32 // workers waiting for a task now
	closed  atomic.Bool

	started atomic.Uint64 // goroutines started
}

// New returns a pool whose workers wait up to idle for a next task, at
// most maxIdle of them at once (0: the defaults).
func New(idle time.Duration, maxIdle int) *Pool {
	if idle <= 0 {
		idle = DefaultIdle
	}
	if maxIdle <= 0 {
		maxIdle = DefaultMaxIdle
	}
	return &Pool{tasks: make(chan func()), quit: make(chan struct{}), idle: idle, maxIdle: int32(maxIdle)}
}

// Go runs task on a waiting worker, or on a new goroutine when none waits.
// It never blocks. After Close it still runs task, on a goroutine of its
// own that does not stay.
func (p *Pool) Go(task func()) {
	select {
	case p.tasks <- task:
		return
	default:
	}
	p.started.Add(1)
	go p.work(task)
}

// work runs task, then the tasks handed to it while it waits.
func (p *Pool) work(task func()) {
	task()
	var timer *time.Timer
	for {
		if p.waiting.Add(1) > p.maxIdle || p.closed.Load() {
			p.waiting.Add(-1)
			return
		}
		if timer == nil {
			timer = time.NewTimer(p.idle)
			defer timer.Stop()
		} else {
			timer.Reset(p.idle) // Go 1.23 timers: no stale tick to drain
		}
		select {
		case task = <-p.tasks:
			p.waiting.Add(-1)
			task()
		case <-timer.C:
			p.waiting.Add(-1)
			return
		case <-p.quit:
			p.waiting.Add(-1)
			return
		}
	}
}

// Close ends the waiting workers at once; a worker running a task ends
// when the task returns (Close does not wait for it: the task's owner
// knows when its tasks end). Tasks handed to Go afterwards run on
// goroutines that do not stay. Close is idempotent.
func (p *Pool) Close() {
	if !p.closed.Swap(true) {
		close(p.quit)
	}
}

// Waiting returns how many workers wait for a task now.
func (p *Pool) Waiting() int { return int(p.waiting.Load()) }

// Started returns how many goroutines the pool has started.
func (p *Pool) Started() uint64 { return p.started.Load() }

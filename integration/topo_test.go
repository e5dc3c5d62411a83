package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testlog"
)

// requireRoot skips a test that cannot create namespaces and TUN devices.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("integration test needs root (network namespaces, TUN devices): run `sudo make test`")
	}
	for _, tool := range []string{"ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("integration test needs %s (iproute2)", tool)
		}
	}
}

// needTools fails the test when a client tool is missing: CI installs them
// all, so a missing one is a broken setup, not a reason to skip.
func needTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (apt-get install it; .ci/run does)", tool)
		}
	}
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binaries builds ztgate and the test backend once per test process.
func binaries(t testing.TB) (ztgate, backend string) {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ztgate-it-bin-")
		if buildErr != nil {
			return
		}
		for _, b := range [][2]string{{"ztgate", "../cmd/ztgate"}, {"testbackend", "./testbackend"}} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(buildDir, b[0]), b[1]).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", b[0], err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	if bin := os.Getenv("ZTGATE_BIN"); bin != "" { // A/B runs of another build
		return bin, filepath.Join(buildDir, "testbackend")
	}
	return filepath.Join(buildDir, "ztgate"), filepath.Join(buildDir, "testbackend")
}

// topo is a set of network namespaces owned by one test.
type topo struct {
	t      testing.TB
	prefix string // of its namespaces: ztg<pid>.<n>, so that sweepStale knows their owner
	short  string // of its veth names (15 bytes at most): <pid mod 10000><n>
	mu     sync.Mutex
	nss    []string
	procs  []*proc
	links  int
}

var topoSeq struct {
	sync.Mutex
	n int
}

// newTopo returns an empty topology whose namespaces are removed when the
// test ends.
func newTopo(t testing.TB) *topo {
	t.Helper()
	requireRoot(t)
	topoSeq.Lock()
	topoSeq.n++
	n := topoSeq.n
	topoSeq.Unlock()
	sweepOnce.Do(func() { sweepStale(t) })
	tp := &topo{t: t, prefix: fmt.Sprintf("ztg%d.%d", os.Getpid(), n), short: fmt.Sprintf("%d%d", os.Getpid()%10000, n)}
	t.Cleanup(tp.cleanup)
	return tp
}

var sweepOnce sync.Once

// processLives reports whether pid is a process that has not exited (a
// zombie, killed and not yet reaped, has).
func processLives(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !os.IsNotExist(err)
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// staleNS matches the namespaces newTopo names, with their owner's PID.
var staleNS = regexp.MustCompile(`^ztg([0-9]+)\.[0-9]+-`)

// sweepStale deletes the namespaces a killed test binary left: ours by
// name, whose owner process is gone and in which no process runs. The
// processes in them died with the binary (Pdeathsig); their veth pairs go
// with the namespaces. A namespace whose PID is alive again (reused) is
// left alone, and so is one with a process in it: a run in another PID
// namespace sharing /run/netns (a container) would look dead from here.
// Our own PID was another process's (this run has made no namespace yet).
func sweepStale(t testing.TB) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		m := staleNS.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || processLives(pid) {
			continue
		}
		if pids, err := exec.Command("ip", "netns", "pids", name).Output(); err != nil || len(bytes.TrimSpace(pids)) > 0 {
			continue
		}
		if err := exec.Command("ip", "netns", "del", name).Run(); err == nil {
			t.Logf("deleted namespace %s, left by test process %d", name, pid)
		}
	}
}

// ns creates a namespace with loopback up and returns its full name.
func (tp *topo) ns(name string) string {
	full := tp.prefix + "-" + name
	tp.mustRun("ip", "netns", "add", full)
	tp.mu.Lock()
	tp.nss = append(tp.nss, full)
	tp.mu.Unlock()
	tp.exec(full, "ip", "link", "set", "lo", "up")
	return full
}

// link joins two namespaces with a veth pair and addresses both ends
// (CIDR notation, e.g. "198.51.100.1/24").
func (tp *topo) link(nsA, addrA, nsB, addrB string) {
	tp.mu.Lock()
	tp.links++
	n := tp.links
	tp.mu.Unlock()
	a, b := fmt.Sprintf("v%sa%d", tp.short, n), fmt.Sprintf("v%sb%d", tp.short, n)
	// Made in place: a pair made in the root namespace and moved after
	// would stay there if the test died between the two.
	tp.mustRun("ip", "link", "add", a, "netns", nsA, "type", "veth", "peer", "name", b, "netns", nsB)
	tp.exec(nsA, "ip", "addr", "add", addrA, "dev", a)
	tp.exec(nsB, "ip", "addr", "add", addrB, "dev", b)
	tp.exec(nsA, "ip", "link", "set", a, "up")
	tp.exec(nsB, "ip", "link", "set", b, "up")
}

// exec runs a command inside ns and fails the test on error.
func (tp *topo) exec(ns string, args ...string) string {
	tp.t.Helper()
	out, err := tp.try(ns, 30*time.Second, args...)
	if err != nil {
		tp.t.Fatalf("%s: %s: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
	return out
}

// try runs a command inside ns with a timeout and returns its combined output.
func (tp *topo) try(ns string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"netns", "exec", ns}, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.String(), err
}

// tryOut is try with stdout and stderr kept apart.
func (tp *topo) tryOut(ns string, timeout time.Duration, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"netns", "exec", ns}, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func (tp *topo) mustRun(args ...string) {
	tp.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		tp.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// proc is a background process started in a namespace.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// start runs a long-lived command inside ns. `ip netns exec` execs the
// command, so the PID is the command's own; the test stops it by that PID.
func (tp *topo) start(ns, name string, args ...string) *proc {
	tp.t.Helper()
	full := append([]string{"netns", "exec", ns}, args...)
	cmd := exec.Command("ip", full...)
	// Killed with the test binary, should it die before its cleanup runs
	// (a timeout's panic, SIGKILL): no process outlives the test. The
	// harness locks no goroutine to its thread, so the thread that starts
	// it lives as long as the binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		tp.t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	tp.mu.Lock()
	tp.procs = append(tp.procs, p)
	tp.mu.Unlock()
	return p
}

// stop sends SIGTERM and waits up to grace, then SIGKILL. It returns how
// long the process took to exit and its exit error.
func (p *proc) stop(grace time.Duration) (time.Duration, error) {
	select {
	case <-p.done:
		return 0, p.err
	default:
	}
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return time.Since(start), p.err
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
		return time.Since(start), fmt.Errorf("%s did not exit within %v after SIGTERM", p.name, grace)
	}
}

// waitOutput waits until the process printed s.
func (p *proc) waitOutput(t testing.TB, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(p.out.String(), s) {
		select {
		case <-p.done:
			t.Fatalf("%s exited before printing %q: %v\n%s", p.name, s, p.err, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q within %v\n%s", p.name, s, d, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (tp *topo) cleanup() {
	tp.mu.Lock()
	procs, nss := tp.procs, tp.nss
	tp.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(5 * time.Second)
		if tp.t.Failed() {
			tp.t.Logf("--- output of %s ---\n%s", procs[i].name, procs[i].out.String())
		}
	}
	for _, ns := range nss {
		exec.Command("ip", "netns", "del", ns).Run()
	}
}

// syncBuffer is a bytes.Buffer safe for a writer process and a reader test.
type syncBuffer = testlog.Buffer

// eventually retries cond every 50ms until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSweepStale: a namespace of ours whose test process is gone is
// deleted; one whose test process lives, one with a process in it, and
// any other namespace are not.
func TestSweepStale(t *testing.T) {
	requireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	gone := fmt.Sprintf("ztg%d.1-left", dead.Process.Pid)
	alive := fmt.Sprintf("ztg%d.1-kept", os.Getppid()) // the go command
	other := fmt.Sprintf("ztgx%d-other", os.Getpid())
	busy := fmt.Sprintf("ztg%d.2-busy", dead.Process.Pid) // as another PID namespace's run looks
	for _, ns := range []string{gone, alive, other, busy} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	sleeper := exec.Command("ip", "netns", "exec", busy, "sleep", "30")
	sleeper.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sleeper.Process.Kill()
		sleeper.Wait()
	}()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if out, _ := exec.Command("ip", "netns", "pids", busy).Output(); len(bytes.TrimSpace(out)) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the process in the busy namespace did not start")
		}
	}
	sweepStale(t)
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		have[name] = true
	}
	if have[gone] || !have[alive] || !have[other] || !have[busy] {
		t.Errorf("after the sweep: %s %v (want gone), %s %v, %s %v, %s %v (want kept)", gone, have[gone], alive, have[alive], other, have[other], busy, have[busy])
	}
}

package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	stressOnce sync.Once
	stressBin  string
	stressErr  error
)

// stressClient builds the hostile and heavy client once per test process.
func stressClient(t testing.TB) string {
	t.Helper()
	stressOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ztgate-it-stress-")
		if err != nil {
			stressErr = err
			return
		}
		stressBin = filepath.Join(dir, "stressclient")
		if out, err := exec.Command("go", "build", "-o", stressBin, "./stressclient").CombinedOutput(); err != nil {
			stressErr = fmt.Errorf("build stressclient: %v\n%s", err, out)
		}
	})
	if stressErr != nil {
		t.Fatal(stressErr)
	}
	return stressBin
}

// kill ends the process with SIGKILL, as a crash or the OOM killer would,
// and waits for it.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// wait waits up to d for the process to exit by itself.
func (p *proc) wait(d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		return fmt.Errorf("%s still running after %v", p.name, d)
	}
}

// scrape reads the Prometheus text exposition at url from inside ns and
// returns every sample by its full name with labels, e.g.
// `ztgate_flows_total{protocol="tcp",service="web",tenant="acme"}`.
func (tp *topo) scrape(ns, url string) (map[string]float64, error) {
	out, err := tp.try(ns, 10*time.Second, "curl", "-sS", "--max-time", "5", url)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %v: %s", url, err, out)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			m[line[:i]] = v
		}
	}
	return m, nil
}

// sumMetric adds the samples of a metric whose labels contain every one
// of labels (`reason="x"`).
func sumMetric(m map[string]float64, name string, labels ...string) float64 {
	n := 0.0
next:
	for k, v := range m {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(k, l) {
				continue next
			}
		}
		n += v
	}
	return n
}

// capEff returns the effective capability mask of a process.
func capEff(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no CapEff in /proc/%d/status", pid)
}

// runningRelayTopo is a relay topology with everything up: the backend,
// the relay, the gateway and an acme agent for each of agents; later
// names only get their namespace. It returns the topology, the agents'
// processes and web's VIP once the first agent reaches it.
func runningRelayTopo(t *testing.T, agents []string, later ...string) (*relayTopo, map[string]*proc, string) {
	t.Helper()
	r := newRelayTopo(t, append(agents, later...)...)
	r.startBackend("192.0.2.10")
	r.startRelay()
	r.startGateway()
	procs := map[string]*proc{}
	for _, a := range agents {
		procs[a] = r.startAgent(a, "acme")
	}
	return r, procs, r.waitVIP(t, agents[0])
}

// blob returns the URL of n deterministic bytes of stream seed on web at
// vip, and their SHA-256 as the backend tells it to ns.
func (l *lanTopo) blob(t *testing.T, ns, vip string, seed, n int) (url, sum string) {
	t.Helper()
	url = fmt.Sprintf("http://%s/blob?seed=%d&n=%d", vip, seed, n)
	sum, err := l.curl(ns, strings.Replace(url, "/blob?", "/blob.sha256?", 1))
	if err != nil {
		t.Fatalf("checksum of %s: %v", url, err)
	}
	return url, strings.TrimSpace(sum)
}

package testseed

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// recorder is a testing.TB that keeps what a test logs and whether it
// failed, so that Get's own failures can be checked.
type recorder struct {
	testing.TB
	logs   []string
	failed string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Logf(format string, args ...any)   { r.logs = append(r.logs, format) }
func (r *recorder) Fatalf(format string, args ...any) { r.failed = format }

func TestGet(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        uint64 // 0: a random one
		fails       bool
	}{
		{"set", "42", 42, false},
		{"largest", "18446744073709551615", 1<<64 - 1, false},
		{"unset", "", 0, false},
		{"not a number", "abc", 0, true},
		{"negative", "-1", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("ZTGATE_TESTSEED_SEED", tc.value)
			r := &recorder{TB: t}
			got := Get(r, "ZTGATE_TESTSEED_SEED")
			if fails := r.failed != ""; fails != tc.fails {
				t.Fatalf("failed %v (%q), want %v", fails, r.failed, tc.fails)
			}
			if tc.fails {
				return
			}
			if tc.want != 0 && got != tc.want {
				t.Errorf("seed %d, want %d", got, tc.want)
			}
			if tc.want == 0 && got == 0 {
				t.Errorf("seed 0 drawn") // 2⁻⁶⁴
			}
			if len(r.logs) != 1 || !strings.Contains(r.logs[0], "replays it") {
				t.Errorf("logged %q, want the seed and how to replay it", r.logs)
			}
		})
	}
}

func TestPick(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	xs := []*int{new(int), new(int), new(int)}
	*xs[0], *xs[1], *xs[2] = 1, 2, 3
	odd := func(x *int) bool { return *x%2 == 1 }
	seen := map[int]bool{}
	for range 100 {
		got := Pick(rng, xs, odd)
		if got == nil || !odd(got) {
			t.Fatalf("picked %v, want an odd element", got)
		}
		seen[*got] = true
	}
	if !seen[1] || !seen[3] {
		t.Errorf("picked %v in 100 draws, want both 1 and 3", seen)
	}
	if got := Pick(rng, xs, func(*int) bool { return false }); got != nil {
		t.Errorf("picked %v when keep accepts none", got)
	}
}

// TestWeighted: each index comes with the odds of its weight, one of
// weight 0 never.
func TestWeighted(t *testing.T) {
	weights := []int{1, 0, 3, 6}
	rng := rand.New(rand.NewPCG(1, 2))
	got := make([]int, len(weights))
	const n = 100000
	for range n {
		got[Weighted(rng, len(weights), func(i int) int { return weights[i] })]++
	}
	for i, w := range weights {
		want := n * w / 10
		if d := got[i] - want; d < -n/100 || d > n/100 {
			t.Errorf("index %d drawn %d times of %d, want about %d", i, got[i], n, want)
		}
	}
}

// Package testseed gives a randomized test its seed: the one an
// environment variable names, to replay a run, else a random one, so that
// every run tries other choices. The seed is logged either way. Pick
// chooses among a test's objects, Weighted among its steps. Only tests
// import it.
package testseed

import (
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
)

// Get returns the seed the environment variable env names, or a random one
// when it is unset, and logs it with the setting that replays it. A
// value that is not an unsigned integer fails the test.
func Get(t testing.TB, env string) uint64 {
	t.Helper()
	seed := rand.Uint64()
	if s := os.Getenv(env); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", env, s, err)
		}
		seed = v
	}
	t.Logf("seed %d (%s=%d replays it)", seed, env, seed)
	return seed
}

// Pick returns a random element of xs that keep accepts, or nil when none
// does.
func Pick[T any](rng *rand.Rand, xs []*T, keep func(*T) bool) *T {
	var ok []*T
	for _, x := range xs {
		if keep(x) {
			ok = append(ok, x)
		}
	}
	if len(ok) == 0 {
		return nil
	}
	return ok[rng.IntN(len(ok))]
}

// Weighted returns a random index below n, each drawn with the odds of
// its weight (none negative, at least one positive): a randomized test's
// choice of its next step.
func Weighted(rng *rand.Rand, n int, weight func(i int) int) int {
	total := 0
	for i := range n {
		total += weight(i)
	}
	x, i := rng.IntN(total), 0
	for x >= weight(i) {
		x -= weight(i)
		i++
	}
	return i
}

// Package archtest holds the tests that keep ztgate's architecture from
// rotting: the dependency direction of DESIGN.md §2, the single importer of
// each large dependency, a doc comment on every package, and a seed corpus
// under testdata/fuzz for every fuzz target.
package archtest

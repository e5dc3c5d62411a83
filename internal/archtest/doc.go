// Package archtest holds the tests that keep ztgate's architecture from
// rotting: the dependency direction of DESIGN.md §2, for the imports of
// every package and of its tests (a package of test files only may wire
// roles together, as an in-process end-to-end test; a building block may
// import nothing under internal but the leaf internal/promreg, and catalog
// not even that), the single importer
// of each large dependency, a doc comment on every package, and a seed
// corpus under testdata/fuzz for every fuzz target.
package archtest

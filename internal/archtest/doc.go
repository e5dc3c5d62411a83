// Package archtest holds the tests that keep ztgate's architecture from
// rotting: the dependency direction of DESIGN.md §2, the single importer of
// each large dependency, and a doc comment on every package.
package archtest

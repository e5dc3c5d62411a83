package archtest

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testPkg is a package's directory and test files, as go list reports them.
type testPkg struct {
	ImportPath   string
	Dir          string
	TestGoFiles  []string
	XTestGoFiles []string
}

// listTestPackages lists the module's packages with their test files.
func listTestPackages(t *testing.T) []testPkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json=ImportPath,Dir,TestGoFiles,XTestGoFiles", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []testPkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p testPkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// fuzzTargets returns the names of the fuzz targets declared in a test
// file: top-level functions FuzzXxx(*testing.F).
func fuzzTargets(fset *token.FileSet, path string) ([]string, error) {
	file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, d := range file.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv != nil || !isFuzzName(fn.Name.Name) || fn.Type.Params.NumFields() != 1 {
			continue
		}
		star, ok := fn.Type.Params.List[0].Type.(*ast.StarExpr)
		if !ok {
			continue
		}
		if sel, ok := star.X.(*ast.SelectorExpr); ok && sel.Sel.Name == "F" {
			names = append(names, fn.Name.Name)
		}
	}
	return names, nil
}

// isFuzzName reports whether go test treats name as a fuzz target: "Fuzz"
// not followed by a lower-case letter.
func isFuzzName(name string) bool {
	rest, ok := strings.CutPrefix(name, "Fuzz")
	return ok && (rest == "" || !(rest[0] >= 'a' && rest[0] <= 'z'))
}

// TestFuzzTargetsHaveCorpus fails when a fuzz target has no seed corpus
// under testdata/fuzz/<target>: the seeds there run with every go test and
// keep what a fuzzing run found as regression inputs.
func TestFuzzTargetsHaveCorpus(t *testing.T) {
	fset := token.NewFileSet()
	found := 0
	for _, p := range listTestPackages(t) {
		for _, name := range append(p.TestGoFiles, p.XTestGoFiles...) {
			targets, err := fuzzTargets(fset, filepath.Join(p.Dir, name))
			if err != nil {
				t.Errorf("%s: %v", p.ImportPath, err)
				continue
			}
			for _, target := range targets {
				found++
				dir := filepath.Join(p.Dir, "testdata", "fuzz", target)
				if ents, err := os.ReadDir(dir); err != nil || len(ents) == 0 {
					t.Errorf("%s.%s (%s) has no seed corpus in %s: run it with -fuzz and keep inputs there",
						p.ImportPath, target, name, dir)
				}
			}
		}
	}
	if found == 0 {
		t.Fatal("no fuzz targets found: the scan is broken")
	}
}

// TestFuzzTargetNames checks the scan against go test's own rule for what
// a fuzz target is.
func TestFuzzTargetNames(t *testing.T) {
	cases := []struct {
		name, decl string
		want       bool
	}{
		{"FuzzA", "func FuzzA(f *testing.F) {}", true},
		{"Fuzz", "func Fuzz(f *testing.F) {}", true},
		{"Fuzz_b", "func Fuzz_b(f *testing.F) {}", true},
		{"Fuzzy", "func Fuzzy(f *testing.F) {}", false},
		{"FuzzT", "func FuzzT(t *testing.T) {}", false},
		{"FuzzTwo", "func FuzzTwo(f *testing.F, n int) {}", false},
		{"fuzzLower", "func fuzzLower(f *testing.F) {}", false},
		{"FuzzMethod", "func (r) FuzzMethod(f *testing.F) {}", false},
	}
	src := "package x\n\nimport \"testing\"\n"
	for _, tc := range cases {
		src += tc.decl + "\n"
	}
	path := filepath.Join(t.TempDir(), "x_test.go")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := fuzzTargets(token.NewFileSet(), path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if slices.Contains(got, tc.name) != tc.want {
				t.Errorf("%s: found %v, want %v (all found: %q)", tc.decl, !tc.want, tc.want, got)
			}
		})
	}
}

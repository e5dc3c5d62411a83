package archtest

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/ztgate/ztgate"

type pkg struct {
	ImportPath   string
	Dir          string
	Imports      []string
	TestImports  []string // of the package's _test.go files in the package
	XTestImports []string // of its _test.go files of package <name>_test
	Doc          string
	Standard     bool
	GoFiles      []string
	TestGoFiles  []string
	XTestGoFiles []string
}

// testOnly reports whether a package has only test files: test code, such
// as in-process end-to-end tests that run several roles together.
func (p pkg) testOnly() bool {
	return len(p.GoFiles) == 0 && len(p.TestGoFiles)+len(p.XTestGoFiles) > 0
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// component returns the first path element below the module: "gateway",
// "netstack", "cmd", ...
func component(path string) string {
	rest := strings.TrimPrefix(path, module+"/")
	if i := strings.Index(rest, "/"); i >= 0 {
		return rest[:i]
	}
	return rest
}

var (
	roles          = map[string]bool{"gateway": true, "relay": true, "agent": true}
	buildingBlocks = map[string]bool{"catalog": true, "conf": true, "netstack": true, "tunnel": true, "resolver": true}
	// soleImporter names the one component allowed to import a dependency.
	soleImporter = map[string]string{
		"gvisor.dev/gvisor":            "netstack",
		"golang.zx2c4.com/wireguard":   "netstack",
		"github.com/quic-go/quic-go":   "tunnel",
		"github.com/miekg/dns":         "resolver",
		"github.com/BurntSushi/toml":   "conf",
		"github.com/fsnotify/fsnotify": "conf",
	}
)

// isStd reports whether an import path belongs to the standard library.
func isStd(path string) bool {
	first := strings.SplitN(path, "/", 2)[0]
	return !strings.Contains(first, ".")
}

// blockInternals are the packages under internal that the building blocks
// other than catalog may import: leaves that import nothing of the module.
var blockInternals = []string{module + "/internal/promreg", module + "/internal/monoclock", module + "/internal/udpseg", module + "/internal/gopool", module + "/internal/listenaddr"}

// testLibraries are third-party packages any test may import, catalog's
// included: they are not linked into the binaries.
var testLibraries = []string{"go.uber.org/goleak"}

// testInternals are the packages under internal that any test may import,
// catalog's and the building blocks' included: leaves for tests only,
// which import nothing of the module and are not linked into the binaries.
var testInternals = []string{module + "/internal/testseed", module + "/internal/testlog"}

// importViolation returns why the package path (of component from) may
// not import imp, or "" when it may. test is true for the imports of its
// test files; testOnly for a package that has only test files.
func importViolation(path, imp string, test, testOnly bool) string {
	from := component(path)
	if hasPrefixPath(imp, testInternals...) {
		if test || testOnly {
			return ""
		}
		return "only tests import " + imp
	}
	if strings.HasPrefix(imp, module+"/") {
		to := component(imp)
		switch {
		case to == "cmd":
			return "nothing imports cmd"
		case to == "integration" && from != "integration":
			return "integration is test code"
		case buildingBlocks[from] && roles[to]:
			return "building blocks never import roles"
		case from == "catalog" && to == "internal":
			return "catalog imports nothing under internal"
		case buildingBlocks[from] && to == "internal" && !hasPrefixPath(imp, blockInternals...):
			return "building blocks import nothing under internal but " + strings.Join(blockInternals, ", ")
		case buildingBlocks[from] && buildingBlocks[to] && to != from && to != "catalog":
			return "building blocks import only catalog"
		case roles[from] && roles[to] && to != from && !testOnly:
			return "roles are wired together only in cmd (and in test-only packages)"
		}
		return ""
	}
	if test && hasPrefixPath(imp, testLibraries...) {
		return ""
	}
	if from == "catalog" && !isStd(imp) {
		return "catalog is pure model, standard library only"
	}
	for dep, owner := range soleImporter {
		if hasPrefixPath(imp, dep) && from != owner {
			return "only " + owner + " may import " + dep
		}
	}
	return ""
}

// hasPrefixPath reports whether the import path imp is one of deps or
// below one.
func hasPrefixPath(imp string, deps ...string) bool {
	for _, dep := range deps {
		if imp == dep || strings.HasPrefix(imp, dep+"/") {
			return true
		}
	}
	return false
}

// TestDependencyDirection checks every import of every package, those of
// its tests included, against the dependency direction of DESIGN.md §2.
func TestDependencyDirection(t *testing.T) {
	for _, p := range listPackages(t) {
		for _, set := range []struct {
			what    string
			imports []string
			test    bool
		}{{"", p.Imports, false}, {" (tests)", p.TestImports, true}, {" (external tests)", p.XTestImports, true}} {
			for _, imp := range set.imports {
				if why := importViolation(p.ImportPath, imp, set.test, p.testOnly()); why != "" {
					t.Errorf("%s%s imports %s: %s", p.ImportPath, set.what, imp, why)
				}
			}
		}
	}
}

func TestImportRules(t *testing.T) {
	const m = module + "/"
	for _, tc := range []struct {
		path, imp      string
		test, testOnly bool
		ok             bool
	}{
		{m + "gateway", m + "netstack", false, false, true},
		{m + "gateway", m + "relay", false, false, false},
		{m + "gateway", m + "relay", true, false, false},
		{m + "gateway", m + "netstack/netstacktest", true, false, true},
		{m + "relay", m + "tunnel/tunneltest", true, false, true},
		{m + "internal/e2e", m + "relay", true, true, true},
		{m + "internal/e2e", m + "agent", true, true, true},
		{m + "internal/e2e", m + "cmd/ztgate", true, true, false},
		{m + "internal/e2e", "gvisor.dev/gvisor/pkg/tcpip", true, true, false},
		{m + "internal/e2e", m + "integration", true, true, false},
		{m + "netstack", m + "gateway", true, false, false},
		{m + "netstack", "gvisor.dev/gvisor/pkg/tcpip/header", true, false, true},
		{m + "resolver", m + "netstack/netstacktest", true, false, false},
		{m + "resolver", m + "catalog", true, false, true},
		{m + "resolver", m + "internal/promreg", false, false, true},
		{m + "tunnel", m + "internal/promreg", false, false, true},
		{m + "netstack", m + "internal/adminapi", false, false, false},
		{m + "conf", m + "internal/adminapi", true, false, false},
		{m + "catalog", m + "internal/promreg", false, false, false},
		{m + "gateway", m + "internal/adminapi", false, false, true},
		{m + "gateway", "github.com/quic-go/quic-go", true, false, false},
		{m + "gateway", "github.com/miekg/dns", false, false, false},
		{m + "catalog", "github.com/BurntSushi/toml", true, false, false},
		{m + "catalog", "go.uber.org/goleak", true, false, true},
		{m + "catalog", "go.uber.org/goleak", false, false, false},
		{m + "cmd/ztgate", "go.uber.org/goleak", true, false, true},
		{m + "integration", m + "integration/testbackend", true, false, true},
		{m + "agent", m + "integration/testbackend", true, false, false},
		{m + "catalog", m + "internal/testseed", true, false, true},
		{m + "resolver", m + "internal/testseed", true, false, true},
		{m + "gateway", m + "internal/testseed", false, false, false},
		{m + "catalog", m + "internal/testseed", false, false, false},
	} {
		why := importViolation(tc.path, tc.imp, tc.test, tc.testOnly)
		if (why == "") != tc.ok {
			t.Errorf("%s (test %v, test-only %v) imports %s: violation %q, want allowed %v",
				tc.path, tc.test, tc.testOnly, tc.imp, why, tc.ok)
		}
	}
}

func TestEveryPackageHasDocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" && !(p.testOnly() && testFilesHaveDoc(t, p)) {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}

// testFilesHaveDoc reports whether one of the test files of a test-only
// package (whose doc go list does not report) has a package comment.
func testFilesHaveDoc(t *testing.T, p pkg) bool {
	t.Helper()
	for _, name := range append(slices.Clone(p.TestGoFiles), p.XTestGoFiles...) {
		f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, name), nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
			return true
		}
	}
	return false
}

// TestNoWallClockStamps: time stamps kept as integers (flow activity,
// liveness, probe ages) come from internal/monoclock. time.Time.UnixNano
// drops the monotonic reading, so a step of the system clock would
// expire every flow at once, or keep a dead path for as long as the clock
// went back. The module's own code (not its tests) never calls it.
func TestNoWallClockStamps(t *testing.T) {
	for _, p := range listPackages(t) {
		for _, name := range p.GoFiles {
			f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, name), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok && sel.Sel.Name == "UnixNano" {
					t.Errorf("%s/%s: UnixNano: keep stamps with internal/monoclock", p.ImportPath, name)
				}
				return true
			})
		}
	}
}

package archtest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ztgate/ztgate"

type pkg struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
	Doc          string
	Standard     bool
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

// e2e is the one package whose tests wire the roles together in one
// process (cmd does it for the binary); nothing imports it.
const e2e = module + "/internal/e2e"

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

// TestDependencyDirection checks every import, of the code and of its
// tests: the rules hold for tests too, except that internal/e2e's tests
// may wire roles together.
func TestDependencyDirection(t *testing.T) {
	for _, p := range listPackages(t) {
		for _, imp := range p.Imports {
			checkImport(t, p.ImportPath, imp, false)
		}
		for _, imp := range append(p.TestImports, p.XTestImports...) {
			checkImport(t, p.ImportPath, imp, true)
		}
	}
}

// checkImport reports an import of imp by the package at path (by its
// tests when test) that DESIGN.md §2 forbids.
func checkImport(t *testing.T, path, imp string, test bool) {
	t.Helper()
	from := component(path)
	if strings.HasPrefix(imp, module+"/") {
		to := component(imp)
		switch {
		case imp == e2e && path != e2e:
			t.Errorf("%s imports %s: it is test code", path, imp)
		case path == e2e && roles[to] && !test:
			t.Errorf("%s imports role %s outside its tests", path, imp)
		case to == "cmd":
			t.Errorf("%s imports %s: nothing imports cmd", path, imp)
		case to == "integration" && from != "integration":
			t.Errorf("%s imports %s: integration is test code", path, imp)
		case buildingBlocks[from] && roles[to]:
			t.Errorf("%s imports role %s: building blocks never import roles", path, imp)
		case buildingBlocks[from] && buildingBlocks[to] && to != from && to != "catalog":
			t.Errorf("%s imports %s: building blocks import only catalog", path, imp)
		case roles[from] && roles[to] && to != from:
			t.Errorf("%s imports role %s: roles are wired together only in cmd and in internal/e2e's tests", path, imp)
		}
		return
	}
	if from == "catalog" && !isStd(imp) {
		t.Errorf("%s imports %s: catalog is pure model, standard library only", path, imp)
	}
	for dep, owner := range soleImporter {
		if (imp == dep || strings.HasPrefix(imp, dep+"/")) && from != owner {
			t.Errorf("%s imports %s: only %s may import %s", path, imp, owner, dep)
		}
	}
}

func TestEveryPackageHasDocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}

package archtest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ztgate/ztgate"

type pkg struct {
	ImportPath string
	Imports    []string
	Doc        string
	Standard   bool
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

func TestDependencyDirection(t *testing.T) {
	for _, p := range listPackages(t) {
		from := component(p.ImportPath)
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module+"/") {
				to := component(imp)
				switch {
				case to == "cmd":
					t.Errorf("%s imports %s: nothing imports cmd", p.ImportPath, imp)
				case to == "integration" && from != "integration":
					t.Errorf("%s imports %s: integration is test code", p.ImportPath, imp)
				case buildingBlocks[from] && roles[to]:
					t.Errorf("%s imports role %s: building blocks never import roles", p.ImportPath, imp)
				case buildingBlocks[from] && buildingBlocks[to] && to != from && to != "catalog":
					t.Errorf("%s imports %s: building blocks import only catalog", p.ImportPath, imp)
				case roles[from] && roles[to] && to != from:
					t.Errorf("%s imports role %s: roles are wired together only in cmd", p.ImportPath, imp)
				}
				continue
			}
			if from == "catalog" && !isStd(imp) {
				t.Errorf("%s imports %s: catalog is pure model, standard library only", p.ImportPath, imp)
			}
			for dep, owner := range soleImporter {
				if (imp == dep || strings.HasPrefix(imp, dep+"/")) && from != owner {
					t.Errorf("%s imports %s: only %s may import %s", p.ImportPath, imp, owner, dep)
				}
			}
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

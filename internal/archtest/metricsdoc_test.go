package archtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// metricDef is a metric as the code registers it, or as a row of
// docs/metrics.md lists it: its name and its sorted label names.
type metricDef struct {
	name   string
	labels []string
	where  string
}

func (d metricDef) key() string { return d.name + "{" + strings.Join(d.labels, ",") + "}" }

// wrappedLabels are the labels a package's metrics get from the registerer
// its users wrap around it (prometheus.WrapRegistererWith): the gateway
// and the agent give the resolver's a listener.
var wrappedLabels = map[string][]string{module + "/resolver": {"listener"}}

// metricConstructors are the prometheus functions whose first argument is
// an Opts literal naming a metric; the *Vec ones take the label names next.
var metricConstructors = map[string]bool{
	"NewCounter": true, "NewGauge": true, "NewHistogram": true, "NewSummary": true,
	"NewCounterFunc": true, "NewGaugeFunc": true,
	"NewCounterVec": true, "NewGaugeVec": true, "NewHistogramVec": true, "NewSummaryVec": true,
}

// TestMetricsDocumented keeps docs/metrics.md true to the code: every
// ztgate_ metric the product code registers has a row in one of the page's
// "| metric | type | labels | meaning |" tables with the same label names,
// and every such row is a metric the code registers with those labels.
// Users build dashboards and alerts from that page; the integration tests
// check only what a scrape exposes.
func TestMetricsDocumented(t *testing.T) {
	var code []metricDef
	for _, p := range listPackages(t) {
		for _, name := range p.GoFiles {
			code = append(code, registeredMetrics(t, p.ImportPath, filepath.Join(p.Dir, name))...)
		}
	}
	if len(code) < 50 {
		t.Fatalf("found %d metric registrations in the code; the parser below misses them", len(code))
	}
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := documentedMetrics(string(raw))
	if len(doc) < 50 {
		t.Fatalf("found %d metric rows in docs/metrics.md; the parser below misses them", len(doc))
	}
	has := func(defs []metricDef, d metricDef) bool {
		return slices.ContainsFunc(defs, func(o metricDef) bool { return o.key() == d.key() })
	}
	for _, d := range code {
		if !has(doc, d) {
			t.Errorf("%s registers %s; docs/metrics.md has no row for it with those labels", d.where, d.key())
		}
	}
	for _, d := range doc {
		if !has(code, d) {
			t.Errorf("docs/metrics.md %s lists %s; the code registers no such metric with those labels", d.where, d.key())
		}
	}
}

// registeredMetrics finds the ztgate_ metrics a file registers: the Opts
// literals of the prometheus constructors (with a *Vec's label names and
// the const labels), the names given to prometheus.NewDesc, and any other
// string literal that is a metric's whole name (a table of names, without
// labels).
func registeredMetrics(t *testing.T, pkgPath, path string) []metricDef {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var defs []metricDef
	seen := map[*ast.BasicLit]bool{}
	add := func(lit *ast.BasicLit, labels []string) {
		seen[lit] = true
		name, _ := strconv.Unquote(lit.Value)
		labels = append(labels, wrappedLabels[pkgPath]...)
		slices.Sort(labels)
		defs = append(defs, metricDef{name: name, labels: labels, where: fset.Position(lit.Pos()).String()})
	}
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		switch {
		case sel.Sel.Name == "NewDesc" && len(call.Args) == 4:
			if lit := metricName(call.Args[0]); lit != nil {
				add(lit, append(stringList(call.Args[2]), mapKeys(call.Args[3])...))
			}
		case metricConstructors[sel.Sel.Name]:
			opts, ok := call.Args[0].(*ast.CompositeLit)
			if !ok {
				return true
			}
			var lit *ast.BasicLit
			var labels []string
			for _, e := range opts.Elts {
				kv, ok := e.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				switch id, _ := kv.Key.(*ast.Ident); {
				case id == nil:
				case id.Name == "Name":
					lit = metricName(kv.Value)
				case id.Name == "ConstLabels":
					labels = append(labels, mapKeys(kv.Value)...)
				}
			}
			if lit == nil {
				return true
			}
			if strings.HasSuffix(sel.Sel.Name, "Vec") && len(call.Args) > 1 {
				labels = append(labels, stringList(call.Args[1])...)
			}
			add(lit, labels)
		}
		return true
	})
	ast.Inspect(f, func(n ast.Node) bool {
		if lit := metricName(n); lit != nil && !seen[lit] {
			add(lit, nil)
		}
		return true
	})
	return defs
}

// metricNameLit matches a string literal that is a whole metric name.
var metricNameLit = regexp.MustCompile(`^"ztgate_[a-z0-9_]+"$`)

// metricName returns n when it is a string literal naming a ztgate_ metric.
func metricName(n ast.Node) *ast.BasicLit {
	lit, ok := n.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING || !metricNameLit.MatchString(lit.Value) {
		return nil
	}
	return lit
}

// stringList returns the string literals of a []string{...} literal.
func stringList(e ast.Expr) []string {
	cl, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil
	}
	var out []string
	for _, el := range cl.Elts {
		if lit, ok := el.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			s, _ := strconv.Unquote(lit.Value)
			out = append(out, s)
		}
	}
	return out
}

// mapKeys returns the string keys of a map literal (prometheus.Labels{...}).
func mapKeys(e ast.Expr) []string {
	cl, ok := e.(*ast.CompositeLit)
	if !ok {
		return nil
	}
	var out []string
	for _, el := range cl.Elts {
		if kv, ok := el.(*ast.KeyValueExpr); ok {
			if lit, ok := kv.Key.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				s, _ := strconv.Unquote(lit.Value)
				out = append(out, s)
			}
		}
	}
	return out
}

var (
	// docMetricName matches a metric name in a table's first cell.
	docMetricName = regexp.MustCompile("`(ztgate_[a-z0-9_]+)`")
	// parenthesised is what a labels cell says about a label's values.
	parenthesised = regexp.MustCompile(`\([^()]*\)`)
)

// documentedMetrics reads the rows of the "| metric | type | labels |
// meaning |" tables of docs/metrics.md: the metrics of the first cell,
// each with the label names of the third ("side (server, client),
// result, reason": side, result and reason).
func documentedMetrics(doc string) []metricDef {
	var defs []metricDef
	inTable := false
	for i, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		if slices.Equal(cells, []string{"metric", "type", "labels", "meaning"}) {
			inTable = true
			continue
		}
		if !inTable || len(cells) < 4 || strings.HasPrefix(cells[0], "---") {
			continue
		}
		var labels []string
		for l := range strings.SplitSeq(parenthesised.ReplaceAllString(cells[2], ""), ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
		slices.Sort(labels)
		for _, m := range docMetricName.FindAllStringSubmatch(cells[0], -1) {
			defs = append(defs, metricDef{name: m[1], labels: labels, where: "line " + strconv.Itoa(i+1)})
		}
	}
	return defs
}

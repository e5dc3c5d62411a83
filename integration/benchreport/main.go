// Command benchreport turns the end-to-end benchmark results
// (bench-results/e2e.jsonl, one JSON object per figure) into the Markdown
// table docs/performance.md shows. Later runs of a case and path replace
// earlier ones.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
)

type result struct {
	Case      string  `json:"case"`
	Path      string  `json:"path"`
	Value     float64 `json:"value"`
	Unit      string  `json:"unit"`
	Reference string  `json:"reference"`
	Ratio     float64 `json:"ratio"`
}

func main() {
	in := flag.String("in", "bench-results/e2e.jsonl", "results file")
	flag.Parse()
	f, err := os.Open(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	defer f.Close()
	var order []string
	latest := map[string]result{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r result
		if json.Unmarshal(sc.Bytes(), &r) != nil || r.Case == "" {
			continue
		}
		key := r.Case + "\x00" + r.Path
		if _, seen := latest[key]; !seen {
			order = append(order, key)
		}
		latest[key] = r
	}
	fmt.Println("| case | path | value | vs reference |")
	fmt.Println("|---|---|---:|---|")
	for _, k := range order {
		r := latest[k]
		ratio := ""
		if r.Reference != "" {
			ratio = fmt.Sprintf("%.3f× %s", r.Ratio, strings.ReplaceAll(r.Reference, "_", " "))
		}
		fmt.Printf("| %s | %s | %s %s | %s |\n", r.Case, strings.ReplaceAll(r.Path, "_", " "), format(r.Value), r.Unit, ratio)
	}
}

func format(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

package conf

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// treeDecoder fills a raw struct from a generic tree, as produced by
// toml.Decode or json.Decoder into an any: map[string]any for tables,
// []any or []map[string]any for arrays, and scalars. It never stops at the
// first problem: every unknown key and every type mismatch is recorded with
// its full path, and the rest of the tree is still decoded.
//
// The raw structs may hold string, bool, int, pointers to those, slices and
// structs (or pointers to structs); a struct's keys are its toml tags.
type treeDecoder struct {
	errs  *errList
	table string // what the format calls a table: "table" (TOML) or "object" (JSON)
}

// decode fills out (addressable) from in; path names in.
func (d *treeDecoder) decode(path string, in any, out reflect.Value) {
	if in == nil { // JSON null: the key is unset
		return
	}
	switch out.Kind() {
	case reflect.Pointer:
		v := reflect.New(out.Type().Elem())
		d.decode(path, in, v.Elem())
		out.Set(v)
	case reflect.Struct:
		d.decodeStruct(path, in, out)
	case reflect.Slice:
		d.decodeSlice(path, in, out)
	case reflect.String:
		if s, ok := in.(string); ok {
			out.SetString(s)
			return
		}
		d.mismatch(path, "a string", in)
	case reflect.Bool:
		if b, ok := in.(bool); ok {
			out.SetBool(b)
			return
		}
		d.mismatch(path, "a boolean", in)
	case reflect.Int:
		if n, ok := integer(in); ok && n == int64(int(n)) {
			out.SetInt(n)
			return
		}
		d.mismatch(path, "an integer", in)
	default:
		panic(fmt.Sprintf("conf: raw field %s has unsupported kind %s", path, out.Kind()))
	}
}

func (d *treeDecoder) decodeStruct(path string, in any, out reflect.Value) {
	m, ok := in.(map[string]any)
	if !ok {
		d.mismatch(path, article(d.table), in)
		return
	}
	fields := fieldsByKey(out.Type())
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := join(path, quoteKey(k))
		i, known := fields[k]
		if !known {
			if near := nearestKey(k, fields); near != "" {
				d.errs.decodeErr(p, "unknown key (did you mean %s?)", quoteKey(near))
			} else {
				d.errs.decodeErr(p, "unknown key")
			}
			continue
		}
		d.decode(p, m[k], out.Field(i))
	}
}

func (d *treeDecoder) decodeSlice(path string, in any, out reflect.Value) {
	rv := reflect.ValueOf(in)
	if rv.Kind() != reflect.Slice {
		d.mismatch(path, d.arrayOf(out.Type().Elem()), in)
		return
	}
	s := reflect.MakeSlice(out.Type(), rv.Len(), rv.Len())
	for i := range rv.Len() {
		d.decode(index(path, i), rv.Index(i).Interface(), s.Index(i))
	}
	out.Set(s)
}

// arrayOf names the expected array in a message.
func (d *treeDecoder) arrayOf(elem reflect.Type) string {
	if elem.Kind() != reflect.Struct {
		return "an array"
	}
	if d.table == "table" {
		return "an array of tables"
	}
	return "an array of " + d.table + "s"
}

func (d *treeDecoder) mismatch(path, want string, got any) {
	hint := ""
	if _, isTable := got.(map[string]any); isTable && want == "an array of tables" {
		t := tablePath(path)
		hint = fmt.Sprintf(" (write [[%s]], not [%s])", t, t)
	}
	d.errs.decodeErr(path, "expected %s, got %s%s", want, describe(got, d.table), hint)
}

// integer returns the value of a TOML integer or an integral JSON number.
func integer(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case json.Number:
		i, err := n.Int64()
		return i, err == nil
	}
	return 0, false
}

// describe names a tree value's type (and short scalar value) in a message.
func describe(v any, table string) string {
	switch x := v.(type) {
	case string:
		if len(x) > 40 { // cut on a rune boundary
			i := 40
			for i > 0 && !utf8.RuneStart(x[i]) {
				i--
			}
			x = x[:i] + "…"
		}
		return "string " + strconv.Quote(x)
	case int64:
		return fmt.Sprintf("integer %d", x)
	case float64:
		return fmt.Sprintf("float %g", x)
	case json.Number:
		return "number " + x.String()
	case bool:
		return fmt.Sprintf("boolean %t", x)
	case map[string]any:
		return article(table)
	case time.Time:
		return "a datetime"
	}
	if reflect.ValueOf(v).Kind() == reflect.Slice {
		return "an array"
	}
	return "a datetime" // the TOML local date and time types
}

// article puts "a" or "an" before a word.
func article(word string) string {
	if strings.ContainsRune("aeiou", rune(word[0])) {
		return "an " + word
	}
	return "a " + word
}

// fieldsByKey maps the toml tag of each field of a raw struct to its index.
func fieldsByKey(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		if name != "" && name != "-" {
			m[name] = i
		}
	}
	return m
}

// quoteKey quotes a key for a path unless it is a bare TOML key.
func quoteKey(k string) string {
	if k == "" || strings.ContainsFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) {
		return strconv.Quote(k)
	}
	return k
}

// tablePath drops the array indexes of a key path: service[2].port → service.port.
func tablePath(path string) string {
	var b strings.Builder
	skip := false
	for _, r := range path {
		switch {
		case r == '[':
			skip = true
		case r == ']':
			skip = false
		case !skip:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// nearestKey returns the key of fields that a misspelt key most likely
// meant: the only one at the smallest edit distance (a transposition
// counting as one edit), at most 2 and less than half of key's length, so
// that a short or unrelated key gets no guess. "" when there is none.
func nearestKey(key string, fields map[string]int) string {
	best, bestD, ties := "", 3, 0
	for f := range fields {
		d := editDistance(strings.ToLower(key), f)
		switch {
		case d < bestD:
			best, bestD, ties = f, d, 1
		case d == bestD:
			ties++
		}
	}
	if ties != 1 || 2*bestD >= len(key) {
		return ""
	}
	return best
}

// editDistance is the optimal string alignment distance of a and b
// (insertions, deletions, substitutions and transpositions of adjacent
// bytes).
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

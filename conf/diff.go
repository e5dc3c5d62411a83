package conf

import (
	"errors"
	"log/slog"
	"reflect"
	"strings"

	"github.com/ztgate/ztgate/catalog"
)

// ChangedKeys names the keys whose values differ between two validated
// configurations of one role (*Gateway, *Relay or *Agent), as the file
// spells them ("relay.listen", "tun.mtu", "pin"), in the order of the
// schema. A key is named when its value as the role runs it changed: one
// whose default follows another key (tunnel.server_name from
// tunnel.server, vip_hold_down from ttl) is named when it moves with it,
// and a section that appears or goes ([tun] of a gateway behind a relay)
// is named by itself ("tun"). The names come from the `key` tags of the
// configuration types; a reload compares the running configuration with
// the file's to say what it cannot apply live. A list whose order the
// role does not act on (dns.listen, [[pin]]) is named only when its
// elements change, not when they are reordered. No change is an empty
// list, never nil: a JSON log shows it as [].
//
// Two versions of a service (*catalog.Service) are compared the same way,
// their keys named as in a [[service]] table ("backends", "port",
// "health", "max_flows"): the gateway's reload tells the fields of each
// changed service with them.
func ChangedKeys[C Gateway | Relay | Agent | catalog.Service](a, b *C) []string {
	keyOf := fieldKey
	if _, ok := any(a).(*catalog.Service); ok {
		keyOf = serviceKey
	}
	out := []string{}
	changedKeys("", reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem(), keyOf, &out)
	return out
}

// changedKeys appends to out the keys of the fields of a and b (values
// of one struct type) that differ; prefix is their section and keyOf
// names a field's key.
func changedKeys(prefix string, a, b reflect.Value, keyOf func(reflect.StructField) string, out *[]string) {
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		x, y := a.Field(i), b.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			// An embedded struct (a service's FlowLimits): its fields
			// are keys of the table it is embedded in.
			changedKeys(prefix, x, y, keyOf, out)
			continue
		}
		key := keyOf(f)
		if key == "-" {
			continue
		}
		switch {
		case key == ".":
			key = prefix
		case prefix != "":
			key = prefix + "." + key
		}
		if isSection(f.Type) {
			changedKeys(key, x, y, keyOf, out)
			continue
		}
		same := reflect.DeepEqual(x.Interface(), y.Interface())
		if !same && f.Tag.Get("order") == "any" {
			same = sameElements(x, y)
		}
		if !same {
			*out = append(*out, key)
		}
	}
}

// sameElements reports whether the slices a and b hold the same elements
// as many times each, in any order: a key tagged `order:"any"` (dns.listen,
// [[pin]]) whose order the role does not act on, so that reordering it is
// no change. The lists are short (a handful of listeners or pins).
func sameElements(a, b reflect.Value) bool {
	if a.Len() != b.Len() {
		return false
	}
	used := make([]bool, b.Len())
next:
	for i := range a.Len() {
		for j := range b.Len() {
			if !used[j] && reflect.DeepEqual(a.Index(i).Interface(), b.Index(j).Interface()) {
				used[j] = true
				continue next
			}
		}
		return false
	}
	return true
}

// fieldKey is the key a field of a configuration type stands for: its
// `key` tag, or (a field someone forgot to tag, which TestKeyTags
// refuses) its name in lower case, so that a change is still named.
func fieldKey(f reflect.StructField) string {
	if k, ok := f.Tag.Lookup("key"); ok {
		return k
	}
	return strings.ToLower(f.Name)
}

// serviceKey is the key of a [[service]] table a field of catalog.Service
// (or of the FlowLimits in it) stands for: the toml tag of the field of
// rawService of the same name, the schema being conf's (catalog does not
// know the file). A field without one (Source: where the service came
// from) is no key (TestServiceKeys checks both ways).
func serviceKey(f reflect.StructField) string {
	r, ok := reflect.TypeFor[rawService]().FieldByName(f.Name)
	if !ok {
		return "-"
	}
	name, _, _ := strings.Cut(r.Tag.Get("toml"), ",")
	return name
}

// isSection reports whether t is a section of the configuration, whose
// fields are keys of their own: a struct type with `key` tags.
func isSection(t reflect.Type) bool {
	if t.Kind() != reflect.Struct {
		return false
	}
	for i := range t.NumField() {
		if _, ok := t.Field(i).Tag.Lookup("key"); ok {
			return true
		}
	}
	return false
}

// WarnRestart logs the one warning of a reload that left keys unapplied
// (ChangedKeys less what the role applies live); none, no warning. Every
// role words it the same, so that one search of the logs finds them all.
func WarnRestart(log *slog.Logger, keys []string) {
	if len(keys) == 0 {
		return
	}
	log.Warn("configuration changed; restart to apply: "+strings.Join(keys, ", "), "restart_required", keys)
}

// ReloadRole is the reload of a role whose file's keys take effect at the
// next start but for the paths of its TLS files (the relay, the agent): it
// loads path off to the side with load; on error it logs every error
// ("reload: keeping the running configuration") and returns it. Else
// apply applies what the role takes live of next (its TLS files: their
// paths may have changed) and returns the configuration the role then
// runs, or an error, logged and returned the same way, when it applied
// nothing. The keys in which that configuration still differs from next
// are named in one warning (WarnRestart): they take effect at the next
// start.
func ReloadRole[C Relay | Agent](path string, load func(string) (*C, error), apply func(next *C) (*C, error), log *slog.Logger) error {
	next, err := load(path)
	if err == nil {
		var running *C
		if running, err = apply(next); err == nil {
			keys := ChangedKeys(running, next)
			log.Info("reloaded", "restart_required", keys)
			WarnRestart(log, keys)
			return nil
		}
	}
	var errs Errors
	if !errors.As(err, &errs) {
		errs = Errors{err}
	}
	for _, e := range errs {
		log.Error("reload: keeping the running configuration", "err", e)
	}
	return err
}

// ChangedFiles names the keys of o's files (o.Section's cert, key, ca)
// whose paths differ in next, as ChangedKeys names them: a reload may
// switch a running role to them.
func (o OwnTLS) ChangedFiles(next OwnTLS) []string {
	var keys []string
	for _, k := range []struct {
		name     string
		cur, new string
	}{{"cert", o.Cert, next.Cert}, {"key", o.Key, next.Key}, {"ca", o.CA, next.CA}} {
		if k.cur != k.new {
			keys = append(keys, o.Section+"."+k.name)
		}
	}
	return keys
}

// OwnTLS returns the relay's own TLS files.
func (r *Relay) OwnTLS() OwnTLS {
	return OwnTLS{Section: "relay", Cert: r.Cert, Key: r.Key, CA: r.CA, Insecure: r.Insecure}
}

// OwnTLS returns the agent's own TLS files, those of its [tunnel].
func (a *Agent) OwnTLS() OwnTLS { return a.Tunnel.ownTLS() }

// OwnTLS returns the files of the gateway's [tunnel], which it loads when
// the tunnel is on (tunnel.listen or tunnel.relay set).
func (g *Gateway) OwnTLS() OwnTLS { return g.Tunnel.ownTLS() }

func (t Tunnel) ownTLS() OwnTLS {
	return OwnTLS{Section: "tunnel", Cert: t.Cert, Key: t.Key, CA: t.CA, Insecure: t.Insecure}
}

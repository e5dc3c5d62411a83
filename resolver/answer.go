package resolver

import "github.com/miekg/dns"

// question is one question to answer.
type question struct {
	wire   []byte // the name in lower-case wire form
	owner  string // the name as the reply echoes it, in presentation form
	qtype  uint16
	qclass uint16
}

// answer is the zones' answer to one question, before packing.
type answer struct {
	rcode          int
	aa             bool
	forward        bool // the name is outside the zones: ask the upstreams
	ans, ns, extra []dns.RR
}

// wireLabels splits a lower-case, uncompressed wire name into its labels.
func wireLabels(wire []byte) []string {
	var labels []string
	for off := 0; off < len(wire) && wire[off] != 0; off += 1 + int(wire[off]) {
		end := min(off+1+int(wire[off]), len(wire))
		labels = append(labels, string(wire[off+1:end]))
	}
	return labels
}

// hasSuffix reports whether labels end with suffix and returns the labels
// before it.
func hasSuffix(labels, suffix []string) ([]string, bool) {
	n := len(labels) - len(suffix)
	if n < 0 {
		return nil, false
	}
	for i, l := range suffix {
		if labels[n+i] != l {
			return nil, false
		}
	}
	return labels[:n], true
}

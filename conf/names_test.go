package conf

import (
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	tests := []struct {
		name  string
		check func(string) error
		in    string
		ok    bool
	}{
		{"label", checkLabel, "web-1", true},
		{"label upper case", checkLabel, "WEB", true},
		{"label digits", checkLabel, "1web", true},
		{"label empty", checkLabel, "", false},
		{"label leading dash", checkLabel, "-web", false},
		{"label trailing dash", checkLabel, "web-", false},
		{"label underscore", checkLabel, "web_1", false},
		{"label dot", checkLabel, "web.1", false},
		{"label unicode", checkLabel, "wéb", false},
		{"label 63", checkLabel, strings.Repeat("a", 63), true},
		{"label 64", checkLabel, strings.Repeat("a", 64), false},
		{"domain", checkDomain, "ztna.internal", true},
		{"domain fqdn", checkDomain, "ztna.internal.", true},
		{"domain root", checkDomain, ".", false},
		{"domain empty label", checkDomain, "a..b", false},
		{"domain too long", checkDomain, strings.Repeat("a.", 127) + "ab", false},
		{"host name", checkHostName, "app2.corp.example", true},
		{"host name numeric", checkHostName, "10.1.1.300", false},
		{"host name numeric label inside", checkHostName, "10.corp", true},
		{"srv", checkSRVName, "_http._tcp.app.corp.example", true},
		{"srv without underscores", checkSRVName, "http.tcp.app", false},
		{"srv one label", checkSRVName, "_http", false},
		{"srv bad service", checkSRVName, "_-x._tcp.app", false},
		{"interface", checkInterfaceName, "ztgate0", true},
		{"interface 15", checkInterfaceName, "abcdefghijklmno", true},
		{"interface 16", checkInterfaceName, "abcdefghijklmnop", false},
		{"interface dot", checkInterfaceName, ".", false},
		{"interface colon", checkInterfaceName, "eth0:1", false},
		{"interface tab", checkInterfaceName, "zt\t0", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.check(tc.in)
			if (err == nil) != tc.ok {
				t.Errorf("check(%q) = %v, want ok=%t", tc.in, err, tc.ok)
			}
		})
	}
}

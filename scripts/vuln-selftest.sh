#!/usr/bin/env bash
# Checks that make vuln's check can fail (make vuln-selftest): scripts/vuln.sh
# against two made-up databases in scripts/testdata, offline. It must fail on
# an advisory for every quic-go release (the fork's base version included),
# and pass on one for a package of quic-go's dependencies that ztgate never
# calls into.
set -uo pipefail
bin=${1:?usage: scripts/vuln-selftest.sh GOVULNCHECK}
dir=$(cd "$(dirname "$0")" && pwd)/testdata
fail=0
expect() {
	local want=$1 db=$2 got
	"$dir/../vuln.sh" "$bin" -db "file://$dir/$db" >/tmp/vuln-selftest.$$ 2>&1
	got=$?
	if [ "$got" -ne "$want" ]; then
		echo "vuln-selftest: $db: exit $got, want $want"
		cat /tmp/vuln-selftest.$$
		fail=1
	else
		echo "vuln-selftest: $db: exit $got, as it should"
	fi
	rm -f /tmp/vuln-selftest.$$
}
expect 3 vulndb-quicgo
expect 0 vulndb-deps
exit $fail

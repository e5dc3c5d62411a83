#!/usr/bin/env bash
# Checks ztgate against the Go vulnerability database (make vuln). Exit 3 on
# a vulnerability found; 0 with a warning when the database is unreachable.
#
# quic-go is replaced by third_party/quic-go, a directory, which govulncheck
# knows no version of; and the patch adds API that ztgate calls, so the
# source does not build against upstream quic-go. So two passes:
#  1. ztgate as built, symbol level: the standard library and every module
#     but quic-go, reported where ztgate's code can reach them;
#  2. quic-go at the version the fork is based on (go.mod's require line),
#     package level: a program that imports quic-go, with go.mod's other
#     requirements, and no replace. A vulnerability of that version counts
#     as ztgate's, reachable or not.
set -uo pipefail
GO=${GO:-go}
bin=${1:?usage: scripts/vuln.sh GOVULNCHECK [-db URL]}
shift
unreachable() {
	echo "govulncheck could not run (exit $1; is vuln.go.dev reachable?): not checked"
	exit 0
}

echo "== ztgate (symbol level; quic-go is checked next)"
"$bin" "$@" ./...
rc=$?
case $rc in
0) ;;
3) exit 3 ;;
*) unreachable $rc ;;
esac

version=$($GO list -m -f '{{.Version}}' github.com/quic-go/quic-go) || exit 1
echo "== quic-go $version, the base of third_party/quic-go (package level)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp go.mod go.sum "$tmp"/ || exit 1
printf 'package main\n\nimport _ "github.com/quic-go/quic-go"\n\nfunc main() {}\n' >"$tmp/main.go"
(cd "$tmp" && $GO mod edit -module ztgate.invalid/vulncheck -dropreplace github.com/quic-go/quic-go &&
	$GO mod download github.com/quic-go/quic-go) || exit 1
out=$(cd "$tmp" && "$bin" "$@" -scan package ./... 2>&1)
rc=$?
echo "$out"
case $rc in
0) exit 0 ;;
3) ;;
*) unreachable $rc ;;
esac
# Findings in quic-go's own dependencies are at package level here; pass 1
# reported whether ztgate reaches them. Only quic-go's fail this pass.
if grep -q 'Found in: github.com/quic-go/quic-go@' <<<"$out"; then
	echo "quic-go $version has a known vulnerability: third_party/quic-go is built on it (third_party/README.md says how to move the fork)"
	exit 3
fi
echo "(the findings above are in quic-go's dependencies, which the first pass checked at symbol level)"

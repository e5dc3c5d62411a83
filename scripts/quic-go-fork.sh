#!/usr/bin/env bash
# third_party/quic-go is upstream quic-go, at the version go.mod requires, with
# the change in third_party/quic-go.patch and nothing else (third_party/README.md
# says why). This script makes that copy and proves it:
#
#   scripts/quic-go-fork.sh generate   rebuild third_party/quic-go from the module
#                                      proxy's copy and the patch (after an upgrade)
#   scripts/quic-go-fork.sh check      fail unless third_party/quic-go is exactly that
#
# Tests, examples, HTTP/3 and the other packages ztgate does not build are left
# out of the copy; LICENSE, go.mod and go.sum are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mod=github.com/quic-go/quic-go
fork=third_party/quic-go
patchfile=third_party/quic-go.patch

version=$(go list -m -f '{{.Version}}' "$mod")
dir=$(go mod download -json "$mod@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
if [ -z "$dir" ] || [ ! -f "$dir/go.mod" ]; then
	echo "quic-go-fork: cannot download $mod@$version" >&2
	exit 1
fi

# make DEST: the pruned upstream copy with the patch applied.
make_copy() {
	local dest=$1
	mkdir -p "$dest"
	tar -C "$dir" -cf - \
		--exclude='*_test.go' --exclude=testdata --exclude='./.*' \
		--exclude=./assets --exclude=./example --exclude=./http3 --exclude=./integrationtests \
		--exclude=./interop --exclude=./internal/mocks --exclude=./testutils --exclude=./metrics \
		--exclude=./mockgen.go --exclude=./oss-fuzz.sh --exclude='./*.md' --exclude=./codecov.yml \
		. | tar -C "$dest" --no-same-owner -xf -
	chmod -R u+w "$dest"
	(cd "$dest" && git apply --unsafe-paths -p1 "$root/$patchfile")
}

case "${1:-}" in
generate)
	rm -rf "$fork"
	make_copy "$fork"
	echo "$fork: $mod@$version with $patchfile"
	;;
check)
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	make_copy "$tmp/quic-go"
	if ! diff -r "$tmp/quic-go" "$fork"; then
		echo "quic-go-fork: $fork is not $mod@$version with $patchfile; run scripts/quic-go-fork.sh generate" >&2
		exit 1
	fi
	echo "$fork is $mod@$version with $patchfile, nothing else"
	;;
*)
	echo "usage: $0 generate|check" >&2
	exit 2
	;;
esac

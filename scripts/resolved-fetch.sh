#!/usr/bin/env bash
# Unpacks Debian's systemd-resolved, and the libsystemd-shared of the same
# version, into DEST (default .cache/systemd-resolved) without installing
# them: the integration test TestAgentSystemdResolved runs it in a namespace
# of its own, with its own D-Bus, and points an agent at it. Installing the
# package would take over the machine's /etc/resolv.conf. Where apt-get is
# missing the test skips, and says so.
set -euo pipefail
dest=${1:-.cache/systemd-resolved}
[ -x "$dest/lib/systemd/systemd-resolved" ] && exit 0
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
	echo "resolved-fetch: no apt-get: TestAgentSystemdResolved will skip" >&2
	exit 0
fi
sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sandbox=() # apt's _apt user cannot write into our temporary directory
[ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
fetch() { (cd "$tmp" && apt-get download -q "${sandbox[@]}" "$@"); }
if ! fetch systemd-resolved >/dev/null 2>&1; then
	$sudo apt-get update -q
	fetch systemd-resolved
fi
version=$(dpkg-deb -f "$tmp"/systemd-resolved_*.deb Version)
fetch "libsystemd-shared=$version"
mkdir -p "$dest.new"
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dest.new"; done
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "resolved-fetch: systemd-resolved unpacked into $dest"

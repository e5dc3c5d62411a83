#!/usr/bin/env bash
# Unpacks Debian's systemd-resolved into DEST (default .cache/systemd-resolved)
# without installing it: the integration test TestAgentSystemdResolved runs it
# in a namespace of its own, with its own D-Bus, and points an agent at it.
# Installing the package would take over the machine's /etc/resolv.conf.
# Where apt-get is missing the test skips, and says so.
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
chmod 755 "$tmp" # apt-get download writes as _apt where it can
if ! (cd "$tmp" && apt-get download -q systemd-resolved >/dev/null 2>&1); then
	$sudo apt-get update -q
	(cd "$tmp" && apt-get download -q systemd-resolved)
fi
mkdir -p "$dest"
dpkg-deb -x "$tmp"/systemd-resolved_*.deb "$dest"
echo "resolved-fetch: systemd-resolved unpacked into $dest"

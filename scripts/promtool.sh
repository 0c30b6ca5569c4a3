#!/usr/bin/env bash
# Print the path of a promtool: the one on PATH, or Debian's prometheus package unpacked into
# .devstack/prometheus (downloaded once, not installed: no service is started).
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
root="$(cd "$(dirname "$0")/.." && pwd)/.devstack/prometheus"
tool="$root/usr/bin/promtool"
if [ ! -x "$tool" ]; then
    mkdir -p "$root/deb"
    (cd "$root/deb" && apt-get download prometheus >/dev/null 2>&1) || {
        echo "promtool: 'apt-get download prometheus' failed (no Debian package index?)" >&2
        exit 1
    }
    dpkg-deb -x "$root"/deb/prometheus_*.deb "$root"
fi
echo "$tool"

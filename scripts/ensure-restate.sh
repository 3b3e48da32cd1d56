#!/usr/bin/env bash
# Install restate-server (npm package @restatedev/restate-server-linux-x64) under .tools/restate,
# once, and print the binary's path. Idempotent; used by `make setup`, the Restate adapter's test
# fixtures and the benchmark harness. Only npm's registry is needed (no Docker, no GitHub).
set -euo pipefail
VERSION="${RESTATE_VERSION:-1.7.12}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$ROOT/.tools/restate-$VERSION"
BIN="$DIR/package/bin/restate-server"
if [ ! -x "$BIN" ]; then
    mkdir -p "$DIR"
    tmp="$(mktemp -d "$DIR/.dl.XXXXXX")"
    (cd "$tmp" && npm pack --silent "@restatedev/restate-server-linux-x64@$VERSION" >/dev/null)
    tar xzf "$tmp"/*.tgz -C "$tmp"
    rm -rf "$DIR/package" && mv "$tmp/package" "$DIR/package" && rm -rf "$tmp"
    chmod +x "$BIN"
fi
echo "$BIN"

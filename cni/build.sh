#!/usr/bin/env bash
# Build the CNI plugin: cni/meshnode-cni, a static binary from Go's standard library only.
# Used by `make setup` (scripts/setup.sh), the image (deploy/Dockerfile) and tests/cni.
# Nothing is fetched: there are no modules to download (GOPROXY=off makes sure), and
# -buildvcs=false keeps the go tool from running git. Fast when the binary is up to date.
set -euo pipefail
cd "$(dirname "$0")"
out=meshnode-cni
if [ -x "$out" ] && [ -z "$(find go.mod cmd -newer "$out" -print -quit)" ]; then
  exit 0
fi
# Written beside and renamed: a runtime or test exec'ing the plugin never sees half a file.
tmp=$(mktemp ".$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
CGO_ENABLED=0 GOPROXY=off \
  go build -trimpath -buildvcs=false -ldflags='-s -w' -o "$tmp" ./cmd/meshnode-cni
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT

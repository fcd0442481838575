#!/usr/bin/env bash
# Builds the interop programs goagent and goserver (opamp-go based).
#
#   interop/build.sh [OUT_DIR]     default OUT_DIR: interop/bin (gitignored)
#
# go.mod and go.sum are committed, so the build runs with -mod=readonly: it may
# download the pinned modules from the Go module proxy but never edits go.mod.
# Exit status: 0 on success, 127 when `go` is not on PATH, otherwise go's own
# (for example when the module proxy cannot be reached). Prints OUT_DIR on success.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/bin}"

if ! command -v go >/dev/null 2>&1; then
    echo "interop/build.sh: 'go' is not on PATH; install Go 1.24 or newer to build the opamp-go interop programs" >&2
    exit 127
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$here"
# -buildvcs=false: a fresh CI clone may not satisfy git's ownership checks.
go build -mod=readonly -trimpath -buildvcs=false -o "$out/" ./cmd/goagent ./cmd/goserver
echo "$out"

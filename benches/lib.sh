# Sourced by the benches/run-*.sh scripts: strict mode, the workspace root as
# the working directory, target/load for the results, and shared steps.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mkdir -p target/load

# The script's name, for its messages.
script="$(basename "$0")"

# The current UTC time as it appears in result file names.
stamp_now() { date -u +%Y%m%dT%H%M%SZ; }

# build_go_tool CMD WHAT: builds interop/cmd/CMD into interop/bin; WHAT says
# what the script needs it for when `go` is missing.
build_go_tool() {
    if ! command -v go >/dev/null 2>&1; then
        echo "$script: 'go' is not on PATH; needed for $2" >&2
        exit 127
    fi
    (cd interop && go build -mod=readonly -trimpath -buildvcs=false -o bin/ "./cmd/$1")
}

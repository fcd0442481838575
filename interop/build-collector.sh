#!/usr/bin/env bash
# Builds the OpenTelemetry Collector programs the Collector interop tests run:
#
#   opampsupervisor  the Collector's OpAMP supervisor (opentelemetry-collector-contrib/cmd/opampsupervisor)
#   otelcol-opamp    a minimal Collector built with the OpenTelemetry Collector Builder (ocb): the OTLP
#                    receiver, the debug exporter and the OpAMP extension (opampextension), plus the nop
#                    receiver and exporter, which the supervisor's bootstrap config needs whenever its
#                    probe of the Collector's feature gates comes back empty (it sometimes loses that
#                    output), nothing else
#
#   interop/build-collector.sh [OUT_DIR]
#
# Everything comes from the Go module proxy at the pinned versions below. The default OUT_DIR is a cache
# directory keyed by the version and by this script's own checksum (so editing the component list or a
# version builds afresh):
#   ${OPAMP_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/opamp-rs}/collector-<version>-<checksum>
# When both programs are already there nothing is built. Go's own build cache makes a rebuild after a
# checksum change quick too. Builds are serialised with flock (when available) and land in OUT_DIR with a
# rename, so test processes running at the same time never see a half-written program.
#
# Exit status: 0 on success (prints OUT_DIR on stdout as the last line), 127 when `go` is not on PATH,
# otherwise the failing step's (for example when the module proxy cannot be reached). Progress goes to stderr.
set -euo pipefail

# One Collector release for everything: contrib v0.149.0 (supervisor, extension) goes with core v0.149.0 /
# v1.55.0, which is also what ocb v0.149.0 generates by default.
COLLECTOR_VERSION=v0.149.0
SUPERVISOR_MODULE=github.com/open-telemetry/opentelemetry-collector-contrib/cmd/opampsupervisor
EXTENSION_MODULE=github.com/open-telemetry/opentelemetry-collector-contrib/extension/opampextension
BUILDER_MODULE=go.opentelemetry.io/collector/cmd/builder

log() { echo "interop/build-collector.sh: $*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    log "'go' is not on PATH; install Go 1.25 or newer to build the Collector programs"
    exit 127
fi

script="${BASH_SOURCE[0]}"
checksum="$(sha256sum "$script" | cut -c1-12)"
cache_root="${OPAMP_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/opamp-rs}"
out="${1:-$cache_root/collector-$COLLECTOR_VERSION-$checksum}"

built() { [[ -x "$out/opampsupervisor" && -x "$out/otelcol-opamp" ]]; }

if built; then
    echo "$out"
    exit 0
fi

parent="$(dirname "$out")"
mkdir -p "$parent"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$out.lock"
    flock 9
    # Another process may have finished the build while we waited.
    if built; then
        echo "$out"
        exit 0
    fi
fi

# Next to OUT_DIR, so the final rename stays on one file system (atomic).
work="$(mktemp -d "$parent/.build-collector.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
stage="$work/out"
mkdir -p "$stage"
# -buildvcs=false: nothing here is a git checkout of the module being built.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"

# The supervisor's go.mod carries replace directives (for its tests), so `go install module@version`
# refuses it: build it from a writable copy of the downloaded module instead.
log "building opampsupervisor $COLLECTOR_VERSION"
supervisor_dir="$(cd "$work" && go mod download -json "$SUPERVISOR_MODULE@$COLLECTOR_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
if [[ -z "$supervisor_dir" || ! -d "$supervisor_dir" ]]; then
    log "go mod download did not give a directory for $SUPERVISOR_MODULE@$COLLECTOR_VERSION"
    exit 1
fi
cp -R "$supervisor_dir" "$work/supervisor"
chmod -R u+w "$work/supervisor"
(cd "$work/supervisor" && go build -trimpath -o "$stage/opampsupervisor" .)

log "installing the Collector Builder $COLLECTOR_VERSION"
GOBIN="$work/tools" go install -trimpath "$BUILDER_MODULE@$COLLECTOR_VERSION"

log "building otelcol-opamp (otlp and nop receivers, debug and nop exporters, opamp extension)"
cat >"$work/manifest.yaml" <<EOF
dist:
  module: opamp-rs.invalid/interop/otelcol-opamp
  name: otelcol-opamp
  description: Minimal OpenTelemetry Collector for the opamp-rs interop tests
  version: ${COLLECTOR_VERSION#v}
  output_path: $work/collector
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver $COLLECTOR_VERSION
  - gomod: go.opentelemetry.io/collector/receiver/nopreceiver $COLLECTOR_VERSION
exporters:
  - gomod: go.opentelemetry.io/collector/exporter/debugexporter $COLLECTOR_VERSION
  - gomod: go.opentelemetry.io/collector/exporter/nopexporter $COLLECTOR_VERSION
extensions:
  - gomod: $EXTENSION_MODULE $COLLECTOR_VERSION
EOF
"$work/tools/builder" --config "$work/manifest.yaml" >"$work/builder.log" 2>&1 || {
    cat "$work/builder.log" >&2
    exit 1
}
cp "$work/collector/otelcol-opamp" "$stage/otelcol-opamp"

rm -rf "$out"
mv "$stage" "$out"
log "built into $out"
echo "$out"

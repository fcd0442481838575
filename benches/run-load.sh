#!/usr/bin/env bash
# Server load comparison: the same loadgen runs against
#   opamp-rs-example  the example fleet server (examples/fleet-server, --store memory),
#   opamp-rs-bare     benches' loadserver (opamp-server with its defaults),
#   opamp-go          interop/cmd/goloadserver (opamp-go's server, bare),
# one after the other, then prints the comparison (ratios against opamp-go).
#
#   benches/run-load.sh                 # 5000 idle agents, 1000 busy ones
#   LOAD_AGENTS=15000 benches/run-load.sh
#
# Scenarios (each loadgen run is bounded by `timeout`; loopback only):
#   ws-idle          LOAD_AGENTS WebSocket agents, heartbeat 30 s; RSS sampled at
#                    1k/5k/10k/15k connected; config push to all; reconnect storm
#                    (server killed, restarted, time until every agent is back)
#   ws-throughput    LOAD_BUSY_AGENTS WebSocket agents in a closed loop (next
#                    heartbeat as soon as the reply arrives)
#   http-throughput  LOAD_BUSY_AGENTS plain-HTTP agents polling in a closed loop
#
# Environment: LOAD_AGENTS (5000), LOAD_BUSY_AGENTS (1000), LOAD_DURATION (20s),
# LOAD_RAMP_RATE (1000), LOAD_STORM (1), LOAD_SERVERS ("example bare go"; also
# bare-nostate: loadserver --no-state, the registry without status tracking),
# LOAD_SCENARIOS ("ws-idle ws-throughput http-throughput"), LOAD_OUT (JSON lines
# file, default target/load/results-<time>.jsonl), LOAD_BIN (directory of the
# Rust binaries, default target/release; with LOAD_NO_BUILD=1 nothing is built,
# e.g. to measure binaries saved from an earlier commit).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

agents="${LOAD_AGENTS:-5000}"
busy_agents="${LOAD_BUSY_AGENTS:-1000}"
duration="${LOAD_DURATION:-20s}"
ramp_rate="${LOAD_RAMP_RATE:-1000}"
storm="${LOAD_STORM:-1}"
servers="${LOAD_SERVERS:-example bare go}"
scenarios="${LOAD_SCENARIOS:-ws-idle ws-throughput http-throughput}"
out="${LOAD_OUT:-target/load/results-$(stamp_now).jsonl}"

bin="${LOAD_BIN:-target/release}"
if [[ "${LOAD_NO_BUILD:-0}" != 1 ]]; then
    echo "== building (release)" >&2
    cargo build --release -q -p opamp-benches --bins
    cargo build --release -q -p opamp-fleet-server
fi
build_go_tool goloadserver "the opamp-go server"

loadgen="$bin/loadgen"
# Below the ephemeral range (32768-60999 here): the load generator's own
# outgoing connections would otherwise take a later server's port.
port=23200

# server_args NAME PORT: sets `label`, `command` and `push` for one server.
server_args() {
    local name="$1" port="$2"
    case "$name" in
    example)
        label=opamp-rs-example
        command="env RUST_LOG=warn $bin/opamp-fleet-server --store memory --listen 127.0.0.1:$port --web-listen 127.0.0.1:$((port + 1)) --data-dir target/load/data"
        push="api=http://127.0.0.1:$((port + 1))"
        ;;
    bare)
        label=opamp-rs-bare
        command="$bin/loadserver --listen 127.0.0.1:$port"
        push=stdin
        ;;
    bare-nostate)
        label=opamp-rs-bare-nostate
        command="$bin/loadserver --no-state --listen 127.0.0.1:$port"
        push=stdin
        ;;
    go)
        label=opamp-go
        command="interop/bin/goloadserver --listen 127.0.0.1:$port"
        push=stdin
        ;;
    *)
        echo "run-load.sh: unknown server $name (use example, bare, bare-nostate, go)" >&2
        exit 2
        ;;
    esac
    # Server logs go to a file, not into the report.
    command="$command 2>>target/load/$label.stderr.log"
}

# run SCENARIO SERVER PUSH(0/1) LOADGEN-FLAGS...
run() {
    local scenario="$1" name="$2" with_push="$3"
    shift 3
    port=$((port + 2))
    server_args "$name" "$port"
    local push_flags=()
    if [[ "$with_push" == 1 ]]; then push_flags=(--push "$push"); fi
    echo "== $scenario: $label" >&2
    local scheme=ws
    if [[ "$scenario" == http-* ]]; then scheme=http; fi
    # A failed run is reported and skipped; the comparison shows what ran.
    timeout 900 "$loadgen" \
        --url "$scheme://127.0.0.1:$port/v1/opamp" \
        --server-cmd "$command" \
        --label "$label" --scenario "$scenario" --json-out "$out" \
        --ramp-rate "$ramp_rate" --duration "$duration" \
        "${push_flags[@]}" "$@" || echo "run-load.sh: $scenario against $label failed ($?)" >&2
    # Let sockets of the previous run drain before the next one.
    sleep 2
}

for scenario in $scenarios; do
    for name in $servers; do
        case "$scenario" in
        ws-idle)
            storm_flags=()
            if [[ "$storm" == 1 ]]; then storm_flags=(--storm --storm-down 2s); fi
            run ws-idle "$name" 1 --agents "$agents" --heartbeat 30s \
                --sample-at 1000,5000,10000,15000 "${storm_flags[@]}"
            ;;
        ws-throughput)
            run ws-throughput "$name" 0 --agents "$busy_agents" --heartbeat 0 --sample-at 0
            ;;
        http-throughput)
            run http-throughput "$name" 0 --agents "$busy_agents" --heartbeat 0 --sample-at 0
            ;;
        *)
            echo "run-load.sh: unknown scenario $scenario" >&2
            exit 2
            ;;
        esac
    done
done

echo "== comparison ($out; ratios are each run ÷ opamp-go)" >&2
"$loadgen" --compare "$out" --baseline opamp-go

#!/usr/bin/env bash
# Client cost at fleet size: N OpAMP clients in one process against one bare
# server (benches' loadserver), for WebSocket and plain HTTP:
#   opamp-client   loadgen --opamp-clients (every agent a real OpampClient)
#   example-agent  the example agent, `agent --count N` (measured from /proc)
#   opamp-go       interop/cmd/goclients (N opamp-go clients; a tool only)
# Each reports RSS per idle client over its baseline, CPU time per heartbeat
# and the connect rate as a JSON line; the comparison divides by opamp-go.
#
#   benches/run-clients.sh
#   CLIENTS_AGENTS="5000 15000" benches/run-clients.sh
#
# Environment: CLIENTS_AGENTS ("5000"), CLIENTS_HEARTBEAT (10s),
# CLIENTS_DURATION (30s), CLIENTS_RAMP_RATE (1000), CLIENTS_TRANSPORTS
# ("ws http"), CLIENTS_IMPLS ("opamp-client example-agent opamp-go"),
# CLIENTS_OUT (JSON lines, default target/load/clients-<time>.jsonl),
# CLIENTS_PORT (first server port, 24300; below the ephemeral range),
# CLIENTS_SKIP_BUILD=1 (use the binaries already built).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

counts="${CLIENTS_AGENTS:-5000}"
heartbeat="${CLIENTS_HEARTBEAT:-10s}"
duration="${CLIENTS_DURATION:-30s}"
ramp_rate="${CLIENTS_RAMP_RATE:-1000}"
transports="${CLIENTS_TRANSPORTS:-ws http}"
impls="${CLIENTS_IMPLS:-opamp-client example-agent opamp-go}"
port="${CLIENTS_PORT:-24300}"
out="${CLIENTS_OUT:-target/load/clients-$(stamp_now).jsonl}"

if [[ "${CLIENTS_SKIP_BUILD:-0}" != 1 ]]; then
    echo "== building (release)" >&2
    cargo build --release -q -p opamp-benches --bins
    cargo build --release -q -p opamp-agent
fi
build_go_tool goclients "opamp-go's clients"

loadgen=target/release/loadgen

# run IMPL SCHEME COUNT
run() {
    local impl="$1" scheme="$2" count="$3"
    port=$((port + 1))
    local url="$scheme://127.0.0.1:$port/v1/opamp"
    local scenario="clients-$scheme-$count"
    # loadgen starts the server itself; goclients gets one started here,
    # fed an open stdin (loadserver stops at end of input).
    local server="target/release/loadserver --listen 127.0.0.1:$port"
    echo "== $scenario: $impl" >&2
    case "$impl" in
    opamp-client)
        timeout 900 "$loadgen" --opamp-clients --url "$url" --agents "$count" \
            --server-cmd "$server 2>>target/load/loadserver.stderr.log" \
            --heartbeat "$heartbeat" --duration "$duration" --ramp-rate "$ramp_rate" \
            --label opamp-client --scenario "$scenario" --json-out "$out" >&2 ||
            echo "run-clients.sh: $scenario $impl failed ($?)" >&2
        ;;
    example-agent)
        local state
        state="$(mktemp -d target/load/agent-state.XXXXXX)"
        timeout 900 "$loadgen" --clients-cmd \
            "env RUST_LOG=warn target/release/opamp-agent --count $count --endpoint $url --state-dir $state --heartbeat $heartbeat 2>>target/load/agent.stderr.log" \
            --url "$url" --agents "$count" \
            --server-cmd "$server 2>>target/load/loadserver.stderr.log" \
            --heartbeat "$heartbeat" --duration "$duration" \
            --label example-agent --scenario "$scenario" --json-out "$out" >&2 ||
            echo "run-clients.sh: $scenario $impl failed ($?)" >&2
        rm -rf "$state"
        ;;
    opamp-go)
        local fifo
        fifo="$(mktemp -u target/load/server-stdin.XXXXXX)"
        mkfifo "$fifo"
        $server <"$fifo" >/dev/null 2>>target/load/loadserver.stderr.log &
        local server_pid=$!
        exec {hold}>"$fifo"
        timeout 900 interop/bin/goclients --url "$url" --agents "$count" \
            --heartbeat "$heartbeat" --duration "$duration" --ramp-rate "$ramp_rate" \
            --label opamp-go --scenario "$scenario" --json-out "$out" >&2 ||
            echo "run-clients.sh: $scenario $impl failed ($?)" >&2
        exec {hold}>&-
        wait "$server_pid" || true
        rm -f "$fifo"
        ;;
    *)
        echo "run-clients.sh: unknown implementation $impl" >&2
        exit 2
        ;;
    esac
    sleep 2
}

for count in $counts; do
    for transport in $transports; do
        for impl in $impls; do
            run "$impl" "$transport" "$count"
        done
    done
done

echo "== comparison ($out; ratios are each run ÷ opamp-go)" >&2
"$loadgen" --compare "$out" --baseline opamp-go

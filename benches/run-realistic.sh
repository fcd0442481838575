#!/usr/bin/env bash
# Memory per realistic agent: the example fleet server (`server --store memory`)
# and the example agent process (`agent --count N`, each agent with description,
# health tree, effective config, available components, package statuses).
#
#   benches/run-realistic.sh               # 5000 agents
#   REALISTIC_AGENTS=2000 benches/run-realistic.sh
#
# Steps: start the server, sample its RSS (baseline); start one agent process
# with --count N; wait until N WebSocket connections are established on the
# server port and the server's RSS has stopped growing; sample both processes
# (VmRSS from /proc/PID/status, plus smaps_rollup's Anonymous); print
# KiB per agent = (server RSS - baseline) / N and agent RSS / N. Loopback only.
#
# Environment: REALISTIC_AGENTS (5000), REALISTIC_PORT (random in 44000-51998), REALISTIC_SETTLE
# (seconds of stable RSS to wait for, 10), REALISTIC_OUT (JSON lines, default
# target/load/realistic-<time>.jsonl), SERVER_ENV / AGENT_ENV (extra environment,
# e.g. "MALLOC_ARENA_MAX=2"), REALISTIC_BIN (directory of the binaries, default
# target/release; REALISTIC_NO_BUILD=1 skips the build).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

agents="${REALISTIC_AGENTS:-5000}"
# Default: a random even port, so parallel sessions rarely collide.
port="${REALISTIC_PORT:-$((44000 + RANDOM % 4000 * 2))}"
settle="${REALISTIC_SETTLE:-10}"
out="${REALISTIC_OUT:-target/load/realistic-$(stamp_now).jsonl}"
work="$(mktemp -d target/load/realistic.XXXXXX)"

bin="${REALISTIC_BIN:-target/release}"
if [[ "${REALISTIC_NO_BUILD:-0}" != 1 ]]; then
    echo "== building (release)" >&2
    cargo build --release -q -p opamp-fleet-server -p opamp-agent
fi
ulimit -n "$(ulimit -Hn)"

server_pid=""
agent_pid=""
cleanup() {
    [[ -n "$agent_pid" ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
anon_kib() { awk '/^Anonymous:/ {print $2}' "/proc/$1/smaps_rollup"; }
established() {
    ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l
}
# Waits until the RSS of PID has not grown by more than 1 % for $settle seconds.
wait_stable() {
    local pid="$1" last now stable=0
    last="$(rss_kib "$pid")"
    while ((stable < settle)); do
        sleep 1
        now="$(rss_kib "$pid")"
        if ((now > last + last / 100)); then stable=0; else stable=$((stable + 1)); fi
        last="$now"
    done
}

echo "== server" >&2
env RUST_LOG=warn ${SERVER_ENV:-} "$bin/opamp-fleet-server" --store memory \
    --listen "127.0.0.1:$port" --web-listen "127.0.0.1:$((port + 1))" \
    --data-dir "$work/server" 2>>target/load/realistic-server.stderr.log &
server_pid=$!
for _ in $(seq 1 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "run-realistic.sh: the server exited (see target/load/realistic-server.stderr.log)" >&2
        exit 1
    fi
    if ss -Htln "( sport = :$port )" | grep -q .; then break; fi
    sleep 0.1
done
wait_stable "$server_pid"
server_before="$(rss_kib "$server_pid")"
server_anon_before="$(anon_kib "$server_pid")"

echo "== $agents agents (one process)" >&2
start="$(date +%s)"
env RUST_LOG=warn ${AGENT_ENV:-} "$bin/opamp-agent" --count "$agents" \
    --endpoint "ws://127.0.0.1:$port/v1/opamp" --state-dir "$work/agents" \
    2>>target/load/realistic-agent.stderr.log &
agent_pid=$!
while (($(established) < agents)); do
    if ! kill -0 "$agent_pid" 2>/dev/null; then
        echo "run-realistic.sh: the agent process exited" >&2
        exit 1
    fi
    if (($(date +%s) - start > 600)); then
        echo "run-realistic.sh: only $(established) of $agents connected after 600 s" >&2
        exit 1
    fi
    sleep 1
done
connected_after=$(($(date +%s) - start))
wait_stable "$server_pid"
wait_stable "$agent_pid"

server_after="$(rss_kib "$server_pid")"
server_anon_after="$(anon_kib "$server_pid")"
agent_rss="$(rss_kib "$agent_pid")"
agent_anon="$(anon_kib "$agent_pid")"
connected="$(established)"

per_server="$(awk -v a="$server_after" -v b="$server_before" -v n="$agents" 'BEGIN {printf "%.1f", (a - b) / n}')"
per_agent="$(awk -v a="$agent_rss" -v n="$agents" 'BEGIN {printf "%.1f", a / n}')"
printf '%s\n' \
    "agents:                 $agents ($connected connected, all after ${connected_after}s)" \
    "server RSS before:      $((server_before / 1024)) MiB" \
    "server RSS after:       $((server_after / 1024)) MiB (anonymous $((server_anon_after / 1024)) MiB)" \
    "server per agent:       $per_server KiB" \
    "agent process RSS:      $((agent_rss / 1024)) MiB (anonymous $((agent_anon / 1024)) MiB)" \
    "agent process per agent: $per_agent KiB"
printf '{"date":"%s","agents":%s,"server_rss_before_kib":%s,"server_rss_after_kib":%s,"server_anon_before_kib":%s,"server_anon_after_kib":%s,"server_kib_per_agent":%s,"agent_rss_kib":%s,"agent_anon_kib":%s,"agent_kib_per_agent":%s}\n' \
    "$(date -u +%FT%TZ)" "$agents" "$server_before" "$server_after" "$server_anon_before" \
    "$server_anon_after" "$per_server" "$agent_rss" "$agent_anon" "$per_agent" >>"$out"

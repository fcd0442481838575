#!/usr/bin/env bash
# Several fleet server instances on one PostgreSQL (opamp-server-postgres),
# measured in one run next to one instance with --store memory and opamp-go's
# bare server. Loopback only; a throw-away cluster from .ci/postgres.sh.
#
#   benches/run-multi.sh                         # 15000 agents
#   MULTI_AGENTS=5000 benches/run-multi.sh
#   FLEET_SERVER_BIN=target/release/opamp-fleet-server benches/run-multi.sh
#
# Phases (results: target/load/multi-<time>.jsonl and .txt):
#   writes    MULTI_WRITE_AGENTS agents (heartbeat 1 s) on instances 2 and 3;
#             database writes counted over a 20 s heartbeat-only window, then
#             one config push per agent through instance 1's API (every push
#             crosses instances): writes per push (one status change each) and
#             push -> APPLIED latency (loadgen's push report).
#   ws-idle   MULTI_AGENTS agents (heartbeat 30 s) spread over the 3 instances:
#             RSS and CPU summed over the 3, push via instance 1, then instance 1
#             is SIGKILLed and restarted (loadgen --storm): time until every
#             agent is connected again. Then the same scenario against one
#             instance with --store memory and against opamp-go
#             (benches/run-load.sh), and the comparison (ratios to opamp-go).
#   size      rows and bytes of the tables after the run.
#
# Environment: MULTI_AGENTS (15000), MULTI_WRITE_AGENTS (1000), FLEET_SERVER_BIN
# (default: build and use target/release/opamp-fleet-server),
# MULTI_COMPARE (1: also run --store memory and opamp-go).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

agents="${MULTI_AGENTS:-15000}"
write_agents="${MULTI_WRITE_AGENTS:-1000}"
compare="${MULTI_COMPARE:-1}"
stamp="$(stamp_now)"
out="target/load/multi-$stamp.jsonl"
notes="target/load/multi-$stamp.txt"

echo "== building (release)" >&2
cargo build --release -q -p opamp-benches --bins
if [[ -z "${FLEET_SERVER_BIN:-}" ]]; then
    cargo build --release -q -p opamp-fleet-server
    FLEET_SERVER_BIN=target/release/opamp-fleet-server
fi
server_bin="$FLEET_SERVER_BIN"
loadgen=target/release/loadgen

echo "== PostgreSQL (throw-away)" >&2
pg_dir="$(mktemp -u /tmp/opamp-pg-multi.XXXXXX)"
pg_env="$(bash .ci/postgres.sh start "$pg_dir" $$)"
db_url="${pg_env#OPAMP_TEST_DATABASE_URL=}"
psql_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)/psql"
[[ -x "$psql_bin" ]] || psql_bin=psql
q() { "$psql_bin" "$db_url" -XAtq -c "$1"; }

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    bash .ci/postgres.sh stop "$pg_dir"
}
trap cleanup EXIT

base_port=25300 # below the ephemeral range (32768-60999), which loadgen's connections use
# instance N: OpAMP on base+10N, web/API on base+10N+1.
opamp_port() { echo $((base_port + 10 * $1)); }
web_port() { echo $((base_port + 10 * $1 + 1)); }
instance_cmd() {
    local n="$1"
    echo "env RUST_LOG=warn $server_bin --store $db_url --instance-name multi-$n \
--listen 127.0.0.1:$(opamp_port "$n") --web-listen 127.0.0.1:$(web_port "$n") \
--data-dir target/load/multi-data-$n 2>>target/load/multi-$n.stderr.log"
}
start_instance() {
    local n="$1"
    sh -c "exec $(instance_cmd "$n")" &
    pids+=("$!")
    eval "pid_$n=$!"
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$(opamp_port "$n")") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "run-multi.sh: instance $n did not start" >&2
    exit 1
}

# Counters of the whole cluster: write transactions so far, and rows
# inserted/updated/deleted per opamp_ table (statistics, flushed within ~1 s).
xid() { q "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"; }
tuples() {
    q "SELECT string_agg(relname || ' ins=' || n_tup_ins || ' upd=' || n_tup_upd || ' del=' || n_tup_del, '; ' ORDER BY relname)
       FROM pg_stat_user_tables WHERE relname LIKE 'opamp_%'"
}
owned() { q "SELECT count(*) FROM opamp_agent_owner WHERE instance IS NOT NULL"; }
applied() { q "SELECT count(*) FROM opamp_agents WHERE remote_config_state = 'applied'"; }
wait_for() { # wait_for WHAT COMMAND VALUE TIMEOUT_S
    local deadline=$((SECONDS + $4))
    until [[ "$($2)" -ge "$3" ]]; do
        if ((SECONDS > deadline)); then
            echo "run-multi.sh: timed out waiting for $1" >&2
            return 1
        fi
        sleep 0.5
    done
}
note() { echo "$*" | tee -a "$notes" >&2; }

note "run-multi.sh $stamp on $(nproc) cores ($(uname -r)); agents=$agents write_agents=$write_agents"
note "server: $server_bin; PostgreSQL: $("$psql_bin" --version)"

for n in 1 2 3; do start_instance "$n"; done
note "instances: multi-1..3 on ports $(opamp_port 1) $(opamp_port 2) $(opamp_port 3)"

# ---- writes: heartbeats, then one cross-instance push per agent ----
echo "== writes: $write_agents agents on instances 2 and 3, push via instance 1" >&2
"$loadgen" --url "ws://127.0.0.1:$(opamp_port 2)/v1/opamp" \
    --also-url "ws://127.0.0.1:$(opamp_port 3)/v1/opamp" \
    --server-pid "$pid_2" --also-server-pid "$pid_3" \
    --agents "$write_agents" --heartbeat 1s --ramp-rate 500 --sample-at 0 \
    --settle 3s --duration 35s \
    --push "api=http://127.0.0.1:$(web_port 1)" \
    --label opamp-rs-pg-x3 --scenario cross-push --json-out "$out" \
    >"target/load/multi-$stamp-writes.log" &
loadgen_pid=$!
wait_for "all agents owned" owned "$write_agents" 120
sleep 2 # let connection-time saves finish before the window
x0="$(xid)"; t0="$(tuples)"; s0=$SECONDS
sleep 20
x1="$(xid)"; t1="$(tuples)"; s1=$SECONDS
note "heartbeat window: $write_agents agents x 1 heartbeat/s for $((s1 - s0)) s: $((x1 - x0)) write transactions (3 instances renew a lease every 5 s)"
note "  tuples before: $t0"
note "  tuples after:  $t1"
wait_for "APPLIED from every agent" applied "$write_agents" 180
x2="$(xid)"; t2="$(tuples)"
note "push phase: $write_agents pushes (each: desired-state save, outbox row, status change APPLIED): $((x2 - x1)) write transactions"
note "  tuples after push: $t2"
wait "$loadgen_pid" || note "writes loadgen failed ($?)"
cat "target/load/multi-$stamp-writes.log" >>"$notes"

# ---- 15k over three instances, with instance 1 killed and restarted ----
echo "== ws-idle: $agents agents over 3 instances" >&2
kill "$pid_1"
wait "$pid_1" 2>/dev/null || true
sleep 1
timeout 1200 "$loadgen" --url "ws://127.0.0.1:$(opamp_port 1)/v1/opamp" \
    --also-url "ws://127.0.0.1:$(opamp_port 2)/v1/opamp,ws://127.0.0.1:$(opamp_port 3)/v1/opamp" \
    --server-cmd "$(instance_cmd 1)" --also-server-pid "$pid_2,$pid_3" \
    --agents "$agents" --heartbeat 30s --ramp-rate 1000 --duration 20s \
    --sample-at 1000,5000,10000,15000 \
    --push "api=http://127.0.0.1:$(web_port 1)" \
    --storm --storm-down 2s \
    --label opamp-rs-pg-x3 --scenario ws-idle --json-out "$out" \
    | tee -a "$notes" || note "ws-idle over 3 instances failed ($?)"
note "table sizes after the run:"
q "SELECT relname, n_live_tup, pg_size_pretty(pg_total_relation_size(relid)), pg_total_relation_size(relid)
   FROM pg_stat_user_tables WHERE relname LIKE 'opamp_%' ORDER BY relname" | tee -a "$notes"
note "agents rows: $(q "SELECT count(*) FROM opamp_agents"), avg record bytes: $(q "SELECT avg(length(record))::int FROM opamp_agents")"

for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

if [[ "$compare" == 1 ]]; then
    echo "== same scenario: one instance --store memory, opamp-go" >&2
    LOAD_OUT="$out" LOAD_AGENTS="$agents" LOAD_SERVERS="example go" LOAD_SCENARIOS=ws-idle \
        bash benches/run-load.sh >/dev/null || note "run-load.sh failed ($?)"
fi

note "== comparison ($out; ratios are each run / opamp-go)"
"$loadgen" --compare "$out" --baseline opamp-go | tee -a "$notes"

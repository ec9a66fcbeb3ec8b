#!/usr/bin/env bash
# Benchmark of conversations' hot paths against the raw MongoDB driver on the same
# server.
#
#   bash tests/bench/conversations.sh
#
# Needs the local setup (`MOSAIC_PROFILE=release bash deploy/local/setup.sh`:
# PostgreSQL, Redis, .venv with SecantusDB, .data/mosaic.env). In one run, all on
# 127.0.0.1, about a minute:
#   1. builds release `mosaic` and the helper services/conversations/examples/
#      conversations_bench.rs; runs `mosaic migrate`;
#   2. starts a MongoDB-wire server of its own (SecantusDB from .venv, in memory, on a
#      free port: fresh, so both sides meet the same small server; or BENCH_MONGO_URL)
#      and the whole suite (`mosaic serve`, which conversations needs for agents, crm
#      and billing) on it; makes a tenant and an enabled agent;
#   3. runs conversations_bench at each BENCH_CONCURRENCY: AppendMessage over gRPC vs
#      the raw driver's insert_one of the same document into a collection with the
#      same indexes, and vs the raw driver's two commands of a checked append (the
#      conversation's conditional find_one_and_update, then the insert_one), ListMessages (a page of 50) vs the raw find, alternating rounds;
#      then the tail latency from an acknowledged append to its arrival (p50, p99);
#   4. prints the figures and the ratios.
#
# Knobs: BENCH_APPENDS (2000 per concurrency), BENCH_CONCURRENCY ("8"),
# BENCH_MONGO_URL (a server to use instead, without a database path), BENCH_SKIP_BUILD=1,
# and those of tests/bench/lib.sh.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

appends=${BENCH_APPENDS:-2000}
read -r -a concurrency <<<"${BENCH_CONCURRENCY:-8}"

bench_init
bench_require_tools
bench_host_info

TOOL="$BENCH_REPO/target/release/examples/conversations_bench"
bench_build "--bin mosaic" "-p mosaic-conversations --example conversations_bench"
[ -x "$TOOL" ] || bench_die "$TOOL is missing"
"$BENCH_BIN" migrate >"$BENCH_TMP/migrate.log" 2>&1 || { cat "$BENCH_TMP/migrate.log" >&2; bench_die "mosaic migrate failed"; }

if [ -n "${BENCH_MONGO_URL:-}" ]; then
  mongo=$BENCH_MONGO_URL
else
  port=$(bench_pick_port 27117)
  bench_say "starting SecantusDB (in memory) on 127.0.0.1:$port"
  "$BENCH_REPO/.venv/bin/secantusd-py" --host 127.0.0.1 --port "$port" --storage-path :memory: \
    --log-level WARNING >"$BENCH_TMP/secantus.log" 2>&1 </dev/null &
  mongo_pid=$!
  bench_on_exit "kill $mongo_pid 2>/dev/null; wait $mongo_pid 2>/dev/null || true"
  for _ in $(seq 1 300); do
    bench_port_free "$port" || break
    sleep 0.1
  done
  bench_port_free "$port" && bench_die "SecantusDB did not listen on $port (see $BENCH_TMP/secantus.log)"
  mongo="mongodb://127.0.0.1:$port"
fi
run=$(date +%s)
export MOSAIC_CONVERSATIONS_MONGODB_URL="$mongo/bench_service_$run"
bench_start_suite
bench_create_tenant conversations-bench
agent=$(bench_grpc "$BENCH_TENANT_TOKEN" mosaic.agents.v1.AgentService/CreateAgent \
  '{"agent":{"display_name":"bench","model":"gpt-4o-mini","enabled":true}}' | bench_json_get agentId)
[ -n "$agent" ] || bench_die "CreateAgent failed"

printf '\nconversations vs the raw mongodb driver, same server (%s)\n' "${BENCH_MONGO_URL:-SecantusDB in memory}"
printf '%-4s %-34s %10s %10s %7s\n' c call grpc/s raw/s ratio
for c in "${concurrency[@]}"; do
  out=$("$TOOL" "127.0.0.1:$BENCH_GRPC_PORT" "$BENCH_TENANT_TOKEN" "$agent" "$mongo/bench_raw_${run}_$c" "$c" "$appends") ||
    bench_die "conversations_bench failed: $out"
  get() { printf '%s\n' "$out" | sed -n "s/^$1=//p"; }
  printf '%-4s %-34s %10s %10s %7s\n' "$c" "AppendMessage / insert_one" "$(get append_grpc_per_s)" "$(get append_raw_per_s)" \
    "$(bench_ratio "$(get append_grpc_per_s)" "$(get append_raw_per_s)")x"
  printf '%-4s %-34s %10s %10s %7s\n' "$c" "AppendMessage / checked append" "$(get append_grpc_per_s)" \
    "$(get append_raw_checked_per_s)" "$(bench_ratio "$(get append_grpc_per_s)" "$(get append_raw_checked_per_s)")x"
  printf '%-4s %-34s %10s %10s %7s\n' "$c" "ListMessages(50) / find" "$(get page_grpc_per_s)" "$(get page_raw_per_s)" \
    "$(bench_ratio "$(get page_grpc_per_s)" "$(get page_raw_per_s)")x"
  printf '%-4s tail: acknowledged append -> arrival on an open tail: p50 %s ms, p99 %s ms\n' "$c" \
    "$(get tail_p50_ms)" "$(get tail_p99_ms)"
done
bench_suite_log_report

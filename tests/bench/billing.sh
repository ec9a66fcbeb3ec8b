#!/usr/bin/env bash
# Benchmark of billing's hot path, Consume, against PostgreSQL running the same
# statements.
#
#   bash tests/bench/billing.sh
#
# Needs the local setup (`MOSAIC_PROFILE=release bash deploy/local/setup.sh`: PostgreSQL
# on 127.0.0.1:5432, roles, .data/mosaic.env, grpcurl, pgbench). In one run, all on
# 127.0.0.1, about 3 minutes:
#   1. builds release `mosaic` (to migrate and mint tokens), `mosaic-billing` and the
#      helper services/billing/examples/billing_bench.rs; runs `mosaic migrate`;
#   2. starts `mosaic-billing` alone (MOSAIC_LOG=warn) and opens BENCH_ACCOUNTS bench
#      accounts (tenants 00000000-0000-4000-8000-<n, 12 digits>) with a platform TopUp
#      each (billing does not ask identity whether a tenant exists; the calls below
#      use a platform-admin token naming the tenant);
#   3. checks one Consume with grpcurl, then, for one hot account and spread over
#      every account, at c=8 and c=32, ~BENCH_SECONDS each, interleaved:
#        a. Consume over gRPC with billing_bench: c HTTP/2 connections, one call in
#           flight on each, on one client thread (what h2load -t 1 -m 1 does; h2load
#           itself cannot drive Consume, as it sends one body to every call and a
#           Consume body carries its idempotency key: every call after the first would
#           be a replay), amount 1, a fresh key per call; every call checked OK in the
#           service's own metrics;
#        b. pgbench as mosaic_billing, -M prepared: BEGIN; set_config of the tenant;
#           the service's own statement (ledger::storage::APPLY_SQL, read from the
#           source: the conditional UPDATE of the account, the ledger INSERT from its
#           RETURNING, the audit INSERT); COMMIT;
#   4. prints req/s, TPS, the ratios, the CPU each side spends per call outside
#      PostgreSQL (the gRPC client, the service, pgbench), and then Reconciles every bench account
#      (billing_bench reconcile) and prints the drift total, which must be 0.
#
# Knobs: BENCH_SECONDS (10), BENCH_CONCURRENCY ("8 32"), BENCH_ACCOUNTS (1000),
# BENCH_SKIP_BUILD=1, and those of tests/bench/lib.sh.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

secs=${BENCH_SECONDS:-10}
read -r -a concurrency <<<"${BENCH_CONCURRENCY:-8 32}"
accounts=${BENCH_ACCOUNTS:-1000}
credits=1000000000000 # per account: no run comes near spending it
role=mosaic_billing
method=/mosaic.billing.v1.CreditService/Consume

bench_init
bench_require_tools
bench_host_info

MOSAIC_BIN="$BENCH_REPO/target/release/mosaic"
BILLING_BIN="$BENCH_REPO/target/release/mosaic-billing"
TOOL="$BENCH_REPO/target/release/examples/billing_bench"
bench_build "--bin mosaic" "-p mosaic-billing --bin mosaic-billing --example billing_bench"
for b in "$MOSAIC_BIN" "$BILLING_BIN" "$TOOL"; do
  [ -x "$b" ] || bench_die "$b is missing"
done
"$MOSAIC_BIN" migrate >"$BENCH_TMP/migrate.log" 2>&1 || { cat "$BENCH_TMP/migrate.log" >&2; bench_die "mosaic migrate failed"; }
bench_say "schemas migrated (mosaic migrate)"

# The service alone: mosaic-billing serves without a subcommand.
BENCH_BIN=$BILLING_BIN
BENCH_SERVE_COMMAND='' bench_start_suite
BENCH_BIN=$MOSAIC_BIN # tokens are minted by `mosaic token`
addr="127.0.0.1:$BENCH_GRPC_PORT"
admin=$(bench_token) || bench_die "mosaic token (platform admin) failed"

out=$("$TOOL" setup "$addr" "$admin" "$accounts" "$credits") || bench_die "opening the bench accounts failed: $out"
bench_say "bench accounts opened: $out"

# --- one checked call ----------------------------------------------------------------
hot=00000000-0000-4000-8000-000000000001
check_key="bench-check-$(cat /proc/sys/kernel/random/uuid)"
reply=$(bench_grpc "$admin" "${method#/}" "{\"tenant_id\":\"$hot\",\"amount\":\"1\",\"idempotency_key\":\"$check_key\"}") ||
  bench_die "Consume with grpcurl failed: $reply"
[ "$(printf '%s' "$reply" | bench_json_get kind)" = ENTRY_KIND_CONSUMPTION ] ||
  bench_die "Consume returned no consumption entry: $reply"
bench_say "Consume with grpcurl debits account 1: $(printf '%s' "$reply" | bench_json_get balanceAfter) left"

# --- pgbench scripts: the service's statement, its parameters as pgbench expressions --
source_sql=$(bench_rust_const "$BENCH_REPO/services/billing/src/ledger/storage.rs" APPLY_SQL) ||
  bench_die "could not read APPLY_SQL from services/billing/src/ledger/storage.rs"
apply_sql=$(python3 - "$source_sql" <<'PY'
import re, sys
sql = sys.argv[1].strip()
params = {
    "tenant": "('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid",
    "1": "gen_random_uuid()",            # entry id
    "2": "'consumption'",
    "3": "(-1)::int8",                   # amount
    "4": "0::int8",                      # held change
    "5": "('bench-' || :r::text)",       # idempotency key
    "6": "''",                           # reference
    "7": "NULL::uuid",                   # hold
    "8": "NULL::uuid",                   # refunded charge
    "9": "'bench'",                      # actor (no ':' in a literal: pgbench reads ':name' as a variable)
    "10": "''",                          # request id
    "11": "gen_random_uuid()",           # audit event id
    "12": "'ledger.consume'",
    "13": "'ledger_entry'",
    "14": "entry_id::text",              # audit resource id: the new entry's
}
print(re.sub(r"\$(tenant|\d+)", lambda m: params[m.group(1)], sql) + ";")
PY
) || bench_die "could not fill in APPLY_SQL's parameters"
write_script() { # <out> <\set line for n>
  printf '%s\n' "$2" '\set r random(1, 9000000000000000000)' 'BEGIN;' \
    "SELECT set_config('mosaic.tenant_id', '00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'), true);" \
    "$apply_sql" 'COMMIT;' >"$1"
}
write_script "$BENCH_TMP/consume_hot.sql" '\set n 1'
write_script "$BENCH_TMP/consume_spread.sql" "\\set n random(1, $accounts)"

# pgbench does not look at results: prove once, in psql with the same text, that as
# the runtime role and under RLS the statement debits the account and writes its entry.
probe=$((RANDOM * 32768 + RANDOM))
{
  printf '%s\n' '\set n 1' "\\set r $probe" 'BEGIN;' \
    "SELECT set_config('mosaic.tenant_id', '00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'), true);" \
    "$apply_sql" 'COMMIT;' 'BEGIN;' "SET LOCAL mosaic.tenant_id = '$hot';" \
    "SELECT count(*) FROM ledger_entries WHERE tenant_id = '$hot' AND idempotency_key = 'bench-$probe' AND amount = -1;" 'COMMIT;'
} >"$BENCH_TMP/probe.sql"
rows=$(bench_psql "$role" -At -f "$BENCH_TMP/probe.sql") || bench_die "the pgbench statement fails in psql: $rows"
[ "$(printf '%s\n' "$rows" | tail -n 1)" = 1 ] ||
  bench_die "the pgbench statement did not write its entry as $role: $rows"
bench_say "pgbench statement debits the account and writes its entry as $role under RLS"

# --- load -------------------------------------------------------------------------------
# CPU time, to say where a call's cost goes on these shared cores: the service's own
# (from /proc), and each load client's (bash's `time` of the run), per call.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f\n", ($14 + $15) / hz}' "/proc/$1/stat"; }
TIMEFORMAT='%U %S'
# per_call_us <cpu seconds> <calls>
per_call_us() { python3 -c 'import sys; s, n = float(sys.argv[1]), int(sys.argv[2]); print(round(s * 1e6 / n) if n else 0)' "$1" "$2"; }
declare -A client_us service_us pgbench_client_us

# bench_consume <label> <accounts> <c>: sets BENCH_RPS and BENCH_CLIENT_US /
# BENCH_SERVICE_US (CPU per call); every call must be OK in the service's metrics too.
bench_consume() {
  local label=$1 n=$2 c=$3 tag before after result ok failed cpu0 user sys
  tag=$(printf '%s' "$label" | tr -c 'A-Za-z0-9' '_')
  before="$BENCH_TMP/codes-$tag.before"
  after="$BENCH_TMP/codes-$tag.after"
  bench_suite_alive
  "$TOOL" consume "$addr" "$admin" "$n" "$c" 2 >/dev/null || bench_die "$label: warm-up failed"
  bench_metric_codes "$method" "$before"
  cpu0=$(cpu_secs "$BENCH_SUITE_PID")
  { time "$TOOL" consume "$addr" "$admin" "$n" "$c" "$secs" >"$BENCH_TMP/consume-$tag.out"; } 2>"$BENCH_TMP/consume-$tag.time" ||
    bench_die "$label: billing_bench failed: $(cat "$BENCH_TMP/consume-$tag.time")"
  result=$(cat "$BENCH_TMP/consume-$tag.out")
  read -r user sys <<<"$(tail -n 1 "$BENCH_TMP/consume-$tag.time")"
  bench_metric_codes "$method" "$after"
  bench_metric_delta "$before" "$after"
  ok=$(sed -nE 's/.*ok=([0-9]+).*/\1/p' <<<"$result")
  failed=$(sed -nE 's/.*failed=([0-9]+).*/\1/p' <<<"$result")
  BENCH_RPS=$(sed -nE 's/.*rps=([0-9.]+).*/\1/p' <<<"$result")
  bench_say "$label: $result; suite metrics: $BENCH_DELTA_TEXT"
  [ "$failed" = 0 ] && [ "$BENCH_NOT_OK_DELTA" = 0 ] ||
    bench_die "$label: calls failed ($result; $BENCH_DELTA_TEXT)"
  [ "$BENCH_OK_DELTA" = "$ok" ] ||
    bench_die "$label: the service counted $BENCH_OK_DELTA OK calls, billing_bench $ok"
  BENCH_SERVICE_US=$(per_call_us "$(python3 -c 'import sys; print(float(sys.argv[1]) - float(sys.argv[2]))' "$(cpu_secs "$BENCH_SUITE_PID")" "$cpu0")" "$ok")
  BENCH_CLIENT_US=$(per_call_us "$(python3 -c 'import sys; print(float(sys.argv[1]) + float(sys.argv[2]))' "$user" "$sys")" "$ok")
}

declare -A grpc_rps pg_tps
for dist in hot spread; do
  n=1
  [ "$dist" = spread ] && n=$accounts
  for c in "${concurrency[@]}"; do
    bench_consume "Consume $dist c=$c" "$n" "$c"
    grpc_rps[$dist-$c]=$BENCH_RPS
    client_us[$dist-$c]=$BENCH_CLIENT_US
    service_us[$dist-$c]=$BENCH_SERVICE_US
    bench_pgbench "pgbench $dist c=$c" "$role" "$BENCH_TMP/consume_$dist.sql" prepared "$c" "$secs"
    pg_tps[$dist-$c]=$BENCH_TPS
    pgbench_client_us[$dist-$c]=$(per_call_us "$BENCH_PGBENCH_CPU" "${BENCH_PGBENCH_TX:-0}")
  done
done
peak_rss=$(bench_peak_rss_mib)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the books afterwards ---------------------------------------------------------------
reconciled=$("$TOOL" reconcile "$addr" "$admin" "$accounts") || bench_die "Reconcile failed: $reconciled"
drift=$(sed -nE 's/.*drift_total=(-?[0-9]+).*/\1/p' <<<"$reconciled")

# --- report -------------------------------------------------------------------------------
echo
echo "Consume over gRPC (billing_bench, c connections, 1 in flight each) vs pgbench as $role"
echo "(-M prepared: BEGIN; set_config; the service's UPDATE+INSERT+INSERT statement; COMMIT), ~${secs}s each:"
printf '%-8s %-4s %14s %14s %14s %16s %16s %18s\n' "accounts" "c" "gRPC req/s" "pgbench TPS" "grpc/pgbench" \
  "client us/call" "service us/call" "pgbench us/call"
for dist in hot spread; do
  label=1
  [ "$dist" = spread ] && label=$accounts
  for c in "${concurrency[@]}"; do
    printf '%-8s %-4s %14.0f %14.0f %14s %16s %16s %18s\n' "$label" "$c" "${grpc_rps[$dist-$c]}" "${pg_tps[$dist-$c]}" \
      "$(bench_ratio "${grpc_rps[$dist-$c]}" "${pg_tps[$dist-$c]}")" \
      "${client_us[$dist-$c]}" "${service_us[$dist-$c]}" "${pgbench_client_us[$dist-$c]}"
  done
done
echo "CPU per call: the gRPC client's (billing_bench), the service's (mosaic-billing), and pgbench's own"
echo "client CPU per transaction; PostgreSQL's backends are not counted (both sides drive them alike)."
echo "Reconcile of the $accounts bench accounts afterwards: $reconciled"
echo "mosaic-billing peak RSS (VmHWM): ${peak_rss} MiB; cold start ${BENCH_COLD_START_MS} ms"
bench_suite_log_report
echo "loadavg at end: $load_end (nproc $(nproc); the client, the service and PostgreSQL share these cores)"
[ "$drift" = 0 ] || bench_die "the books drifted: $reconciled"

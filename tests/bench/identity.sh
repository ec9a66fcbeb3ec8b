#!/usr/bin/env bash
# Benchmark of a tenant-scoped read, GetTenant, against PostgreSQL's own floor.
#
#   bash tests/bench/identity.sh
#
# Needs the local setup (`MOSAIC_PROFILE=release bash deploy/local/setup.sh`: PostgreSQL
# on 127.0.0.1:5432, roles, migrations, .data/mosaic.env, grpcurl, h2load, pgbench).
# In one run, all on 127.0.0.1, about 1.5-2 minutes:
#   1. builds the release `mosaic` binary and starts the suite on a free port
#      (MOSAIC_LOG=warn), measuring cold start: process start to health SERVING;
#   2. creates a tenant (CreateTenant) and mints an owner token for it;
#   3. checks one GetTenant with grpcurl, then loads it with h2load over gRPC
#      (prior-knowledge h2c, one call in flight per connection) at c=8 and c=32,
#      ~BENCH_SECONDS each, and checks with the suite's own metrics that every call
#      ended with grpc-status OK (h2load alone counts any HTTP 200 as a success);
#   4. runs pgbench as the runtime role mosaic_identity with the statements of one
#      tenant-scoped read (BEGIN; SET LOCAL mosaic.tenant_id; primary-key SELECT;
#      COMMIT), once as four round trips (-M simple) and once as a single pipeline
#      (-M prepared), at the same concurrencies, interleaved with the gRPC runs so
#      that each pair sees about the same background load (the service itself sends
#      SET LOCAL and a prepared SELECT as one simple-protocol message, shared by the
#      reads that wait for a read connection: see the README);
#   5. prints req/s, TPS, the ratios, the reads per message, the suite's peak RSS
#      (VmHWM) and cold start.
# The suite is always stopped on exit; on failure its log tail is printed.
#
# Knobs: BENCH_SECONDS (10), BENCH_CONCURRENCY ("8 32"), BENCH_PIPELINE_MODE
# (prepared), BENCH_SKIP_BUILD=1, and those of tests/bench/lib.sh. GetTenant runs on
# the suite's MOSAIC_DB_READ_CONNECTIONS (default 4) read connections, while pgbench
# uses c connections.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

secs=${BENCH_SECONDS:-10}
read -r -a concurrency <<<"${BENCH_CONCURRENCY:-8 32}"
pipeline_mode=${BENCH_PIPELINE_MODE:-prepared}
role=mosaic_identity
method=/mosaic.identity.v1.TenantService/GetTenant

bench_init
bench_require_tools
bench_host_info
bench_build
bench_start_suite
bench_create_tenant "bench identity"
tenant=$BENCH_TENANT_ID

# --- one checked call, and the h2load body ---------------------------------------
reply=$(bench_grpc "$BENCH_TENANT_TOKEN" "${method#/}" "{\"tenant_id\":\"$tenant\"}") ||
  bench_die "GetTenant with grpcurl failed: $reply"
[ "$(printf '%s' "$reply" | bench_json_get tenantId)" = "$tenant" ] ||
  bench_die "GetTenant returned another tenant: $reply"
bench_say "GetTenant with grpcurl returns tenant $tenant"

body="$BENCH_TMP/get_tenant.bin"
bench_grpc_frame "$body" 1="$tenant" # GetTenantRequest { tenant_id = 1 }
[ "$(stat -c %s "$body")" = 43 ] || bench_die "GetTenant frame is not 5 + 2 + 36 bytes"

# --- pgbench scripts: the statements of one GetTenant ------------------------------
select="SELECT tenant_id, display_name, plan, settings, revision, created_at, updated_at, deleted_at FROM tenants WHERE tenant_id = '$tenant';"
four="$BENCH_TMP/get_tenant_4.sql"
pipeline="$BENCH_TMP/get_tenant_pipeline.sql"
printf '%s\n' 'BEGIN;' "SET LOCAL mosaic.tenant_id = '$tenant';" "$select" 'COMMIT;' >"$four"
{
  printf '%s\n' '\startpipeline'
  cat "$four"
  printf '%s\n' '\endpipeline'
} >"$pipeline"

# pgbench does not look at results: prove once that, as the runtime role and under
# RLS, the script reads exactly the tenant (a wrong setting would read 0 rows fast).
rows=$(bench_psql "$role" -At -f "$four") || bench_die "the pgbench script fails in psql"
[ "$(printf '%s\n' "$rows" | grep -c "^$tenant|")" = 1 ] ||
  bench_die "the pgbench script does not read the tenant as $role: $rows"
bench_say "pgbench script reads the tenant as $role under RLS"

# --- load -------------------------------------------------------------------------------
declare -A grpc_rps pg4_tps pipe_tps per_message
for c in "${concurrency[@]}"; do
  lane_before=$(bench_read_lane_counts)
  bench_h2load "GetTenant c=$c" "$method" "$body" "$BENCH_TENANT_TOKEN" "$c" "$secs"
  grpc_rps[$c]=$BENCH_RPS
  per_message[$c]=$(bench_reads_per_message "$lane_before" "$(bench_read_lane_counts)")
  bench_pgbench "pgbench 4 statements c=$c" "$role" "$four" simple "$c" "$secs"
  pg4_tps[$c]=$BENCH_TPS
  bench_pgbench "pgbench pipeline c=$c" "$role" "$pipeline" "$pipeline_mode" "$c" "$secs"
  pipe_tps[$c]=$BENCH_TPS
done
peak_rss=$(bench_peak_rss_mib)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -------------------------------------------------------------------------------
echo
echo "GetTenant over gRPC (h2load -t 1 -m 1) vs pgbench as $role, ~${secs}s each:"
printf '%-4s %14s %16s %18s %13s %15s %14s\n' \
  "c" "gRPC req/s" "pgbench4 TPS" "pipelined TPS" "grpc/pgbench4" "grpc/pipelined" "reads/message"
for c in "${concurrency[@]}"; do
  printf '%-4s %14.0f %16.0f %18.0f %13s %15s %14s\n' "$c" \
    "${grpc_rps[$c]}" "${pg4_tps[$c]}" "${pipe_tps[$c]}" \
    "$(bench_ratio "${grpc_rps[$c]}" "${pg4_tps[$c]}")" \
    "$(bench_ratio "${grpc_rps[$c]}" "${pipe_tps[$c]}")" "${per_message[$c]}"
done
echo "pgbench4: BEGIN; SET LOCAL; SELECT; COMMIT as 4 round trips (-M simple); pipelined: the same in one \\startpipeline (-M $pipeline_mode)"
echo "suite peak RSS (VmHWM): ${peak_rss} MiB"
echo "suite cold start (process start to SERVING): ${BENCH_COLD_START_MS} ms"
bench_suite_log_report
echo "loadavg at end: $load_end (nproc $(nproc); h2load, the suite and PostgreSQL share these cores)"

#!/usr/bin/env bash
# Benchmark of the agents service against the floors it is compared to, in one run:
#
#   bash tests/bench/agents.sh
#
# Needs the local setup (PostgreSQL, Redis, roles, migrations, .data/mosaic.env,
# grpcurl, h2load, pgbench, redis-benchmark). All on 127.0.0.1, about 4 minutes:
#   1. builds the release `mosaic` binary and starts the suite on a free port with
#      the cache off (MOSAIC_CACHE_TTL_SECS=0);
#   2. uncached GetAgent over gRPC beside pgbench of its transaction as mosaic_agents
#      (BEGIN; SET LOCAL mosaic.tenant_id; the primary-key SELECT; COMMIT, -M simple);
#   3. ClaimDocuments of 10 documents (one claim, a one-hour lease) over gRPC beside
#      pgbench of the same transaction: BEGIN; SET LOCAL; the claim's UPDATE (the
#      CLAIM statement, read from services/agents/src/documents/storage.rs, with its
#      RETURNING);
#      its audit INSERT; COMMIT. Each side claims from its own tenant's
#      BENCH_CLAIM_DOCS (600,000) pending documents, seeded by the admin login, and
#      the script fails if either ran dry (an empty claim is cheap and would flatter);
#   4. restarts the suite with the cache on (MOSAIC_CACHE_TTL_SECS=60) and measures
#      cached GetAgent beside its floors: grpc.health.v1.Health/Check over h2load (a
#      trivial tonic unary: no token, no store, the floor of any gRPC call here) and
#      redis-benchmark GET on the suite's Redis, reading the cache's hit ratio from
#      the suite's metrics;
#   5. prints every figure and the ratios, with the claim's plan.
#
# Knobs: BENCH_SECONDS (8), BENCH_CONCURRENCY ("8 32"), BENCH_CLAIM_DOCS (600000),
# BENCH_SKIP_BUILD=1, BENCH_PROFILE=1 (a perf CPU profile of each gRPC run), and those
# of tests/bench/lib.sh.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

secs=${BENCH_SECONDS:-8}
read -r -a concurrency <<<"${BENCH_CONCURRENCY:-8 32}"
claim_docs=${BENCH_CLAIM_DOCS:-600000}
role=mosaic_agents
svc=mosaic.agents.v1

bench_init
bench_require_tools
command -v redis-benchmark >/dev/null || bench_die "redis-benchmark missing (Debian package redis-tools)"
bench_host_info
bench_build
export MOSAIC_CACHE_TTL_SECS=0
bench_start_suite
bench_create_tenant "bench agents"
tenant=$BENCH_TENANT_ID
token=$BENCH_TENANT_TOKEN

# --- an agent, one checked GetAgent ----------------------------------------------------
out=$(bench_grpc "$token" "$svc.AgentService/CreateAgent" \
  '{"agent":{"display_name":"Bench agent","model":"gpt-4o-mini","temperature":"0.7","system_prompt":"You answer questions about the product, briefly and politely.","enabled":true,"voice_settings":{"voice":"alloy","speed":1.1},"metadata":{"team":"support"}}}') ||
  bench_die "CreateAgent failed: $out"
agent=$(printf '%s' "$out" | bench_json_get agentId)
reply=$(bench_grpc "$token" "$svc.AgentService/GetAgent" "{\"agent_id\":\"$agent\"}") ||
  bench_die "GetAgent failed: $reply"
[ "$(printf '%s' "$reply" | bench_json_get temperature)" = "0.70" ] || bench_die "GetAgent: $reply"
bench_say "agent $agent created and read back"
get_body="$BENCH_TMP/get_agent.bin"
bench_grpc_frame "$get_body" 1="$agent" # GetAgentRequest { agent_id = 1 }
health_body="$BENCH_TMP/health.bin"
bench_grpc_frame "$health_body" # HealthCheckRequest {} (the whole server)

agent_cols="t.agent_id, t.display_name, t.system_prompt, t.model, t.temperature_centi, t.voice_settings, t.enabled, t.metadata, t.public_key_prefix, t.public_key_created_at, t.revision, t.created_at, t.updated_at, t.deleted_at"
get_sql="$BENCH_TMP/get_agent.sql"
printf '%s\n' 'BEGIN;' "SET LOCAL mosaic.tenant_id = '$tenant';" \
  "SELECT $agent_cols FROM agents t WHERE t.tenant_id = '$tenant' AND t.agent_id = '$agent';" 'COMMIT;' >"$get_sql"
rows=$(bench_psql "$role" -At -f "$get_sql") || bench_die "the GetAgent script fails in psql"
[ "$(printf '%s\n' "$rows" | grep -c "^$agent|")" = 1 ] || bench_die "the GetAgent script does not read the agent as $role"

# --- documents to claim: one tenant for gRPC, one for pgbench ---------------------------
bench_create_tenant "bench agents pgbench"
pg_tenant=$BENCH_TENANT_ID
seed() {
  bench_psql mosaic_admin -c "INSERT INTO agents.documents (tenant_id, document_id, display_name, source_uri, metadata)
    SELECT '$1', gen_random_uuid(), 'Guide ' || i, 'https://docs.bench.example/' || i || '.pdf', '{\"lang\": \"en\"}'
    FROM generate_series(1, $claim_docs) AS i" >/dev/null || bench_die "could not seed documents"
}
t0=$(bench_now_ms)
seed "$tenant"
seed "$pg_tenant"
bench_psql mosaic_admin -c "VACUUM ANALYZE agents.documents" >/dev/null || bench_die "VACUUM ANALYZE failed"
bench_say "seeded $claim_docs pending documents in each of two tenants in $(($(bench_now_ms) - t0)) ms"
pending() {
  bench_psql mosaic_admin -At -c "SELECT count(*) FROM agents.documents WHERE tenant_id = '$1' AND status = 'pending'"
}

claim_body="$BENCH_TMP/claim.bin"
bench_grpc_frame "$claim_body" 1:int=10 2:hex=08901c # max_documents 10, lease { seconds: 3600 }
document_cols="t.document_id, t.agent_id, t.display_name, t.source_uri, t.metadata, CASE WHEN (t.status = 'processing' AND t.lease_expires_at <= now()) THEN 'pending' ELSE t.status END AS status, CASE WHEN (t.status = 'processing' AND t.lease_expires_at <= now()) THEN NULL ELSE t.claim_id END AS claim_id, CASE WHEN (t.status = 'processing' AND t.lease_expires_at <= now()) THEN NULL ELSE t.lease_expires_at END AS lease_expires_at, t.claim_id AS last_claim_id, t.attempt_count, t.chunk_count, t.vector_count, t.error, t.revision, t.created_at, t.updated_at, t.deleted_at"
# The service's own claim statement, its parameters filled in: tenant, 10 documents,
# a fresh claim id, a one-hour lease.
claim_source=$(bench_rust_const "$BENCH_REPO/services/agents/src/documents/storage.rs" CLAIM) ||
  bench_die "could not read CLAIM from services/agents/src/documents/storage.rs"
claim_update() { # <tenant> <claim id expression>
  python3 - "$claim_source" "'$1'" "$2" <<'PY'
import re, sys
sql, tenant, claim = sys.argv[1:]
params = {1: tenant, 2: "10", 3: claim, 4: "3600::float8"}
print(re.sub(r"\$(\d+)", lambda m: params[int(m.group(1))], sql.strip()))
PY
}
claim_sql="$BENCH_TMP/claim.sql"
printf '%s\n' 'BEGIN;' "SET LOCAL mosaic.tenant_id = '$pg_tenant';" \
  "$(claim_update "$pg_tenant" "gen_random_uuid()") RETURNING $document_cols;" \
  "INSERT INTO audit_events (tenant_id, event_id, actor, action, resource_type, resource_id, request_id, details) VALUES ('$pg_tenant', gen_random_uuid(), 'user:bench', 'document.claim', 'claim', gen_random_uuid()::text, gen_random_uuid()::text, '{\"document_ids\": []}');" \
  'COMMIT;' >"$claim_sql"
claimed=$(bench_psql "$role" -At -f "$claim_sql" | grep -c '|processing|') || true
[ "$claimed" = 10 ] || bench_die "the claim script does not claim 10 documents as $role (claimed $claimed)"
plan=$(bench_psql "$role" -At -c "BEGIN; SET LOCAL mosaic.tenant_id = '$pg_tenant'; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) $(claim_update "$pg_tenant" "gen_random_uuid()"); ROLLBACK;" |
  grep -vE '^(BEGIN|SET|ROLLBACK)$' | sed 's/^/   /')

# --- load: the cache off ----------------------------------------------------------------
declare -A floor_rps redis_rps get_rps get_tps cached_rps claim_rps claim_tps
for c in "${concurrency[@]}"; do
  bench_profile "GetAgent uncached c=$c" bench_h2load "GetAgent uncached c=$c" "/$svc.AgentService/GetAgent" "$get_body" "$token" "$c" "$secs"
  get_rps[$c]=$BENCH_RPS
  bench_pgbench "GetAgent pgbench c=$c" "$role" "$get_sql" simple "$c" "$secs"
  get_tps[$c]=$BENCH_TPS
  bench_profile "ClaimDocuments(10) c=$c" bench_h2load "ClaimDocuments(10) c=$c" "/$svc.DocumentService/ClaimDocuments" "$claim_body" "$token" "$c" "$secs"
  claim_rps[$c]=$BENCH_RPS
  bench_pgbench "claim pgbench c=$c" "$role" "$claim_sql" simple "$c" "$secs"
  claim_tps[$c]=$BENCH_TPS
  for t in "$tenant" "$pg_tenant"; do
    left=$(pending "$t")
    [ "$left" -gt 0 ] || bench_die "tenant $t ran out of pending documents: raise BENCH_CLAIM_DOCS"
  done
done

# --- load: the cache on, beside the floors ---------------------------------------------------
bench_stop_suite
export MOSAIC_CACHE_TTL_SECS=60
bench_start_suite
cache_counts() { # prints "hits misses" of agents' config lookups so far
  curl -fsS --max-time 5 "http://127.0.0.1:$BENCH_METRICS_PORT/metrics" | python3 -c '
import re, sys
n = {"hit": 0.0, "miss": 0.0}
for line in sys.stdin:
    if line.startswith("mosaic_cache_lookups_total{") and "service=\"agents\"" in line and "kind=\"config\"" in line:
        m = re.search(r"result=\"(\w+)\"", line)
        if m and m.group(1) in n:
            n[m.group(1)] += float(line.rsplit(None, 1)[1])
print(int(n["hit"]), int(n["miss"]))'
}
for c in "${concurrency[@]}"; do
  bench_h2load "Health/Check c=$c" /grpc.health.v1.Health/Check "$health_body" "$token" "$c" "$secs"
  floor_rps[$c]=$BENCH_RPS
  redis_rps[$c]=$(redis-benchmark -h "${BENCH_REDIS_HOST:-127.0.0.1}" -p "${BENCH_REDIS_PORT:-6379}" \
    -t get -c "$c" -n $((c * 25000)) -q --csv | awk -F'"' '/^"GET"/ {print $4}')
  [ -n "${redis_rps[$c]}" ] || bench_die "redis-benchmark printed no GET figure"
  bench_say "redis-benchmark GET c=$c: ${redis_rps[$c]} req/s"
  bench_profile "GetAgent cached c=$c" bench_h2load "GetAgent cached c=$c" "/$svc.AgentService/GetAgent" "$get_body" "$token" "$c" "$secs"
  cached_rps[$c]=$BENCH_RPS
done
read -r hits misses <<<"$(cache_counts)"
peak_rss=$(bench_peak_rss_mib)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------------------
echo
echo "Floors: a trivial tonic unary (grpc.health.v1.Health/Check, h2load -m 1) and redis-benchmark GET, ~${secs}s each:"
printf '%-4s %16s %18s\n' c "Health req/s" "redis GET req/s"
for c in "${concurrency[@]}"; do
  printf '%-4s %16.0f %18.0f\n' "$c" "${floor_rps[$c]}" "${redis_rps[$c]}"
done
echo
echo "GetAgent over gRPC, uncached (the cache off) vs pgbench of BEGIN; SET LOCAL; SELECT; COMMIT as $role (-M simple),"
echo "and cached (hits from Redis) vs the floors:"
printf '%-4s %12s %12s %10s %12s %14s %12s %14s\n' c "uncached/s" "pgbench TPS" "unc/pg" "cached/s" "cached/Health" "cached/unc" "cached/redis"
for c in "${concurrency[@]}"; do
  printf '%-4s %12.0f %12.0f %10s %12.0f %14s %12s %14s\n' "$c" "${get_rps[$c]}" "${get_tps[$c]}" \
    "$(bench_ratio "${get_rps[$c]}" "${get_tps[$c]}")" "${cached_rps[$c]}" \
    "$(bench_ratio "${cached_rps[$c]}" "${floor_rps[$c]}")" \
    "$(bench_ratio "${cached_rps[$c]}" "${get_rps[$c]}")" "$(bench_ratio "${cached_rps[$c]}" "${redis_rps[$c]}")"
done
echo "cache hit ratio of GetAgent while cached (suite metrics): $hits hits, $misses misses ($(bench_ratio "$hits" "$((hits + misses))"))"
echo
echo "ClaimDocuments of 10 over gRPC vs pgbench of the same claim transaction as $role (-M simple):"
printf '%-4s %14s %14s %14s\n' c "gRPC req/s" "pgbench TPS" "grpc/pgbench"
for c in "${concurrency[@]}"; do
  printf '%-4s %14.0f %14.0f %14s\n' "$c" "${claim_rps[$c]}" "${claim_tps[$c]}" \
    "$(bench_ratio "${claim_rps[$c]}" "${claim_tps[$c]}")"
done
echo "pending documents left: gRPC tenant $(pending "$tenant"), pgbench tenant $(pending "$pg_tenant") (of $claim_docs each)"
echo "the claim's plan:"
printf '%s\n' "$plan"
echo "suite peak RSS (VmHWM): ${peak_rss} MiB"
bench_suite_log_report
echo "loadavg at end: $load_end (nproc $(nproc); h2load, redis-benchmark, the suite and PostgreSQL share these cores)"

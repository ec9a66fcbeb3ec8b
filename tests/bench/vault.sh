#!/usr/bin/env bash
# Benchmark of the credentials vault and the approvals queue against the floors
# they are compared to, in one run:
#
#   bash tests/bench/vault.sh
#
# Needs the local setup (PostgreSQL, Redis, roles, migrations, .data/mosaic.env with
# the vault's master key, grpcurl, h2load, pgbench). All on 127.0.0.1, about 3 minutes:
#   1. builds the release `mosaic` binary and the `vault_crypto` example, starts the
#      suite on a free port (the reveal limit far above what the machine can send);
#   2. GetConnection over gRPC beside pgbench of its transaction as mosaic_identity
#      (BEGIN; SET LOCAL mosaic.tenant_id; the SELECT of the connection's metadata,
#      the select list read from services/identity/src/connections/storage.rs;
#      COMMIT);
#   3. RevealSecret over gRPC (a worker's token, svc:integrations) beside pgbench of
#      the same statements (BEGIN; SET LOCAL; REVEAL_SQL, read from the same file: the
#      connection, its ciphertext and its wrapped data key in one SELECT; the audit
#      INSERT; COMMIT); the service's CPU per call of each (from /proc), and the
#      cryptography alone per call (`vault_crypto`: unwrap the data key, open the
#      secret): the decryption cost of one reveal;
#   4. ClaimActions of 10 (a one-hour lease) over gRPC beside pgbench of the same
#      transaction: BEGIN; SET LOCAL; the CLAIM statement of
#      services/agents/src/approvals/storage.rs with its RETURNING; the audit INSERT;
#      COMMIT. Each side claims from its own tenant's BENCH_APPROVED (400,000) approved
#      actions, seeded by the admin login; the script fails if either ran dry;
#   5. prints every figure, the ratios and the claim's plan.
#
# Knobs: BENCH_SECONDS (8), BENCH_CONCURRENCY ("8 32"), BENCH_APPROVED (400000),
# BENCH_SECRET_BYTES (512), BENCH_SKIP_BUILD=1, BENCH_PROFILE=1, and those of
# tests/bench/lib.sh.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

secs=${BENCH_SECONDS:-8}
read -r -a concurrency <<<"${BENCH_CONCURRENCY:-8 32}"
approved=${BENCH_APPROVED:-400000}
secret_bytes=${BENCH_SECRET_BYTES:-512}
id_svc=mosaic.identity.v1
ag_svc=mosaic.agents.v1

bench_init
bench_require_tools
bench_host_info
bench_build "--bin mosaic" "-p mosaic-identity --example vault_crypto"
[ -n "${MOSAIC_VAULT_MASTER_KEY:-}${MOSAIC_VAULT_MASTER_KEY_FILE:-}" ] ||
  bench_die "no vault master key: run 'bash deploy/local/setup.sh' (it adds one to .data/mosaic.env)"
export MOSAIC_VAULT_REVEAL_PER_SECOND=${MOSAIC_VAULT_REVEAL_PER_SECOND:-1000000}
export MOSAIC_VAULT_REVEAL_BURST=${MOSAIC_VAULT_REVEAL_BURST:-1000000}
bench_start_suite
bench_create_tenant "bench vault"
tenant=$BENCH_TENANT_ID
owner=$BENCH_TENANT_TOKEN
worker=$(bench_token --tenant "$tenant" --sub service:bench-worker --role svc:integrations)

# --- a connection, its secret read back once ------------------------------------------------
secret=$(python3 -c 'import sys, secrets; print(secrets.token_urlsafe(int(sys.argv[1]))[: int(sys.argv[1])])' "$secret_bytes")
secret_b64=$(printf '%s' "$secret" | base64 -w0)
out=$(bench_grpc "$owner" "$id_svc.ConnectionService/CreateConnection" \
  "{\"connection\":{\"provider\":\"PROVIDER_HUBSPOT\",\"display_name\":\"Bench HubSpot\",\"scopes\":[\"crm.objects.contacts.read\",\"crm.objects.deals.write\"],\"metadata\":{\"portal_id\":42}},\"secret\":\"$secret_b64\"}") ||
  bench_die "CreateConnection failed: $out"
connection=$(printf '%s' "$out" | bench_json_get connectionId)
reply=$(bench_grpc "$worker" "$id_svc.ConnectionService/RevealSecret" \
  "{\"connection_id\":\"$connection\",\"reason\":\"bench\"}") || bench_die "RevealSecret failed: $reply"
[ "$(printf '%s' "$reply" | bench_json_get secret)" = "$secret_b64" ] || bench_die "RevealSecret returned another secret"
bench_say "connection $connection created; its $secret_bytes-byte secret revealed"
get_body="$BENCH_TMP/get_connection.bin"
bench_grpc_frame "$get_body" 1="$connection" # GetConnectionRequest { connection_id = 1 }
reveal_body="$BENCH_TMP/reveal.bin"
bench_grpc_frame "$reveal_body" 2="$connection" 3="bench sync job" # RevealSecretRequest

storage="$BENCH_REPO/services/identity/src/connections/storage.rs"
select_list=$(bench_rust_const "$storage" SELECT) || bench_die "could not read SELECT from $storage"
reveal_source=$(python3 - "$storage" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
m = re.search(r'const REVEAL_SQL: &str = concat!\((.*?)\);', src, re.S)
if not m:
    sys.exit("no REVEAL_SQL")
print("".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))))
PY
) || bench_die "could not read REVEAL_SQL from $storage"
fill() { # <sql> <$1> <$2>
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
sql, one, two = sys.argv[1:]
print(re.sub(r"\$(\d+)", lambda m: {1: one, 2: two}[int(m.group(1))], sql.strip()))
PY
}
get_sql="$BENCH_TMP/get_connection.sql"
printf '%s\n' 'BEGIN;' "SET LOCAL mosaic.tenant_id = '$tenant';" \
  "SELECT $select_list FROM connections t WHERE t.tenant_id = '$tenant' AND t.connection_id = '$connection';" 'COMMIT;' >"$get_sql"
reveal_sql="$BENCH_TMP/reveal.sql"
printf '%s\n' 'BEGIN;' "SET LOCAL mosaic.tenant_id = '$tenant';" \
  "$(fill "$reveal_source" "'$tenant'" "'$connection'");" \
  "INSERT INTO audit_events (tenant_id, event_id, actor, action, resource_type, resource_id, request_id, details) VALUES ('$tenant', gen_random_uuid(), 'service:bench-worker', 'connection.reveal', 'connection', '$connection', gen_random_uuid()::text, '{\"reason\": \"bench sync job\", \"secret_version\": 1}');" \
  'COMMIT;' >"$reveal_sql"
for script in "$get_sql" "$reveal_sql"; do
  rows=$(bench_psql mosaic_identity -At -f "$script") || bench_die "$script fails in psql"
  [ "$(printf '%s\n' "$rows" | grep -c "^$connection|")" = 1 ] || bench_die "$script does not read the connection as mosaic_identity"
done

# --- approved actions to claim: one tenant for gRPC, one for pgbench ----------------------------
ag_tenant=$tenant
bench_create_tenant "bench approvals pgbench"
pg_tenant=$BENCH_TENANT_ID
ag_token=$owner
seed() {
  bench_psql mosaic_admin -c "INSERT INTO agents.actions (tenant_id, action_id, kind, parameters, reason, state, expires_at, decided_by, decided_at)
    SELECT '$1', gen_random_uuid(), 'send_email', '{\"to\": [\"ada@example.com\"], \"subject\": \"Hi\", \"body\": \"Hello\"}',
           'the contact asked', 'approved', now() + interval '7 days', 'user:bench', now() - (i || ' ms')::interval
    FROM generate_series(1, $approved) AS i" >/dev/null || bench_die "could not seed actions"
}
t0=$(bench_now_ms)
seed "$ag_tenant"
seed "$pg_tenant"
bench_psql mosaic_admin -c "VACUUM ANALYZE agents.actions" >/dev/null || bench_die "VACUUM ANALYZE failed"
bench_say "seeded $approved approved actions in each of two tenants in $(($(bench_now_ms) - t0)) ms"
approved_left() {
  bench_psql mosaic_admin -At -c "SELECT count(*) FROM agents.actions WHERE tenant_id = '$1' AND state = 'approved'"
}
claim_body="$BENCH_TMP/claim.bin"
bench_grpc_frame "$claim_body" 1:int=10 2:hex=08901c # max_actions 10, lease { seconds: 3600 }
claim_source=$(bench_rust_const "$BENCH_REPO/services/agents/src/approvals/storage.rs" CLAIM) ||
  bench_die "could not read CLAIM from services/agents/src/approvals/storage.rs"
# The service's select list (approvals::storage::SELECT, built from macros there).
expired="(t.state = 'pending' AND t.expires_at <= now())"
lapsed="(t.state = 'executing' AND t.lease_expires_at <= now())"
action_cols="t.action_id, t.agent_id, t.kind, t.parameters, t.subject_type, t.subject_id, t.reason, CASE WHEN $expired THEN 'expired' WHEN $lapsed THEN 'approved' ELSE t.state END AS state, t.expires_at, t.decided_by, t.decided_at, t.decision_note, t.parameters_diff, CASE WHEN $lapsed THEN NULL ELSE t.claim_id END AS claim_id, CASE WHEN $lapsed THEN NULL ELSE t.lease_expires_at END AS lease_expires_at, t.claim_id AS last_claim_id, t.attempt_count, t.result, t.error, t.revision, t.created_at, t.updated_at, NULL::timestamptz AS deleted_at"
claim_update() { # <tenant>
  python3 - "$claim_source" "'$1'" <<'PY'
import re, sys
sql, tenant = sys.argv[1:]
params = {1: tenant, 2: "10", 3: "gen_random_uuid()", 4: "3600::float8"}
print(re.sub(r"\$(\d+)", lambda m: params[int(m.group(1))], sql.strip()))
PY
}
claim_sql="$BENCH_TMP/claim.sql"
printf '%s\n' 'BEGIN;' "SET LOCAL mosaic.tenant_id = '$pg_tenant';" \
  "$(claim_update "$pg_tenant") RETURNING $action_cols;" \
  "INSERT INTO audit_events (tenant_id, event_id, actor, action, resource_type, resource_id, request_id, details) VALUES ('$pg_tenant', gen_random_uuid(), 'user:bench', 'action.claim', 'claim', gen_random_uuid()::text, gen_random_uuid()::text, '{\"action_ids\": []}');" \
  'COMMIT;' >"$claim_sql"
claimed=$(bench_psql mosaic_agents -At -f "$claim_sql" | grep -c '|executing|') || true
[ "$claimed" = 10 ] || bench_die "the claim script does not claim 10 actions as mosaic_agents (claimed $claimed)"
plan=$(bench_psql mosaic_agents -At -c "BEGIN; SET LOCAL mosaic.tenant_id = '$pg_tenant'; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) $(claim_update "$pg_tenant"); ROLLBACK;" |
  grep -vE '^(BEGIN|SET|ROLLBACK)$' | sed 's/^/   /')

# --- load --------------------------------------------------------------------------------------------
cpu_ticks() { awk '{print $14 + $15}' "/proc/$BENCH_SUITE_PID/stat"; }
hz=$(getconf CLK_TCK)
# run_grpc <label> <method path> <body> <token> <c>: bench_h2load, with the suite's CPU
# per call (microseconds) in BENCH_CPU_US.
run_grpc() {
  local before after
  before=$(cpu_ticks)
  bench_profile "$1" bench_h2load "$1" "$2" "$3" "$4" "$5" "$secs"
  after=$(cpu_ticks)
  BENCH_CPU_US=$(python3 -c 'import sys; d, hz, n = map(float, sys.argv[1:]); print(f"{d / hz * 1e6 / n:.0f}")' \
    "$((after - before))" "$hz" "$BENCH_OK_DELTA")
}
declare -A get_rps get_tps get_cpu reveal_rps reveal_tps reveal_cpu claim_rps claim_tps
for c in "${concurrency[@]}"; do
  run_grpc "GetConnection c=$c" "/$id_svc.ConnectionService/GetConnection" "$get_body" "$owner" "$c"
  get_rps[$c]=$BENCH_RPS get_cpu[$c]=$BENCH_CPU_US
  bench_pgbench "GetConnection pgbench c=$c" mosaic_identity "$get_sql" simple "$c" "$secs"
  get_tps[$c]=$BENCH_TPS
  run_grpc "RevealSecret c=$c" "/$id_svc.ConnectionService/RevealSecret" "$reveal_body" "$worker" "$c"
  reveal_rps[$c]=$BENCH_RPS reveal_cpu[$c]=$BENCH_CPU_US
  bench_pgbench "RevealSecret pgbench c=$c" mosaic_identity "$reveal_sql" simple "$c" "$secs"
  reveal_tps[$c]=$BENCH_TPS
  run_grpc "ClaimActions(10) c=$c" "/$ag_svc.ApprovalService/ClaimActions" "$claim_body" "$ag_token" "$c"
  claim_rps[$c]=$BENCH_RPS
  bench_pgbench "claim pgbench c=$c" mosaic_agents "$claim_sql" simple "$c" "$secs"
  claim_tps[$c]=$BENCH_TPS
  for t in "$ag_tenant" "$pg_tenant"; do
    [ "$(approved_left "$t")" -gt 0 ] || bench_die "tenant $t ran out of approved actions: raise BENCH_APPROVED"
  done
done
crypto=$("$BENCH_REPO/target/release/examples/vault_crypto" 200000 "$secret_bytes")
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -------------------------------------------------------------------------------------------
echo
echo "GetConnection (metadata) and RevealSecret ($secret_bytes-byte secret) over gRPC vs pgbench of the same"
echo "statements as mosaic_identity (-M simple), ~${secs}s each; the suite's CPU per call from /proc:"
printf '%-4s %10s %10s %8s %9s %11s %10s %8s %9s\n' c "get/s" "pg TPS" "get/pg" "get us" "reveal/s" "pg TPS" "rev/pg" "rev us"
for c in "${concurrency[@]}"; do
  printf '%-4s %10.0f %10.0f %8s %9s %11.0f %10.0f %8s %9s\n' "$c" \
    "${get_rps[$c]}" "${get_tps[$c]}" "$(bench_ratio "${get_rps[$c]}" "${get_tps[$c]}")" "${get_cpu[$c]}" \
    "${reveal_rps[$c]}" "${reveal_tps[$c]}" "$(bench_ratio "${reveal_rps[$c]}" "${reveal_tps[$c]}")" "${reveal_cpu[$c]}"
done
echo "$crypto"
echo "(the decryption cost of one reveal; the rest of a reveal's CPU over a get's is its transaction:"
echo " BEGIN, the joined SELECT, the audit INSERT, COMMIT, where a get is one message on the read lane)"
echo
echo "ClaimActions of 10 over gRPC vs pgbench of the same claim transaction as mosaic_agents (-M simple):"
printf '%-4s %14s %14s %14s\n' c "gRPC req/s" "pgbench TPS" "grpc/pgbench"
for c in "${concurrency[@]}"; do
  printf '%-4s %14.0f %14.0f %14s\n' "$c" "${claim_rps[$c]}" "${claim_tps[$c]}" \
    "$(bench_ratio "${claim_rps[$c]}" "${claim_tps[$c]}")"
done
echo "approved actions left: gRPC tenant $(approved_left "$ag_tenant"), pgbench tenant $(approved_left "$pg_tenant") (of $approved each)"
echo "the claim's plan:"
printf '%s\n' "$plan"
bench_suite_log_report
echo "loadavg at end: $load_end (nproc $(nproc); h2load, pgbench, the suite and PostgreSQL share these cores)"

#!/usr/bin/env bash
# Benchmark of crm: the contact import against PostgreSQL's raw bulk insert, and
# two tenant-scoped reads against PostgreSQL's own floor.
#
#   bash tests/bench/crm.sh
#
# Needs the local setup (`MOSAIC_PROFILE=release bash deploy/local/setup.sh`: PostgreSQL
# on 127.0.0.1:5432, roles, .data/mosaic.env, grpcurl, h2load, pgbench). In one run,
# all on 127.0.0.1, a few minutes:
#   1. builds release `mosaic` (to migrate and mint tokens), `mosaic-crm` and the
#      helper services/crm/examples/crm_bench.rs; runs `mosaic migrate`;
#   2. starts `mosaic-crm` alone (MOSAIC_LOG=warn) and measures its cold start;
#   3. import, BENCH_IMPORT_ROUNDS times, interleaved, each into a fresh tenant, the
#      same BENCH_IMPORT_ROWS rows (crm_bench builds them from the row number):
#        a. ImportContacts over gRPC (client stream, BENCH_IMPORT_PER_MESSAGE rows per
#           message; the service validates every row and upserts 1000 per transaction
#           with an audit event each);
#        b. raw, bound: one plain INSERT ... SELECT FROM UNNEST($arrays) per 1000 rows
#           per transaction, as mosaic_crm under RLS (crm_bench raw, sqlx);
#        c. raw, psql: the same statements with the arrays as literals (psql -f);
#   4. GetContact and a filtered ListContacts page (tag filter, 50 rows of a tenant of
#      BENCH_IMPORT_ROWS contacts) under h2load over gRPC at c=8 and c=32, every call
#      checked OK in the service's metrics, interleaved with pgbench as mosaic_crm
#      running the statements of one call (BEGIN; SET LOCAL mosaic.tenant_id; the
#      service's SELECT; COMMIT), as 4 round trips and as one pipeline;
#   5. prints rows/s, req/s, TPS, the ratios, peak RSS and cold start.
#
# Knobs: BENCH_IMPORT_ROWS (50000), BENCH_IMPORT_PER_MESSAGE (500),
# BENCH_IMPORT_ROUNDS (2), BENCH_SECONDS (10), BENCH_CONCURRENCY ("8 32"),
# BENCH_PIPELINE_MODE (prepared), BENCH_SKIP_BUILD=1, BENCH_PROFILE=1 (a perf profile of
# mosaic-crm during each gRPC read run), and those of tests/bench/lib.sh.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rows=${BENCH_IMPORT_ROWS:-50000}
per_message=${BENCH_IMPORT_PER_MESSAGE:-500}
rounds=${BENCH_IMPORT_ROUNDS:-2}
list_rows=${BENCH_LIST_ROWS:-5000}
secs=${BENCH_SECONDS:-10}
read -r -a concurrency <<<"${BENCH_CONCURRENCY:-8 32}"
pipeline_mode=${BENCH_PIPELINE_MODE:-prepared}
role=mosaic_crm

bench_init
bench_require_tools
bench_host_info

MOSAIC_BIN="$BENCH_REPO/target/release/mosaic"
CRM_BIN="$BENCH_REPO/target/release/mosaic-crm"
TOOL="$BENCH_REPO/target/release/examples/crm_bench"
bench_build "--bin mosaic" "-p mosaic-crm --bin mosaic-crm --example crm_bench"
for b in "$MOSAIC_BIN" "$CRM_BIN" "$TOOL"; do
  [ -x "$b" ] || bench_die "$b is missing"
done
"$MOSAIC_BIN" migrate >"$BENCH_TMP/migrate.log" 2>&1 || { cat "$BENCH_TMP/migrate.log" >&2; bench_die "mosaic migrate failed"; }
bench_say "schemas migrated (mosaic migrate)"

# The service alone: mosaic-crm serves without a subcommand.
BENCH_BIN=$CRM_BIN
BENCH_SERVE_COMMAND='' bench_start_suite

new_uuid() { cat /proc/sys/kernel/random/uuid; }
# Every service refuses tokens of tenants identity never created (the access view),
# and identity does not run here: a bench tenant is the row CreateTenant would write,
# inserted as the admin login. crm reads it once, on the tenant's first call.
bench_tenants=()
new_tenant() { # <variable to set>
  local t
  t=$(new_uuid)
  bench_psql mosaic_admin -c "INSERT INTO identity.tenants (tenant_id, display_name, plan) VALUES ('$t', 'crm bench', 'pro')" >/dev/null ||
    bench_die "could not create a bench tenant"
  bench_tenants+=("$t")
  printf -v "$1" '%s' "$t"
}
token_for() { "$MOSAIC_BIN" token --tenant "$1" --sub "user:$(new_uuid)" --role owner; }
# The bench tenants and their rows are removed at exit (as the admin login: audit
# events are append-only for mosaic_crm), so repeated runs do not grow the database.
cleanup_tenants() {
  [ "${#bench_tenants[@]}" -gt 0 ] || return 0
  local list
  list=$(printf "'%s'," "${bench_tenants[@]}")
  list=${list%,}
  bench_psql mosaic_admin -c "DELETE FROM crm.activities WHERE tenant_id IN ($list); DELETE FROM crm.deals WHERE tenant_id IN ($list); DELETE FROM crm.contacts WHERE tenant_id IN ($list); DELETE FROM crm.companies WHERE tenant_id IN ($list); DELETE FROM crm.audit_events WHERE tenant_id IN ($list); DELETE FROM identity.tenants WHERE tenant_id IN ($list);" ||
    bench_say "could not remove the bench tenants' rows"
}
bench_on_exit cleanup_tenants
count_contacts() {
  bench_psql "$role" -At -c "BEGIN; SET LOCAL mosaic.tenant_id = '$1'; SELECT count(*) FROM contacts; COMMIT;" |
    grep -E '^[0-9]+$'
}

# What PostgreSQL did during one phase of a round, to tell a slow round's cause:
# checkpoints started, WAL written (MB), autovacuum workers seen at its end.
pg_mark() {
  bench_psql mosaic_admin -At -F' ' -c "SELECT checkpoints_timed + checkpoints_req, pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_stat_bgwriter"
}
pg_since() { # <mark before> -> "<checkpoints> <WAL MB> <autovacuum workers>"
  local now av
  now=$(pg_mark)
  av=$(bench_psql mosaic_admin -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
  python3 -c 'import sys; a, b, c, d, v = sys.argv[1:]; print(int(c) - int(a), round((float(d) - float(b)) / 1e6), v)' $1 $now "$av"
}

# --- 3. import ---------------------------------------------------------------------------
grpc_best=0 bound_best=0 psql_best=0 read_tenant=
for ((r = 1; r <= rounds; r++)); do
  tag="b$(date +%s%N)"
  new_tenant t_grpc
  new_tenant t_bound
  new_tenant t_psql

  mark=$(pg_mark)
  out=$("$TOOL" import "127.0.0.1:$BENCH_GRPC_PORT" "$(token_for "$t_grpc")" "$rows" "$tag" "$per_message") ||
    bench_die "ImportContacts failed: $out"
  grpc_rate=$(sed -nE 's/.*rows_per_sec=([0-9]+).*/\1/p' <<<"$out")
  [[ "$out" == *"created=$rows updated=0 failed=0"* ]] || bench_die "ImportContacts did not create every row: $out"
  [ "$(count_contacts "$t_grpc")" = "$rows" ] || bench_die "the imported tenant does not hold $rows contacts"
  pg_grpc=$(pg_since "$mark")
  bench_say "round $r ImportContacts over gRPC: $out"
  read_tenant=${read_tenant:-$t_grpc}
  read_tag=${read_tag:-$tag}

  mark=$(pg_mark)
  out=$("$TOOL" raw "$t_bound" "$rows" "$tag") || bench_die "raw bound insert failed: $out"
  pg_bound=$(pg_since "$mark")
  bound_rate=$(sed -nE 's/.*rows_per_sec=([0-9]+).*/\1/p' <<<"$out")
  bench_say "round $r raw INSERT ... SELECT FROM UNNEST (bound arrays): $out"

  script="$BENCH_TMP/raw-$r.sql"
  "$TOOL" sql "$t_psql" "$rows" "$tag" >"$script"
  mark=$(pg_mark)
  t0=$(bench_now_ms)
  bench_psql "$role" -f "$script" >/dev/null || bench_die "raw psql insert failed"
  ms=$(($(bench_now_ms) - t0))
  psql_rate=$(python3 -c 'import sys; print(int(int(sys.argv[1]) * 1000 / max(1, int(sys.argv[2]))))' "$rows" "$ms")
  [ "$(count_contacts "$t_psql")" = "$rows" ] || bench_die "the psql tenant does not hold $rows contacts"
  bench_say "round $r raw INSERT ... SELECT FROM unnest (psql, literal arrays): rows=$rows ms=$ms rows_per_sec=$psql_rate"

  [ "$grpc_rate" -gt "$grpc_best" ] && grpc_best=$grpc_rate
  [ "$bound_rate" -gt "$bound_best" ] && bound_best=$bound_rate
  [ "$psql_rate" -gt "$psql_best" ] && psql_best=$psql_rate
  pg_psql=$(pg_since "$mark")
  printf -v "import_round_$r" '%s' "$grpc_rate $bound_rate $psql_rate"
  printf -v "import_pg_$r" '%s' "${pg_grpc// //}  ${pg_bound// //}  ${pg_psql// //}"
done

# --- 4. reads ------------------------------------------------------------------------------
tenant=$read_tenant
token=$(token_for "$tenant")
# The other lists read rows of the same tenant: BENCH_LIST_ROWS companies, as many
# deals (one per company) and activities (one per contact), written as the admin login.
bench_psql mosaic_admin -v ON_ERROR_STOP=1 >/dev/null <<SQL || bench_die "could not seed companies, deals and activities"
INSERT INTO crm.companies (tenant_id, company_id, display_name, domain, industry, employee_count)
  SELECT '$tenant', gen_random_uuid(), 'Company ' || i, 'c' || i || '.bench.example', 'software', i % 5000
  FROM generate_series(1, $list_rows) AS i;
INSERT INTO crm.deals (tenant_id, deal_id, company_id, display_name, stage, probability, value_minor, currency_code, expected_close_date)
  SELECT '$tenant', gen_random_uuid(), company_id, 'Deal of ' || display_name, 'qualified', 40, 125000, 'EUR', DATE '2027-03-31'
  FROM crm.companies WHERE tenant_id = '$tenant';
INSERT INTO crm.activities (tenant_id, activity_id, kind, contact_id, occurred_at, summary, details, actor)
  SELECT '$tenant', gen_random_uuid(), 'call', contact_id, now() - (random() * interval '90 days'),
         'Discovery call about the renewal and the seats they need next quarter',
         jsonb_build_object('duration_secs', 600, 'outcome', 'follow-up', 'channel', 'phone'), 'user:bench'
  FROM crm.contacts WHERE tenant_id = '$tenant' LIMIT $list_rows;
SQL
# Fresh statistics, as autoanalyze would have by now (it may be off on a test machine:
# without them the planner guesses a tenant holds a dozen rows and sorts all 50000).
bench_psql mosaic_admin -c "ANALYZE crm.contacts, crm.companies, crm.deals, crm.deal_contacts, crm.activities" || bench_die "ANALYZE failed"
contact=$(bench_psql "$role" -At -c "BEGIN; SET LOCAL mosaic.tenant_id = '$tenant'; SELECT contact_id FROM contacts WHERE email = 'r4242-$read_tag@bench.example'; COMMIT;" |
  grep -E '^[0-9a-f-]{36}$') || bench_die "no contact to read"

# The calls (method, label, request body) and the service's own SELECT of each, which
# pgbench runs as mosaic_crm inside BEGIN; SET LOCAL mosaic.tenant_id; ...; COMMIT.
ops=(get list companies deals activities)
declare -A method label body select field
method[get]=ContactService/GetContact label[get]=GetContact
method[list]=ContactService/ListContacts label[list]="ListContacts(tag)"
method[companies]=CompanyService/ListCompanies label[companies]=ListCompanies
method[deals]=DealService/ListDeals label[deals]=ListDeals
method[activities]=ActivityService/ListActivities label[activities]=ListActivities
field[list]=contacts field[companies]=companies field[deals]=deals field[activities]=activities
contact_cols="t.contact_id, t.company_id, t.email, t.full_name, t.title, t.phone, t.tags, t.metadata, t.revision, t.created_at, t.updated_at, t.deleted_at"
company_cols="t.company_id, t.display_name, t.domain, t.external_id, t.industry, t.employee_count, t.revision, t.created_at, t.updated_at, t.deleted_at"
deal_cols="t.deal_id, t.company_id, t.primary_contact_id, t.display_name, t.stage, t.probability, t.value_minor, t.currency_code, t.expected_close_date, ARRAY(SELECT dc.contact_id FROM deal_contacts dc WHERE dc.tenant_id = t.tenant_id AND dc.deal_id = t.deal_id ORDER BY dc.created_at, dc.contact_id) AS contact_ids, t.revision, t.created_at, t.updated_at, t.deleted_at"
activity_cols="t.activity_id, t.kind, t.company_id, t.contact_id, t.deal_id, t.occurred_at, t.summary, t.details, t.actor, t.created_at"
select[get]="SELECT $contact_cols FROM contacts t WHERE t.tenant_id = '$tenant' AND t.contact_id = '$contact'"
# A filtered contact page reads a scan window of at most 10,000 rows (see SCAN_WINDOW).
select[list]="SELECT * FROM (SELECT $contact_cols, true AND t.tags @> ARRAY['bench-vip']::text[] AS hit, row_number() OVER (ORDER BY t.contact_id) = 10000 AS window_end FROM contacts t WHERE t.tenant_id = '$tenant' AND t.deleted_at IS NULL ORDER BY t.contact_id LIMIT 10000) w WHERE w.hit OR w.window_end ORDER BY w.contact_id LIMIT 51"
select[companies]="SELECT $company_cols FROM companies t WHERE t.tenant_id = '$tenant' AND t.deleted_at IS NULL ORDER BY t.company_id LIMIT 51"
select[deals]="SELECT $deal_cols FROM deals t WHERE t.tenant_id = '$tenant' AND t.deleted_at IS NULL ORDER BY t.deal_id LIMIT 51"
select[activities]="SELECT $activity_cols FROM activities t WHERE t.tenant_id = '$tenant' ORDER BY t.occurred_at DESC, t.activity_id DESC LIMIT 51"
for op in "${ops[@]}"; do
  body[$op]="$BENCH_TMP/$op.bin"
done
bench_grpc_frame "${body[get]}" 1="$contact"   # GetContactRequest { contact_id = 1 }
bench_grpc_frame "${body[list]}" 5="bench-vip" # ListContactsRequest { tag = 5 }, page_size default 50
for op in companies deals activities; do
  bench_grpc_frame "${body[$op]}" # no filter, page_size default 50
done

reply=$(bench_grpc "$token" mosaic.crm.v1.ContactService/GetContact "{\"contact_id\":\"$contact\"}") ||
  bench_die "GetContact with grpcurl failed: $reply"
[ "$(printf '%s' "$reply" | bench_json_get contactId)" = "$contact" ] || bench_die "GetContact returned another contact: $reply"
for op in list companies deals activities; do
  request='{}'
  [ "$op" = list ] && request='{"tag":"bench-vip"}'
  reply=$(bench_grpc "$token" "mosaic.crm.v1.${method[$op]}" "$request") || bench_die "${label[$op]} with grpcurl failed: $reply"
  listed=$(printf '%s' "$reply" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get(sys.argv[1], [])))' "${field[$op]}")
  [ "$listed" = 50 ] || bench_die "${label[$op]} returned $listed rows, expected a full page of 50"
done
bench_say "GetContact and the four Lists answer with grpcurl (full pages of 50)"

for op in "${ops[@]}"; do
  printf '%s\n' 'BEGIN;' "SET LOCAL mosaic.tenant_id = '$tenant';" "${select[$op]};" 'COMMIT;' >"$BENCH_TMP/${op}_4.sql"
  { printf '%s\n' '\startpipeline'; cat "$BENCH_TMP/${op}_4.sql"; printf '%s\n' '\endpipeline'; } >"$BENCH_TMP/${op}_pipeline.sql"
  # pgbench ignores results: prove once that each script reads what its call reads.
  want=51
  [ "$op" = get ] && want=1
  got=$(bench_psql "$role" -At -f "$BENCH_TMP/${op}_4.sql" | grep -cE '^[0-9a-f-]{36}\|')
  [ "$got" = "$want" ] || bench_die "the ${label[$op]} script reads $got rows as $role, not $want"
done
bench_say "pgbench scripts read the same rows as $role under RLS"
# The service prepares each SELECT once per connection, with the tenant, the filters and
# the LIMIT as parameters, so after five runs PostgreSQL may keep a generic plan: show
# that one (what a 1,000-row or a 1,000,000-row tenant gets alike).
declare -A prepared
prepared[list]="(uuid, text, int8, int8, int8) AS SELECT * FROM (SELECT $contact_cols, true AND t.tags @> ARRAY[\$2]::text[] AS hit, row_number() OVER (ORDER BY t.contact_id) = \$3 AS window_end FROM contacts t WHERE t.tenant_id = \$1 AND t.deleted_at IS NULL ORDER BY t.contact_id LIMIT \$4) w WHERE w.hit OR w.window_end ORDER BY w.contact_id LIMIT \$5|'$tenant', 'bench-vip', 10000, 10000, 51"
prepared[companies]="(uuid, int8) AS SELECT $company_cols FROM companies t WHERE t.tenant_id = \$1 AND t.deleted_at IS NULL ORDER BY t.company_id LIMIT \$2|'$tenant', 51"
prepared[deals]="(uuid, int8) AS SELECT $deal_cols FROM deals t WHERE t.tenant_id = \$1 AND t.deleted_at IS NULL ORDER BY t.deal_id LIMIT \$2|'$tenant', 51"
prepared[activities]="(uuid, int8) AS SELECT $activity_cols FROM activities t WHERE t.tenant_id = \$1 ORDER BY t.occurred_at DESC, t.activity_id DESC LIMIT \$2|'$tenant', 51"
echo "Generic plans of the list statements (EXPLAIN ANALYZE as $role):"
for op in list companies deals activities; do
  echo "-- ${label[$op]}"
  bench_explain_generic "$role" "$tenant" "${prepared[$op]%%|*}" "${prepared[$op]#*|}"
done

declare -A rps tps4 tpsp
for c in "${concurrency[@]}"; do
  for op in "${ops[@]}"; do
    bench_profile "${label[$op]} c=$c" bench_h2load "${label[$op]} c=$c" "/mosaic.crm.v1.${method[$op]}" "${body[$op]}" "$token" "$c" "$secs"
    rps[$op,$c]=$BENCH_RPS
    bench_pgbench "pgbench $op 4 statements c=$c" "$role" "$BENCH_TMP/${op}_4.sql" simple "$c" "$secs"
    tps4[$op,$c]=$BENCH_TPS
    bench_pgbench "pgbench $op pipeline c=$c" "$role" "$BENCH_TMP/${op}_pipeline.sql" "$pipeline_mode" "$c" "$secs"
    tpsp[$op,$c]=$BENCH_TPS
  done
done
peak_rss=$(bench_peak_rss_mib)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 5. report ------------------------------------------------------------------------------
echo
echo "ImportContacts of $rows rows ($per_message rows per message) vs raw INSERT ... SELECT FROM unnest, 1000 rows per transaction, rows/s:"
printf '%-6s %12s %14s %14s %12s %12s   %s\n' round "gRPC import" "raw (bound)" "raw (psql)" "grpc/bound" "grpc/psql" \
  "checkpoints/WAL MB/autovacuum workers during gRPC, bound, psql"
for ((r = 1; r <= rounds; r++)); do
  v="import_round_$r"
  read -r g b p <<<"${!v}"
  v="import_pg_$r"
  printf '%-6s %12s %14s %14s %12s %12s   %s\n' "$r" "$g" "$b" "$p" "$(bench_ratio "$g" "$b")" "$(bench_ratio "$g" "$p")" "${!v}"
done
printf '%-6s %12s %14s %14s %12s %12s\n' best "$grpc_best" "$bound_best" "$psql_best" \
  "$(bench_ratio "$grpc_best" "$bound_best")" "$(bench_ratio "$grpc_best" "$psql_best")"
echo
echo "Reads over gRPC (h2load -t 1 -m 1) vs pgbench as $role, ~${secs}s each (tenant of $rows contacts):"
printf '%-18s %-4s %12s %14s %15s %13s %15s\n' call c "gRPC req/s" "pgbench4 TPS" "pipelined TPS" "grpc/pgbench4" "grpc/pipelined"
for op in "${ops[@]}"; do
  for c in "${concurrency[@]}"; do
    printf '%-18s %-4s %12.0f %14.0f %15.0f %13s %15s\n' "${label[$op]}" "$c" \
      "${rps[$op,$c]}" "${tps4[$op,$c]}" "${tpsp[$op,$c]}" \
      "$(bench_ratio "${rps[$op,$c]}" "${tps4[$op,$c]}")" "$(bench_ratio "${rps[$op,$c]}" "${tpsp[$op,$c]}")"
  done
done
echo "pgbench4: BEGIN; SET LOCAL; SELECT; COMMIT as 4 round trips (-M simple); pipelined: the same in one \\startpipeline (-M $pipeline_mode)"
echo "mosaic-crm peak RSS (VmHWM): ${peak_rss} MiB; cold start (process start to SERVING): ${BENCH_COLD_START_MS} ms"
bench_suite_log_report
echo "loadavg at end: $load_end (nproc $(nproc); h2load, mosaic-crm, the clients and PostgreSQL share these cores)"

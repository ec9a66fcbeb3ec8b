#!/usr/bin/env bash
# Benchmark of a List page as one tenant grows: ListContacts with no filter, with the
# tag filter and with a full-text query, in one tenant of 10,000, 100,000 and 1,000,000
# contacts (BENCH_SCALES), beside another tenant's BENCH_OTHER_ROWS rows.
#
#   bash tests/bench/lists.sh
#
# Needs what tests/bench/crm.sh needs. In one run, all on 127.0.0.1:
#   1. builds release `mosaic` and `mosaic-crm` (BENCH_SKIP_BUILD=1 skips), migrates,
#      starts `mosaic-crm` alone;
#   2. seeds the other tenant, then grows the measured tenant to each scale with plain
#      INSERT ... SELECT FROM generate_series as the admin login (1 contact in 10 is
#      tagged 'vip'; 1 in 5 is named 'grace', the full-text term), and ANALYZE;
#   3. at each scale: the generic plan of each list statement as the service prepares
#      it (EXPLAIN ANALYZE), and each list under h2load at c=BENCH_CONCURRENCY (8) for
#      BENCH_SECONDS (10), every call checked OK in the service's metrics;
#   4. prints req/s per scale and the ratio of each scale to the first.
#
# A keyset page reads the index in (tenant_id, contact_id) order and stops at the page,
# so its cost does not follow the tenant's size; the plans in the output show it.
# Knobs: BENCH_SCALES ("10000 100000 1000000"), BENCH_OTHER_ROWS (100000),
# BENCH_CONCURRENCY (8), BENCH_SECONDS (10), BENCH_SKIP_BUILD, BENCH_PROFILE, and those
# of tests/bench/lib.sh.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

read -r -a scales <<<"${BENCH_SCALES:-10000 100000 1000000}"
other_rows=${BENCH_OTHER_ROWS:-100000}
conc=${BENCH_CONCURRENCY:-8}
secs=${BENCH_SECONDS:-10}
role=mosaic_crm

bench_init
bench_require_tools
bench_host_info

MOSAIC_BIN="$BENCH_REPO/target/release/mosaic"
CRM_BIN="$BENCH_REPO/target/release/mosaic-crm"
bench_build "--bin mosaic" "-p mosaic-crm --bin mosaic-crm"
"$MOSAIC_BIN" migrate >"$BENCH_TMP/migrate.log" 2>&1 || { cat "$BENCH_TMP/migrate.log" >&2; bench_die "mosaic migrate failed"; }

BENCH_BIN=$CRM_BIN
BENCH_SERVE_COMMAND='' bench_start_suite

tenant=$(cat /proc/sys/kernel/random/uuid)
other=$(cat /proc/sys/kernel/random/uuid)
cleanup() {
  bench_psql mosaic_admin -c "DELETE FROM crm.contacts WHERE tenant_id IN ('$tenant', '$other'); DELETE FROM identity.tenants WHERE tenant_id IN ('$tenant', '$other');" ||
    bench_say "could not remove the bench tenants' rows"
}
bench_on_exit cleanup
bench_psql mosaic_admin -c "INSERT INTO identity.tenants (tenant_id, display_name, plan) VALUES ('$tenant', 'lists bench', 'pro'), ('$other', 'lists bench (other)', 'pro')" >/dev/null ||
  bench_die "could not create the bench tenants"
token=$("$MOSAIC_BIN" token --tenant "$tenant" --sub "user:$(cat /proc/sys/kernel/random/uuid)" --role owner)

# seed <tenant> <first row> <last row>: contacts as ImportContacts would write them.
seed() {
  bench_psql mosaic_admin -c "INSERT INTO crm.contacts (tenant_id, contact_id, email, full_name, title, tags, metadata)
    SELECT '$1', gen_random_uuid(), 'p' || i || '@scale.example',
           'Person ' || i || ' ' || (ARRAY['ada', 'grace', 'alan', 'edsger', 'barbara'])[i % 5 + 1],
           'Engineer', CASE WHEN i % 10 = 0 THEN ARRAY['vip', 'lead'] ELSE ARRAY['lead'] END,
           jsonb_build_object('source', 'scale', 'row', i)
    FROM generate_series($2, $3) AS i" >/dev/null || bench_die "seeding contacts failed"
}
t0=$(bench_now_ms)
seed "$other" 1 "$other_rows"
bench_say "other tenant: $other_rows contacts in $(($(bench_now_ms) - t0)) ms"

cols="t.contact_id, t.company_id, t.email, t.full_name, t.title, t.phone, t.tags, t.metadata, t.revision, t.created_at, t.updated_at, t.deleted_at"
filters=(none tag text)
declare -A frame prepared label
label[none]="no filter" label[tag]="tag=vip" label[text]="query=grace"
# ListContactsRequest: tag = 5, query = 8 (strings); page_size default 50.
for f in "${filters[@]}"; do frame[$f]="$BENCH_TMP/list_$f.bin"; done
bench_grpc_frame "${frame[none]}"
bench_grpc_frame "${frame[tag]}" 5=vip
bench_grpc_frame "${frame[text]}" 8=grace
prepared[none]="(uuid, int8) AS SELECT $cols FROM contacts t WHERE t.tenant_id = \$1 AND t.deleted_at IS NULL ORDER BY t.contact_id LIMIT \$2|'$tenant', 51"
# Filtered pages read a scan window of at most 10,000 rows (SCAN_WINDOW), the rows that
# pass and the window's last row.
windowed() { # <condition on t with $2> -> the service's statement
  printf '%s' "(uuid, text, int8, int8, int8) AS SELECT * FROM (SELECT $cols, true AND $1 AS hit, row_number() OVER (ORDER BY t.contact_id) = \$3 AS window_end FROM contacts t WHERE t.tenant_id = \$1 AND t.deleted_at IS NULL ORDER BY t.contact_id LIMIT \$4) w WHERE w.hit OR w.window_end ORDER BY w.contact_id LIMIT \$5"
}
prepared[tag]="$(windowed 't.tags @> ARRAY[$2]::text[]')|'$tenant', 'vip', 10000, 10000, 51"
prepared[text]="$(windowed "t.search @@ to_tsquery('simple', \$2)")|'$tenant', 'grace:*', 10000, 10000, 51"

declare -A rps
have=0
for scale in "${scales[@]}"; do
  t0=$(bench_now_ms)
  seed "$tenant" $((have + 1)) "$scale"
  have=$scale
  bench_psql mosaic_admin -c "ANALYZE crm.contacts" || bench_die "ANALYZE failed"
  bench_say "tenant at $scale contacts (seeded and analyzed in $(($(bench_now_ms) - t0)) ms)"
  echo "Generic plans at $scale contacts (EXPLAIN ANALYZE as $role):"
  for f in "${filters[@]}"; do
    echo "-- ListContacts ${label[$f]}"
    bench_explain_generic "$role" "$tenant" "${prepared[$f]%%|*}" "${prepared[$f]#*|}"
  done
  for f in "${filters[@]}"; do
    request='{}'
    [ "$f" = tag ] && request='{"tag":"vip"}'
    [ "$f" = text ] && request='{"query":"grace"}'
    reply=$(bench_grpc "$token" mosaic.crm.v1.ContactService/ListContacts "$request") || bench_die "ListContacts ${label[$f]} failed: $reply"
    listed=$(printf '%s' "$reply" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("contacts", [])))')
    [ "$listed" = 50 ] || bench_die "ListContacts ${label[$f]} returned $listed contacts, expected 50"
    bench_profile "ListContacts ${label[$f]} at $scale" bench_h2load "ListContacts ${label[$f]} at $scale" \
      /mosaic.crm.v1.ContactService/ListContacts "${frame[$f]}" "$token" "$conc" "$secs"
    rps[$f,$scale]=$BENCH_RPS
  done
done

echo
echo "ListContacts pages of 50 over gRPC (h2load -t 1 -m 1, c=$conc, ~${secs}s each) as one tenant grows, beside $other_rows rows of another:"
printf '%-18s' filter
for scale in "${scales[@]}"; do printf ' %12s' "$scale"; done
printf ' %16s\n' "last/first"
for f in "${filters[@]}"; do
  printf '%-18s' "${label[$f]}"
  for scale in "${scales[@]}"; do printf ' %12.0f' "${rps[$f,$scale]}"; done
  printf ' %16s\n' "$(bench_ratio "${rps[$f,${scales[-1]}]}" "${rps[$f,${scales[0]}]}")"
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg) (nproc $(nproc))"

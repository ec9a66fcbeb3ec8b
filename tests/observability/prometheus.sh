#!/usr/bin/env bash
# The rules of deploy/prometheus/rules.yml in a real Prometheus, against the real suite.
#
#   bash tests/observability/prometheus.sh
#
# In one run, all on 127.0.0.1, about 3 minutes:
#   1. starts a PostgreSQL of its own (initdb + pg_ctl on a free port, as the
#      `postgres` OS user when run as root), migrates it with `mosaic migrate`;
#      the machine's PostgreSQL is never touched (Redis and the MongoDB-wire server
#      on their usual ports are only used, with a database of this run's own);
#   2. starts `mosaic serve` (the debug build) against it, and a Prometheus
#      (Debian package `prometheus`) that scrapes its metrics every 5 s and
#      evaluates the rules;
#   3. drives load: GetTenant with h2load, plus calls that fail (NOT_FOUND);
#   4. queries the Prometheus HTTP API until the recording rules have values, and
#      prints them;
#   5. stops its own PostgreSQL and waits until MosaicNotServing fires (health
#      NOT_SERVING for 1 minute), printing the alerts Prometheus shows.
# Everything it started is stopped on exit, also on failure (trap).
#
# Knobs: OBS_SKIP_BUILD=1 (use target/debug/mosaic as it is), OBS_BIN (another mosaic
# binary, with OBS_SKIP_BUILD=1), OBS_LOAD_SECONDS (20),
# and those of tests/bench/lib.sh.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../bench/lib.sh"

load_secs=${OBS_LOAD_SECONDS:-20}

bench_init
bench_require_tools
for tool in prometheus promtool; do
  command -v "$tool" >/dev/null 2>&1 ||
    bench_die "$tool missing: apt-get install -y prometheus (deploy/local/setup.sh installs it)"
done
pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
[ -x "$pg_bin/initdb" ] || bench_die "no PostgreSQL server binaries under /usr/lib/postgresql"

# --- build ---------------------------------------------------------------------------
BENCH_BIN=${OBS_BIN:-$BENCH_REPO/target/debug/mosaic}
if [ "${OBS_SKIP_BUILD:-0}" != 1 ]; then
  bench_say "cargo build --bin mosaic (output in $BENCH_TMP/build.log)"
  cargo build --bin mosaic >"$BENCH_TMP/build.log" 2>&1 || {
    tail -n 40 "$BENCH_TMP/build.log" >&2
    bench_die "cargo build failed"
  }
fi
[ -x "$BENCH_BIN" ] || bench_die "$BENCH_BIN is missing"

# --- a PostgreSQL of our own ---------------------------------------------------------
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/mosaic-obs-pg.XXXXXX")
chmod 755 "$pg_dir"
[ "$(id -u)" != 0 ] || chown postgres: "$pg_dir"
pg_port=$(bench_pick_port 25432)
pg_started=0
stop_pg() {
  if [ "$pg_started" = 1 ]; then
    as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    pg_started=0
  fi
}
bench_on_exit 'stop_pg; rm -rf "$pg_dir"'
bench_say "initdb and pg_ctl start: PostgreSQL of this run on 127.0.0.1:$pg_port ($pg_dir)"
as_postgres "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 >"$BENCH_TMP/initdb.log" 2>&1 ||
  bench_die "initdb failed: $(tail -n 5 "$BENCH_TMP/initdb.log")"
pg_started=1
as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 30 \
  -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=60" start >/dev/null ||
  bench_die "pg_ctl start failed: $(tail -n 5 "$pg_dir/postgres.log")"
psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE mosaic_admin LOGIN SUPERUSER PASSWORD 'mosaic-local'" >/dev/null

pw=mosaic-local
export MOSAIC_ADMIN_DATABASE_URL="postgres://mosaic_admin:$pw@127.0.0.1:$pg_port/postgres"
for svc in identity crm agents billing access; do
  declare -x "MOSAIC_${svc^^}_DATABASE_URL=postgres://mosaic_$svc:$pw@127.0.0.1:$pg_port/mosaic"
done
export MOSAIC_CONVERSATIONS_MONGODB_URL="${MOSAIC_TEST_MONGODB_SERVER:-mongodb://127.0.0.1:27017}/mosaic_obs_$(date +%s)"
export MOSAIC_PROBE_INTERVAL_MS=500 MOSAIC_DB_MAX_CONNECTIONS=4 MOSAIC_DB_READ_CONNECTIONS=2
"$BENCH_BIN" migrate >"$BENCH_TMP/migrate.log" 2>&1 ||
  bench_die "mosaic migrate failed: $(tail -n 5 "$BENCH_TMP/migrate.log")"

# --- the suite and Prometheus --------------------------------------------------------
bench_start_suite
prom_port=$(bench_pick_port 29090 "$BENCH_METRICS_PORT")
prom_dir="$BENCH_TMP/prometheus"
mkdir -p "$prom_dir/data"
cat >"$prom_dir/prometheus.yml" <<EOF
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $BENCH_REPO/deploy/prometheus/rules.yml
scrape_configs:
  - job_name: mosaic
    static_configs:
      - targets: ['127.0.0.1:$BENCH_METRICS_PORT']
EOF
promtool check config "$prom_dir/prometheus.yml" >/dev/null
prometheus --config.file="$prom_dir/prometheus.yml" --storage.tsdb.path="$prom_dir/data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$prom_dir/prometheus.log" 2>&1 &
prom_pid=$!
bench_on_exit 'kill "$prom_pid" 2>/dev/null; wait "$prom_pid" 2>/dev/null'
prom="http://127.0.0.1:$prom_port"
for _ in $(seq 1 100); do
  curl -sf "$prom/-/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf "$prom/-/ready" >/dev/null || bench_die "prometheus did not start: $(tail -n 5 "$prom_dir/prometheus.log")"
bench_say "prometheus pid $prom_pid on $prom scraping 127.0.0.1:$BENCH_METRICS_PORT"

# prom_query <expr>: prints each series of an instant query as "labels value".
prom_query() {
  curl -sf "$prom/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    labels = ",".join("%s=%s" % (k, json.dumps(v)) for k, v in sorted(r["metric"].items()))
    print("{%s} %.4g" % (labels, float(r["value"][1])))'
}

# wait_for <seconds> <expr>: until the query has a series.
wait_for() {
  local until=$(($(date +%s) + $1))
  while [ "$(date +%s)" -lt "$until" ]; do
    [ -z "$(prom_query "$2")" ] || return 0
    sleep 2
  done
  return 1
}

# --- load ------------------------------------------------------------------------------
bench_create_tenant "observability"
body="$BENCH_TMP/get_tenant.bin"
bench_grpc_frame "$body" 1="$BENCH_TENANT_ID"
missing="$BENCH_TMP/get_missing.bin"
bench_grpc_frame "$missing" 1="$(cat /proc/sys/kernel/random/uuid)"
bench_say "load: GetTenant (h2load, c=4, ~${load_secs}s) and GetTenant of a tenant that does not exist"
for _ in $(seq 1 20); do
  bench_grpc "$BENCH_TENANT_TOKEN" mosaic.identity.v1.TenantService/GetTenant \
    "{\"tenant_id\":\"$(cat /proc/sys/kernel/random/uuid)\"}" >/dev/null 2>&1 || true
done
bench_h2load "GetTenant c=4" /mosaic.identity.v1.TenantService/GetTenant "$body" "$BENCH_TENANT_TOKEN" 4 "$load_secs"

# --- the recording rules have values -----------------------------------------------------
bench_say "waiting for the recording rules (their groups evaluate every 30 s)"
wait_for 90 'grpc_service_method_code:mosaic_grpc_requests:rate5m' ||
  bench_die "the recording rules produced nothing within 90 s"
wait_for 40 'grpc_service:mosaic_grpc_read_latency_sli:ratio_rate5m' || true
echo
for rule in \
  'grpc_service_method_code:mosaic_grpc_requests:rate5m{grpc_service="mosaic.identity.v1.TenantService"}' \
  'grpc_service_method:mosaic_grpc_errors:ratio_rate5m{grpc_service="mosaic.identity.v1.TenantService"}' \
  'grpc_service:mosaic_grpc_errors:ratio_rate5m' \
  'grpc_service_method:mosaic_grpc_request_duration_seconds:p99_5m{method="/mosaic.identity.v1.TenantService/GetTenant"}' \
  'grpc_service:mosaic_grpc_read_latency_sli:ratio_rate5m{grpc_service="mosaic.identity.v1.TenantService"}' \
  'service:mosaic_db_pool_in_use:ratio' \
  'mosaic_health_serving{grpc_service="mosaic.identity.v1.TenantService"}'; do
  echo "$rule"
  out=$(prom_query "$rule")
  [ -n "$out" ] || bench_die "no value for $rule"
  printf '%s\n' "$out" | sed 's/^/    /'
done

# --- stopping PostgreSQL fires MosaicNotServing --------------------------------------------
echo
bench_say "stopping this run's PostgreSQL (pg_ctl stop -m fast)"
as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast stop >/dev/null
pg_started=0
stopped_at=$(date +%s)
alerts() {
  curl -sf "$prom/api/v1/alerts" | python3 -c '
import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    l = a["labels"]
    print(a["state"], l["alertname"], l.get("grpc_service", l.get("service", "")), a["annotations"].get("summary", ""))'
}
fired=0
while [ $(($(date +%s) - stopped_at)) -lt 150 ]; do
  now=$(alerts)
  if printf '%s\n' "$now" | grep -q '^firing MosaicNotServing mosaic.identity.v1.TenantService'; then
    fired=1
    break
  fi
  sleep 3
done
echo "alerts $(($(date +%s) - stopped_at)) s after PostgreSQL stopped:"
alerts | sort | sed 's/^/    /'
[ "$fired" = 1 ] || bench_die "MosaicNotServing did not fire within 150 s"
echo
echo "recording rules have values; MosaicNotServing fired $(($(date +%s) - stopped_at)) s after PostgreSQL stopped (for: 1m)"

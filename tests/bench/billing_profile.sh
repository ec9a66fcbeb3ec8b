#!/usr/bin/env bash
# Where a Consume's cost goes in mosaic-billing, in counts that do not depend on
# how busy the shared machine is:
#
#   bash tests/bench/billing_profile.sh
#
#   1. instructions: mosaic-billing runs under valgrind --tool=callgrind (this
#      machine's VMs have no hardware counters for `perf stat -e instructions`);
#      after a warm-up, the counters are zeroed for ~BENCH_SECONDS of Consume
#      spread over BENCH_ACCOUNTS accounts at c=BENCH_CONCURRENCY run, and
#      the instructions the service executed are divided by the Consume calls it
#      answered (its own metrics). Prints the top functions, self and inclusive.
#   2. round trips: the same load against mosaic-billing under `strace -f -yy`,
#      counting the service's socket writes and reads per peer (PostgreSQL :5432,
#      Redis :6379, the gRPC clients), per Consume.
#
# Knobs: BENCH_CALLGRIND=0 (round trips only), BENCH_SECONDS (20), BENCH_CONCURRENCY (8), BENCH_ACCOUNTS (1000),
# BENCH_PROFILE_DIR (target/bench-profile), BENCH_SKIP_BUILD=1, and those of lib.sh.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

secs=${BENCH_SECONDS:-20}
c=${BENCH_CONCURRENCY:-8}
accounts=${BENCH_ACCOUNTS:-1000}
method=/mosaic.billing.v1.CreditService/Consume

bench_init
bench_require_tools
bench_host_info
command -v valgrind >/dev/null 2>&1 || bench_die "valgrind is missing (apt-get install -y valgrind)"
command -v strace >/dev/null 2>&1 || bench_die "strace is missing (apt-get install -y strace)"

MOSAIC_BIN="$BENCH_REPO/target/release/mosaic"
BILLING_BIN="$BENCH_REPO/target/release/mosaic-billing"
TOOL="$BENCH_REPO/target/release/examples/billing_bench"
bench_build "--bin mosaic" "-p mosaic-billing --bin mosaic-billing --example billing_bench"
"$MOSAIC_BIN" migrate >"$BENCH_TMP/migrate.log" 2>&1 || { cat "$BENCH_TMP/migrate.log" >&2; bench_die "mosaic migrate failed"; }
mkdir -p "${BENCH_PROFILE_DIR:=$BENCH_REPO/target/bench-profile}"
out="$BENCH_PROFILE_DIR/callgrind.billing.out"

# ok_calls: the service's OK Consume count so far.
ok_calls() {
  bench_metric_codes "$method" "$BENCH_TMP/codes"
  awk '$1 == "OK" {print $2; f=1} END {if (!f) print 0}' "$BENCH_TMP/codes"
}

# run_under <wrapper...>: starts mosaic-billing under the wrapper (valgrind or strace).
run_under() {
  printf '#!/bin/sh\nexec %s "%s"\n' "$*" "$BILLING_BIN" >"$BENCH_TMP/wrapped"
  chmod +x "$BENCH_TMP/wrapped"
  BENCH_BIN="$BENCH_TMP/wrapped" BENCH_SERVE_COMMAND='' bench_start_suite
  addr="127.0.0.1:$BENCH_GRPC_PORT"
}

admin=$("$MOSAIC_BIN" token) || bench_die "mosaic token failed"

# --- 1. instructions per Consume --------------------------------------------------
if [ "${BENCH_CALLGRIND:-1}" = 1 ]; then
rm -f "$out"*
run_under valgrind --tool=callgrind --callgrind-out-file="$out"
"$TOOL" setup "$addr" "$admin" "$accounts" 1000000000000 >/dev/null || bench_die "setup failed"
"$TOOL" consume "$addr" "$admin" "$accounts" "$c" 3 >/dev/null || bench_die "warm-up failed"
n0=$(ok_calls)
callgrind_control -z "$BENCH_SUITE_PID" >/dev/null
result=$("$TOOL" consume "$addr" "$admin" "$accounts" "$c" "$secs")
n1=$(ok_calls)
callgrind_control -d "$BENCH_SUITE_PID" >/dev/null
calls=$((n1 - n0))
bench_say "under callgrind: $result; the service answered $calls Consume calls"
bench_stop_suite
dump=$(ls -t "$out".* | head -n 1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo
echo "mosaic-billing, Consume spread over $accounts accounts at c=$c, under callgrind:"
echo "  $total instructions for $calls calls: $((total / calls)) per Consume"
echo "inclusive, the handler's and the layers' own frames (top 60; callgrind counts user space only):"
callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null |
  grep -E '^ *[0-9,]+ \(' | grep -vE 'PROGRAM TOTALS|clone\.S|pthread_create|/runtime/(blocking|context|scheduler|task)/|thread_start|lifecycle\.rs' |
  sed -E 's|/root/\.cargo/registry/src/[^/]+/||; s|/rustc/[0-9a-f]+/||; s| \[/[^]]*\]$||' | head -n 60 | cut -c1-220 || true
echo "(kept in $dump: callgrind_annotate $dump)"

fi

# --- 2. round trips per Consume -------------------------------------------------------
BENCH_BIN="$BILLING_BIN" BENCH_SERVE_COMMAND='' bench_start_suite
addr="127.0.0.1:$BENCH_GRPC_PORT"
"$TOOL" consume "$addr" "$admin" "$accounts" "$c" 2 >/dev/null || bench_die "warm-up failed"
trace="$BENCH_PROFILE_DIR/strace"
rm -f "$trace".*
n0=$(ok_calls)
strace -f -qq -yy -z -e trace=sendto,sendmsg,write,writev,recvfrom,recvmsg,read,readv \
  -p "$(ls "/proc/$BENCH_SUITE_PID/task" | paste -sd,)" -ff -o "$trace" 2>/dev/null &
strace_pid=$!
sleep 1
"$TOOL" consume "$addr" "$admin" "$accounts" "$c" 5 >/dev/null
kill -INT "$strace_pid" 2>/dev/null || true
wait "$strace_pid" 2>/dev/null || true
n1=$(ok_calls)
calls=$((n1 - n0))
echo
echo "successful socket calls of mosaic-billing per Consume (strace -f while $calls calls ran, c=$c):"
cat "$trace".* | python3 -c '
import re, sys, collections
calls = int(sys.argv[1])
counts = collections.Counter()
for line in sys.stdin:
    m = re.match(r"(\w+)\(\d+<TCP(?:v6)?:\[([^\]]*)\]>", line)
    if not m:
        continue
    name, conn = m.groups()
    port = conn.split("->")[-1].rsplit(":", 1)[-1]
    who = {"5432": "postgres", "6379": "redis"}.get(port, "grpc client")
    kind = "send" if name.startswith(("send", "write")) else "recv"
    counts[(who, kind)] += 1
for (who, kind), n in sorted(counts.items()):
    print(f"  {who:12} {kind:5} {n / calls:6.2f}")
' "$calls"
bench_stop_suite

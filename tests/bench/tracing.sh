#!/usr/bin/env bash
# What exporting trace spans costs: GetTenant (as tests/bench/identity.sh loads it) with
# export off, and on at 100% sampling to an OTLP receiver on the same machine, in one run.
#
#   bash tests/bench/tracing.sh
#
# Builds the release `mosaic` binary and the `otlp_sink` example (an OTLP/gRPC receiver
# that accepts and counts spans), then, BENCH_ROUNDS times (2): starts the suite without
# OTEL_EXPORTER_OTLP_ENDPOINT, loads GetTenant with h2load at c=BENCH_C (8) for
# ~BENCH_SECONDS (10), stops it; starts it with OTEL_EXPORTER_OTLP_ENDPOINT pointing at
# the sink and OTEL_TRACES_SAMPLER=always_on, loads the same, reads its span counters,
# stops it. Prints req/s of each run, the on/off ratio, the spans the sink received and
# the spans the suite dropped. Knobs: those of tests/bench/lib.sh.
set -euo pipefail

# shellcheck source=tests/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

secs=${BENCH_SECONDS:-10}
c=${BENCH_C:-8}
rounds=${BENCH_ROUNDS:-2}
method=/mosaic.identity.v1.TenantService/GetTenant

bench_init
bench_require_tools
bench_host_info
bench_build "--bin mosaic" "--example otlp_sink"
sink_bin="$BENCH_REPO/target/release/examples/otlp_sink"
sink_port=$(bench_pick_port 24317)
"$sink_bin" "127.0.0.1:$sink_port" >"$BENCH_TMP/sink.log" 2>&1 &
sink_pid=$!
bench_on_exit 'kill "$sink_pid" 2>/dev/null; wait "$sink_pid" 2>/dev/null'

metric() {
  curl -sf "http://127.0.0.1:$BENCH_METRICS_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'
}

declare -a off_rps on_rps
sent=0
dropped=0
for round in $(seq 1 "$rounds"); do
  bench_start_suite
  [ "$round" != 1 ] || {
    bench_create_tenant "bench tracing"
    body="$BENCH_TMP/get_tenant.bin"
    bench_grpc_frame "$body" 1="$BENCH_TENANT_ID"
  }
  bench_h2load "GetTenant c=$c export off (round $round)" "$method" "$body" "$BENCH_TENANT_TOKEN" "$c" "$secs"
  off_rps+=("$BENCH_RPS")
  bench_stop_suite

  OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" OTEL_TRACES_SAMPLER=always_on \
    OTEL_SERVICE_NAME=mosaic-bench bench_start_suite
  bench_h2load "GetTenant c=$c export on (round $round)" "$method" "$body" "$BENCH_TENANT_TOKEN" "$c" "$secs"
  on_rps+=("$BENCH_RPS")
  sleep 2 # the last batch
  sent=$((sent + $(metric mosaic_otel_spans_exported_total)))
  dropped=$((dropped + $(metric mosaic_otel_spans_dropped_total)))
  bench_stop_suite
done
kill -TERM "$sink_pid"
wait "$sink_pid" 2>/dev/null || true
received=$(tail -n 1 "$BENCH_TMP/sink.log")

echo
echo "GetTenant over gRPC (h2load -t 1 -m 1, c=$c, ~${secs}s each), release build:"
printf '%-6s %16s %16s %8s\n' round "export off req/s" "export on req/s" "on/off"
for i in "${!off_rps[@]}"; do
  printf '%-6s %16.0f %16.0f %8s\n' "$((i + 1))" "${off_rps[$i]}" "${on_rps[$i]}" \
    "$(bench_ratio "${on_rps[$i]}" "${off_rps[$i]}")"
done
echo "spans: exported $sent, dropped $dropped (the suite's counters); the sink received: $received"
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg) (nproc $(nproc); h2load, the suite, PostgreSQL and the sink share these cores)"

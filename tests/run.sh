#!/usr/bin/env bash
# The test command: formatting, lints, unused dependencies, contract and manifest checks, then the whole
# workspace's tests against real PostgreSQL, Redis and SecantusDB on loopback
# (started, and installed if missing, by deploy/local/setup.sh).
#
#   bash tests/run.sh                          # everything, as CI runs it
#   bash tests/run.sh -p mosaic-crm            # cargo arguments go before `--`
#   bash tests/run.sh -- tenant --nocapture    # test-binary arguments after it
#   MOSAIC_SKIP_LINT=1 bash tests/run.sh       # skip fmt, clippy, buf and k8s checks
#
# Exits with cargo test's exit code, so any failing test fails the run.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

step() { printf 'test: %s\n' "$*"; }
lint=1
[ "${MOSAIC_SKIP_LINT:-0}" = 1 ] && lint=0

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH="$HOME/.cargo/bin:$PATH"
fi

if [ "$lint" = 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
fi

MOSAIC_PROFILE=dev bash deploy/local/setup.sh

set -a
# shellcheck source=/dev/null
. .data/mosaic.env
set +a
export MOSAIC_ADMIN_DATABASE_URL=${MOSAIC_ADMIN_DATABASE_URL:-postgres://mosaic_admin:mosaic-local@127.0.0.1:5432/postgres}

if [ "$lint" = 1 ]; then
  step "buf lint"
  (cd proto && ../.venv/bin/buf lint)
  step "buf breaking (against the previous commit)"
  if git rev-parse --verify --quiet HEAD~1 >/dev/null; then
    .venv/bin/buf breaking proto --against ".git#ref=HEAD~1,subdir=proto"
  else
    echo "buf breaking: no previous commit (a shallow clone); skipped"
  fi
  step "kubernetes manifests"
  bash deploy/k8s/validate.sh
  step "prometheus rules (promtool check + unit tests)"
  bash deploy/prometheus/check.sh
  step "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  step "unused dependencies (cargo-machete)"
  if ! command -v cargo-machete >/dev/null 2>&1; then
    cargo install --locked --quiet cargo-machete@0.9.2
  fi
  cargo machete
fi

# Arguments before a `--` go to cargo, those after it to the test binaries.
cargo_args=()
test_args=()
seen_separator=0
for arg in "$@"; do
  if [ "$seen_separator" = 0 ] && [ "$arg" = -- ]; then
    seen_separator=1
  elif [ "$seen_separator" = 1 ]; then
    test_args+=("$arg")
  else
    cargo_args+=("$arg")
  fi
done
case " ${test_args[*]} " in
  *" --test-threads"*) ;;
  *) test_args=(--test-threads 8 "${test_args[@]}") ;;
esac

step "cargo test"
exec cargo test --workspace --locked "${cargo_args[@]}" -- "${test_args[@]}"

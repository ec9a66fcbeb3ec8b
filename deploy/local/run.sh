#!/usr/bin/env bash
# The run command: brings up PostgreSQL, Redis and SecantusDB on loopback (installing
# what is missing), bootstraps roles, migrates, then serves every Mosaic service in
# one process. Extra arguments go to `mosaic serve`.
#
#   bash deploy/local/run.sh
#   MOSAIC_PROFILE=dev bash deploy/local/run.sh     # debug build
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export MOSAIC_PROFILE=${MOSAIC_PROFILE:-release}

bash "$repo/deploy/local/setup.sh"

set -a
# shellcheck source=/dev/null
. "$repo/.data/mosaic.env"
set +a

case "$MOSAIC_PROFILE" in
  release) profile_args=(--release) ;;
  dev) profile_args=() ;;
  *) profile_args=(--profile "$MOSAIC_PROFILE") ;;
esac

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH="$HOME/.cargo/bin:$PATH"
fi

cd "$repo"
exec cargo run "${profile_args[@]}" --bin mosaic -- serve "$@"

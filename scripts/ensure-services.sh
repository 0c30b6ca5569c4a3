#!/usr/bin/env bash
# Installs (Debian's packages), creates and starts PostgreSQL and Redis when they are not
# answering on 127.0.0.1, and creates the `test` database. One line for each service.
# Installing needs root (or sudo); a machine that already runs both is only checked.
set -u
pg_host=${PGHOST_CHECK:-127.0.0.1}
pg_port=5432
redis_port=6379

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq >/dev/null 2>&1 || true
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >/dev/null 2>&1
}

pg_up() { pg_isready -q -h "$pg_host" -p "$pg_port" 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; }
wait_for() { for _ in $(seq 1 60); do "$@" && return 0; sleep 0.5; done; "$@"; }

# PostgreSQL -------------------------------------------------------------------------------
if pg_up; then
  pg_said="running on $pg_host:$pg_port"
else
  installed=
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql postgresql-contrib || {
      echo "postgresql: not installed and apt-get could not install it (run as root, or" \
           "install PostgreSQL yourself and set TEST_DATABASE_URL)" >&2
      exit 1
    }
    installed="installed, "
  fi
  version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  if [ ! -d "/etc/postgresql/$version/main" ]; then
    # Room for the test suite's workers (16 connections each at start, two test processes).
    as_root pg_createcluster "$version" main --port "$pg_port" -o max_connections=300 \
      >/dev/null 2>&1
    installed="${installed}cluster created, "
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
  wait_for pg_up
  if pg_up; then
    pg_said="${installed}started on $pg_host:$pg_port (PostgreSQL $version)"
  else
    echo "postgresql: not reachable on $pg_host:$pg_port and could not be started here" \
         "(see /var/log/postgresql/); or set TEST_DATABASE_URL" >&2
    exit 1
  fi
fi
# The tests, demo and bench connect as postgres without a password over loopback: a
# development cluster on this machine trusts 127.0.0.1 and ::1 for it.
if ! psql -h "$pg_host" -p "$pg_port" -U postgres -d postgres -w -tAc "SELECT 1" >/dev/null 2>&1; then
  hba=$(as_root su postgres -c "psql -p $pg_port -tAc 'SHOW hba_file'" 2>/dev/null)
  if [ -n "$hba" ] && [ -f "$hba" ]; then
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    as_root su postgres -c "psql -p $pg_port -qc 'SELECT pg_reload_conf()'" >/dev/null 2>&1
    sleep 0.3
    pg_said="$pg_said; loopback trusted for postgres ($hba)"
  fi
fi
if ! psql -h "$pg_host" -p "$pg_port" -U postgres -d postgres -w -tAc "SELECT 1" >/dev/null 2>&1; then
  echo "postgresql: running, but user postgres cannot connect from $pg_host without a" \
       "password; trust loopback in pg_hba.conf or set TEST_DATABASE_URL" >&2
  exit 1
fi
if ! psql -h "$pg_host" -p "$pg_port" -U postgres -d postgres -w -tAc \
    "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1; then
  psql -h "$pg_host" -p "$pg_port" -U postgres -d postgres -w -qc "CREATE DATABASE test" \
    >/dev/null 2>&1 && pg_said="$pg_said; database test created"
fi
echo "postgresql: $pg_said"

# Redis ------------------------------------------------------------------------------------
if redis_up; then
  echo "redis: running on 127.0.0.1:$redis_port"
else
  installed=
  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server || {
      echo "redis: not installed and apt-get could not install it (run as root, or" \
           "install redis-server yourself)" >&2
      exit 1
    }
    installed="installed, "
  fi
  # Our own process (not the package's service): memory only, loopback only.
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" \
    --appendonly no --logfile "${TMPDIR:-/tmp}/payment-worker-redis.log" >/dev/null 2>&1
  wait_for redis_up
  if redis_up; then
    echo "redis: ${installed}started on 127.0.0.1:$redis_port"
  else
    echo "redis: not reachable on 127.0.0.1:$redis_port and could not be started here" \
         "(see ${TMPDIR:-/tmp}/payment-worker-redis.log)" >&2
    exit 1
  fi
fi
exit 0

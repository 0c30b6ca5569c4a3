#!/usr/bin/env bash
# Starts the machine's PostgreSQL and Redis when they are not answering. Prints one line each.
set -u
pg_host=${PGHOST_CHECK:-127.0.0.1}
if pg_isready -q -h "$pg_host" -p 5432 2>/dev/null; then
  echo "postgresql: running on $pg_host:5432"
else
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h "$pg_host" -p 5432 && break; sleep 0.5; done
  fi
  if pg_isready -q -h "$pg_host" -p 5432 2>/dev/null; then
    echo "postgresql: started on $pg_host:5432"
  else
    echo "postgresql: not reachable on $pg_host:5432 and could not be started here;" \
         "install it (apt-get install postgresql) or set TEST_DATABASE_URL" >&2
    exit 1
  fi
fi
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "redis: running on 127.0.0.1:6379"
else
  if command -v redis-server >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "redis: started on 127.0.0.1:6379"
  else
    echo "redis: not reachable on 127.0.0.1:6379 and could not be started here;" \
         "install it (apt-get install redis-server)" >&2
    exit 1
  fi
fi
if ! psql -h "$pg_host" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" 2>/dev/null | grep -q 1; then
  psql -h "$pg_host" -U postgres -d postgres -qc "CREATE DATABASE test" >/dev/null 2>&1 \
    && echo "postgresql: created database test"
fi
exit 0

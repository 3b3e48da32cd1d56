#!/usr/bin/env bash
# Make sure the PostgreSQL (127.0.0.1:5432, database `test`) and Redis (127.0.0.1:6379) servers the
# test suite uses are answering; start them when they are installed but stopped. Prints what it did.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Install a missing server from Debian's packages when we are root (a fresh machine).
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
  else
    echo "cannot install $* (not root or no apt-get); install it and rerun" >&2
  fi
}

if ! port_open 5432 && ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt_install postgresql
fi
if ! port_open 6379 && ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server
fi

wait_port() {
  for _ in $(seq 1 50); do port_open "$1" && return 0; sleep 0.2; done
  return 1
}

if port_open 5432; then
  echo "postgres: answering on 127.0.0.1:5432"
elif command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "postgres: not answering, starting it"
  version="$(ls /etc/postgresql | head -n1)"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432 && echo "postgres: started" || echo "postgres: FAILED to start" >&2
  # the tests connect as postgres over TCP to database `test` (trust auth on a fresh install)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if [ -w "$hba" ] && ! grep -q "coro_durable tests" "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust  # coro_durable tests' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
  fi
  su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" 2>/dev/null | grep -q 1 \
    || su postgres -c "createdb test" 2>/dev/null || true
else
  echo "postgres: not installed (the Postgres store tests will say so)" >&2
fi

if port_open 6379; then
  echo "redis: answering on 127.0.0.1:6379"
elif command -v redis-server >/dev/null 2>&1; then
  echo "redis: not answering, starting it"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  wait_port 6379 && echo "redis: started" || echo "redis: FAILED to start" >&2
else
  echo "redis: not installed (the Redis store tests will say so)" >&2
fi
exit 0

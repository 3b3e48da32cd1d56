#!/usr/bin/env bash
# Make sure the PostgreSQL (127.0.0.1:5432, database `test`) and Redis (127.0.0.1:6379) servers the
# test suite uses are answering; start them when they are installed but stopped. Prints what it did.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do port_open "$1" && return 0; sleep 0.2; done
  return 1
}

if port_open 5432; then
  echo "postgres: answering on 127.0.0.1:5432"
elif command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  echo "postgres: not answering, starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_port 5432 && echo "postgres: started" || echo "postgres: FAILED to start" >&2
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

#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on 127.0.0.1, installing and
# starting them when they are not. Prints the environment the tests need
# (eval "$(scripts/services.sh)"). Starts only what is missing; stops nothing.
set -euo pipefail

log() { echo "services: $*" >&2; }

need_apt_update=1
apt_install() {
  if [ "$need_apt_update" = 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    need_apt_update=0
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# --- PostgreSQL -------------------------------------------------------------
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "PostgreSQL is not installed: installing it"
  apt_install postgresql
fi
if ! pg_up; then
  version=$(ls /etc/postgresql | sort -V | tail -1)
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
fi
pg_up || { log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }

# Trust auth on the project's machines; a fresh install wants a password over TCP.
pg_url="postgres://postgres@127.0.0.1:5432/postgres"
if ! psql "$pg_url" -Atqc 'select 1' >/dev/null 2>&1; then
  log "setting a password for the postgres role (TCP logins need one here)"
  su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >&2
  pg_url="postgres://postgres:postgres@127.0.0.1:5432/postgres"
  psql "$pg_url" -Atqc 'select 1' >/dev/null
fi
log "PostgreSQL ready"
echo "export SLUICE_TEST_PG_URL='$pg_url'"

# --- Redis ------------------------------------------------------------------
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    log "Redis is not installed: installing it"
    apt_install redis-server redis-tools
  fi
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2
  for _ in $(seq 1 50); do redis_up && break; sleep 0.2; done
fi
redis_up || { log "Redis did not come up on 127.0.0.1:6379"; exit 1; }
log "Redis ready"
echo "export SLUICE_TEST_REDIS_URL='redis://127.0.0.1:6379'"

#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432, database `test`) and Redis (127.0.0.1:6379) answer;
# start them, or install them from Debian's packages, where they do not.
set -uo pipefail
pg_ok() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_ok() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! pg_ok; then
    if ! command -v pg_ctlcluster >/dev/null; then
        as_root apt-get update -qq && as_root apt-get install -y -qq postgresql >/dev/null
        # a fresh Debian cluster asks loopback clients for a password; the tests use trust auth
        hba="$(ls /etc/postgresql/*/main/pg_hba.conf | sort -V | tail -1)"
        as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    ver="$(ls /etc/postgresql | sort -V | tail -1)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    for _ in $(seq 30); do pg_ok && break; sleep 1; done
    # trust auth and the `test` database, as on the developers' machines
    if pg_ok && ! psql -h 127.0.0.1 -U postgres -lqt 2>/dev/null | cut -d'|' -f1 | grep -qw test; then
        as_root su postgres -c "createdb test" 2>/dev/null || true
    fi
fi
if ! redis_ok; then
    if ! command -v redis-server >/dev/null; then
        as_root apt-get update -qq && as_root apt-get install -y -qq redis-server >/dev/null
    fi
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null || true
    for _ in $(seq 15); do redis_ok && break; sleep 1; done
fi
# Both run on every developer and CI machine (DESIGN.md): a run without them must fail, not skip.
rc=0
if pg_ok; then echo "[services] PostgreSQL answers on 127.0.0.1:5432"; else echo "[services] ERROR: PostgreSQL does not answer on 127.0.0.1:5432" >&2; rc=1; fi
if redis_ok; then echo "[services] Redis answers on 127.0.0.1:6379"; else echo "[services] ERROR: Redis does not answer on 127.0.0.1:6379" >&2; rc=1; fi
exit "$rc"

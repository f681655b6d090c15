#!/usr/bin/env bash
# Build the image (Dockerfile) and check it for real, inside containers:
#   1. the image: non-root user, OMP_WAIT_POLICY=PASSIVE, a HEALTHCHECK, serve as the default command;
#   2. `musechat --help` lists the commands the stack runs (serve, db, demo; worker once it exists);
#   3. `musechat db upgrade` against the PostgreSQL on 127.0.0.1 (host network), in a fresh
#      database this script creates and drops: revision at head, the tables there;
#   4. `musechat worker` (when the image has it), on queues of its own in the host's Redis:
#      `--check` exits non-zero with no worker alive and 0 beside a live one (run inside its
#      container, as compose's healthcheck is), and SIGTERM stops it (exit 0) within 40 s;
#   5. `musechat demo --scripted` with no network and the demo music mounted read-only: it builds
#      the catalog, plays the conversation and writes the preview (an mp4 with video and audio);
#   6. `musechat serve` (the default command, no platform, no network) on the demo's /data: the
#      image's HEALTHCHECK passes, /readyz answers 200 (database, catalog, models), and SIGTERM
#      (`stop`) ends it cleanly ("stopped", exit 0) within compose's stop_grace_period of 30 s;
#   7. when podman-compose is there ($PODMAN_COMPOSE, .venv (a dev extra), or on PATH): `podman-compose config` reads
#      compose.yaml with compose.env.example filled in (the schema check is tests/test_compose.py).
# Exits non-zero on the first failure; prints what it checked and how long each step took.
#
#   bash scripts/container_check.sh          # ~4 min cold build + ~4 min of checks on 2 cores
#
# Settings (environment):
#   CONTAINER_ENGINE          podman (default) or docker
#   MUSECHAT_IMAGE            tag to build (default localhost/musechat:check)
#   MUSECHAT_CONTAINERS_SH    the machine set-up script whose --build-flags are used
#                             (default ../shared/tools/containers.sh; absent: a plain build)
#   MUSECHAT_CHECK_POSTGRES   admin URL of the PostgreSQL to migrate
#                             (default postgresql://postgres@127.0.0.1:5432/postgres)
#   MUSECHAT_CHECK_REDIS      Redis for the worker check (default redis://127.0.0.1:6379/15)
#   MUSECHAT_MUSIC_DIR        the demo music (default ~/.cache/musechat/music; scripts/fetch_music.sh)
#   PODMAN_COMPOSE            a podman-compose executable for step 7 (e.g. from a venv in /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE="${CONTAINER_ENGINE:-podman}"
IMAGE="${MUSECHAT_IMAGE:-localhost/musechat:check}"
TOOLS="${MUSECHAT_CONTAINERS_SH:-../shared/tools/containers.sh}"
# a clone elsewhere on this workplace's machines (CI's) finds the set-up script at its fixed place
[ -f "$TOOLS" ] || [ -n "${MUSECHAT_CONTAINERS_SH:-}" ] || [ ! -f /work/shared/tools/containers.sh ] || TOOLS=/work/shared/tools/containers.sh
PG_ADMIN="${MUSECHAT_CHECK_POSTGRES:-postgresql://postgres@127.0.0.1:5432/postgres}"
REDIS_URL="${MUSECHAT_CHECK_REDIS:-redis://127.0.0.1:6379/15}"
MUSIC="${MUSECHAT_MUSIC_DIR:-$HOME/.cache/musechat/music}"
STOP_GRACE=30   # seconds: compose.yaml's stop_grace_period of the bots
WORKER_GRACE=40  # seconds: compose.yaml's stop_grace_period of the workers
SERVE_READY_TIMEOUT=240  # seconds for `serve` to load the lite models on a busy 2-core machine

TAG="ctrcheck$$"
DB="musechat_${TAG}"
WORK="$(mktemp -d)"
SERVE="musechat-${TAG}-serve"
WORKER="musechat-${TAG}-worker"
QUEUE="musechat-${TAG}"   # the worker check's own SAQ queues
QUEUE_USED=0
DATA_VOLUME="musechat-${TAG}-data"  # /data of the demo, then of serve (SQLite + embedded catalog)
DB_CREATED=0
CHECKED=()

say() { echo "[container-check] $*"; }
fail() { echo "[container-check] FAILED: $*" >&2; exit 1; }
passed() { CHECKED+=("$1"); say "ok: $1"; }
now() { date +%s; }
# one-shot containers: no healthcheck timer (podman would ask systemd for one), removed after
run() { "$ENGINE" run --rm --no-healthcheck "$@"; }
health_ok() {  # the image's own HEALTHCHECK, run now (podman) or as last reported (docker runs it)
    if [ "$ENGINE" = podman ]; then "$ENGINE" healthcheck run "$1" >/dev/null 2>&1
    else [ "$("$ENGINE" inspect --format '{{.State.Health.Status}}' "$1")" = healthy ]; fi
}

pg_admin() {  # run SQL on the admin database from inside the image (asyncpg; no psql needed here)
    run --network host -e PG_ADMIN="$PG_ADMIN" -e SQL="$1" "$IMAGE" python -c "
import asyncio, os, asyncpg
async def main():
    c = await asyncpg.connect(os.environ['PG_ADMIN'])
    try:
        await c.execute(os.environ['SQL'])
    finally:
        await c.close()
asyncio.run(main())"
}

cleanup() {
    rc=$?
    "$ENGINE" rm -f -v "$SERVE" "$WORKER" >/dev/null 2>&1 || true
    if [ "$QUEUE_USED" = 1 ]; then  # the check's queue keys, nothing else
        run --network host -e REDIS_URL="$REDIS_URL" -e QUEUE="$QUEUE" "$IMAGE" python -c "
import os, redis
r = redis.Redis.from_url(os.environ['REDIS_URL'])
keys = list(r.scan_iter(match='*' + os.environ['QUEUE'] + '*'))
if keys:
    r.delete(*keys)" >/dev/null 2>&1 || say "could not remove the Redis keys of $QUEUE"
    fi
    "$ENGINE" volume rm -f "$DATA_VOLUME" >/dev/null 2>&1 || true
    if [ "$DB_CREATED" = 1 ]; then pg_admin "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || say "could not drop database $DB"; fi
    rm -rf "$WORK"
    if [ "$rc" = 0 ]; then
        say "all ${#CHECKED[@]} checks passed:"
        for c in "${CHECKED[@]}"; do echo "  - $c"; done
    else
        say "stopped after ${#CHECKED[@]} passing check(s); exit $rc"
    fi
}
trap cleanup EXIT

# --- 0. build ----------------------------------------------------------------------------------
command -v "$ENGINE" >/dev/null || { [ -f "$TOOLS" ] && [ "$ENGINE" = podman ] && bash "$TOOLS" >/dev/null; }
command -v "$ENGINE" >/dev/null || fail "$ENGINE is not installed"
flags=()
if [ -f "$TOOLS" ]; then
    bash "$TOOLS" >/dev/null   # idempotent: podman + runc + the Debian base image
    read -r -a flags <<<"$(bash "$TOOLS" --build-flags)"
fi
# podman writes OCI images by default, which drop HEALTHCHECK: keep Docker's format
[ "$ENGINE" = podman ] && flags+=(--format docker)
say "building $IMAGE (${flags[*]:-no extra flags}); cached layers are reused"
t0=$(now)
"$ENGINE" build "${flags[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "build"; }
size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
passed "build: $(( $(now) - t0 )) s, image $(( size / 1000000 )) MB"

# --- 1. the image's configuration ---------------------------------------------------------------
user=$("$ENGINE" image inspect --format '{{.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ] || fail "image runs as root (User='$user')"
uid=$(run --network none "$IMAGE" id -u)
[ "$uid" != 0 ] || fail "container runs as uid 0"
env_lines=$("$ENGINE" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE")
grep -qx 'OMP_WAIT_POLICY=PASSIVE' <<<"$env_lines" || fail "OMP_WAIT_POLICY=PASSIVE not set"
hc=$("$ENGINE" image inspect --format '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}}' "$IMAGE")
case "$hc" in *"/healthz"*) ;; *) fail "no HEALTHCHECK on /healthz (got '$hc')" ;; esac
cmd=$("$ENGINE" image inspect --format '{{join .Config.Cmd " "}}' "$IMAGE")
[ "$cmd" = "musechat serve" ] || fail "default command is '$cmd', not 'musechat serve'"
passed "image: user $user (uid $uid), OMP_WAIT_POLICY=PASSIVE, HEALTHCHECK on /healthz, CMD '$cmd'"

# --- 2. musechat --help -------------------------------------------------------------------------
run --network none "$IMAGE" musechat --help >"$WORK/help.txt" || { cat "$WORK/help.txt"; fail "musechat --help"; }
for c in serve db demo; do grep -qE "│ +$c +" "$WORK/help.txt" || { cat "$WORK/help.txt"; fail "musechat --help does not list '$c'"; }; done
has_worker=0
grep -qE "│ +worker +" "$WORK/help.txt" && has_worker=1
passed "musechat --help lists serve, db, demo$([ $has_worker = 1 ] && echo ', worker')"

# --- 3. db upgrade on PostgreSQL ----------------------------------------------------------------
t0=$(now)
pg_admin "CREATE DATABASE $DB" || fail "could not create database $DB through $PG_ADMIN"
DB_CREATED=1
db_url="$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$PG_ADMIN" "$DB")"
run --network host -e MUSECHAT_DATABASE_URL="$db_url" "$IMAGE" musechat db upgrade >"$WORK/upgrade.txt" 2>&1 \
    || { cat "$WORK/upgrade.txt"; fail "musechat db upgrade"; }
run --network host -e MUSECHAT_DATABASE_URL="$db_url" "$IMAGE" musechat db status >"$WORK/status.txt" 2>&1 \
    || { cat "$WORK/status.txt"; fail "musechat db status"; }
grep -q "up to date" "$WORK/status.txt" || { cat "$WORK/status.txt"; fail "database not at head after upgrade"; }
tables=$(run --network host -e DB_URL="$db_url" "$IMAGE" python -c "
import asyncio, os, asyncpg
async def main():
    c = await asyncpg.connect(os.environ['DB_URL'])
    rows = await c.fetch(\"select tablename from pg_tables where schemaname = 'public' order by 1\")
    await c.close()
    print(' '.join(r[0] for r in rows))
asyncio.run(main())")
for t in alembic_version conversations turns recommendations tracks jobs processed_events; do
    [[ " $tables " == *" $t "* ]] || fail "table $t missing after db upgrade (have: $tables)"
done
passed "musechat db upgrade on PostgreSQL (fresh database $DB, dropped after): $(tr -s ' \n' ' ' <"$WORK/status.txt" | sed 's/ *$//'); $(wc -w <<<"$tables") tables ($(( $(now) - t0 )) s)"

# --- 4. worker: --check with none alive, a live worker, SIGTERM ------------------------------------
# queues of their own on the host's Redis (removed after), as compose's healthcheck runs them
if [ "$has_worker" = 1 ]; then
    wenv=(-e MUSECHAT_REDIS_URL="$REDIS_URL" -e MUSECHAT_MODEL_RUNNER=saq
          -e MUSECHAT_QUEUE_INTERACTIVE="$QUEUE-interactive" -e MUSECHAT_QUEUE_CATALOG="$QUEUE-catalog")
    set +e
    run --network host "${wenv[@]}" "$IMAGE" musechat worker --check >"$WORK/worker.txt" 2>&1
    wrc=$?
    set -e
    [ "$wrc" != 0 ] || { cat "$WORK/worker.txt"; fail "musechat worker --check passed with no worker alive"; }
    QUEUE_USED=1
    t0=$(now)
    "$ENGINE" run -d --name "$WORKER" --init --no-healthcheck --network host "${wenv[@]}" "$IMAGE" musechat worker >/dev/null \
        || fail "could not start musechat worker"
    alive=0
    for _ in $(seq "$SERVE_READY_TIMEOUT"); do
        if [ "$("$ENGINE" inspect --format '{{.State.Running}}' "$WORKER")" != true ]; then
            "$ENGINE" logs "$WORKER" 2>&1 | tail -30; fail "musechat worker exited while starting"
        fi
        if "$ENGINE" exec "$WORKER" musechat worker --check >/dev/null 2>&1; then alive=1; break; fi
        sleep 1
    done
    [ "$alive" = 1 ] || { "$ENGINE" logs "$WORKER" 2>&1 | tail -30; fail "musechat worker --check never passed beside a live worker"; }
    t_alive=$(( $(now) - t0 ))
    t1=$(now)
    "$ENGINE" stop -t "$WORKER_GRACE" "$WORKER" >/dev/null 2>>"$WORK/podman.err"
    t_stop=$(( $(now) - t1 ))
    code=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$WORKER")
    [ "$code" = 0 ] || { "$ENGINE" logs "$WORKER" 2>&1 | tail -30; fail "musechat worker exited $code on SIGTERM"; }
    [ "$t_stop" -lt "$WORKER_GRACE" ] || fail "musechat worker took ${t_stop} s to stop (grace ${WORKER_GRACE} s)"
    "$ENGINE" rm -v "$WORKER" >/dev/null 2>>"$WORK/podman.err"
    passed "musechat worker: --check exits $wrc with none alive, 0 beside a live worker (after ${t_alive} s); SIGTERM -> exit 0 in ${t_stop} s"
else
    say "SKIPPED: musechat worker (this build has no 'worker' command)"
fi

# --- 5. the scripted demo -------------------------------------------------------------------------
[ -f "$MUSIC/wesnoth-1.16-music/.complete" ] || bash scripts/fetch_music.sh
mkdir -p "$WORK/out" && chmod 0777 "$WORK/out"   # written by the image's non-root user
t0=$(now)
run --network none --init -v "$DATA_VOLUME:/data" -v "$MUSIC:/music:ro" -v "$WORK/out:/out" "$IMAGE" \
    musechat demo --scripted --out-dir /out >"$WORK/demo.txt" 2>&1 || { tail -40 "$WORK/demo.txt"; fail "musechat demo --scripted"; }
t_demo=$(( $(now) - t0 ))
preview=$(find "$WORK/out" -maxdepth 1 -name 'musechat-preview-*.mp4' | head -1)
[ -n "$preview" ] || { tail -40 "$WORK/demo.txt"; fail "the demo wrote no preview into --out-dir"; }
grep -q "demo catalog: .* real tracks" "$WORK/demo.txt" || { tail -40 "$WORK/demo.txt"; fail "the demo built no catalog"; }
streams=$(run --network none -v "$WORK/out:/out:ro" "$IMAGE" python -c "
import subprocess, sys, imageio_ffmpeg
r = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-hide_banner', '-i', '/out/' + sys.argv[1]], capture_output=True, text=True)
print(' '.join(k for k in ('Video:', 'Audio:') if k in r.stderr))" "$(basename "$preview")")
[ "$streams" = "Video: Audio:" ] || fail "the preview $(basename "$preview") lacks a stream (found: '$streams')"
llm_reasons=$(grep -c "why *\[llm" "$WORK/demo.txt" || true)  # MUSECHAT_REASONER=local by default: told, not required (a CPU
# without native bfloat16 decodes in float32, and a reason that misses the time limit falls back to the tag summary)
passed "musechat demo --scripted (no network, music read-only): $(grep -o 'demo catalog: [0-9]* real tracks' "$WORK/demo.txt"), preview $(basename "$preview") ($(( $(stat -c %s "$preview") / 1024 )) KiB, video + audio), ${llm_reasons} reason(s) by the LLM, in ${t_demo} s"

# --- 6. serve: healthcheck, readiness, SIGTERM drain ----------------------------------------------
t0=$(now)
"$ENGINE" run -d --name "$SERVE" --init --network none -v "$DATA_VOLUME:/data" -v "$MUSIC:/music:ro" "$IMAGE" >/dev/null 2>"$WORK/serve-run.err" \
    || { cat "$WORK/serve-run.err"; fail "could not start serve"; }
healthy=0
for _ in $(seq "$SERVE_READY_TIMEOUT"); do
    if [ "$("$ENGINE" inspect --format '{{.State.Running}}' "$SERVE")" != true ]; then
        "$ENGINE" logs "$SERVE" | tail -30; fail "serve exited while starting"
    fi
    if health_ok "$SERVE"; then healthy=1; break; fi
    sleep 1
done
[ "$healthy" = 1 ] || { "$ENGINE" logs "$SERVE" | tail -30; fail "the image's HEALTHCHECK never passed"; }
t_health=$(( $(now) - t0 ))
ready=""
for _ in $(seq "$SERVE_READY_TIMEOUT"); do
    ready=$("$ENGINE" exec "$SERVE" python -c "
import urllib.request
try:
    r = urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=3)
except OSError as e:
    r = e
print(getattr(r, 'status', getattr(r, 'code', 'down')), r.read().decode() if hasattr(r, 'read') else r)" 2>/dev/null || true)
    [[ "$ready" == "200 "* ]] && break
    sleep 1
done
[[ "$ready" == "200 "* ]] || { "$ENGINE" logs "$SERVE" | tail -30; fail "/readyz never answered 200 (last: $ready)"; }
t_ready=$(( $(now) - t0 ))
t1=$(now)
"$ENGINE" stop -t "$STOP_GRACE" "$SERVE" >/dev/null 2>>"$WORK/podman.err"  # podman: "no systemd" noise
t_stop=$(( $(now) - t1 ))
code=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$SERVE")
"$ENGINE" logs "$SERVE" >"$WORK/serve.log" 2>&1
[ "$code" = 0 ] || { tail -30 "$WORK/serve.log"; fail "serve exited $code on SIGTERM"; }
grep -q "^stopped" "$WORK/serve.log" || { tail -30 "$WORK/serve.log"; fail "serve did not drain and say 'stopped'"; }
[ "$t_stop" -lt "$STOP_GRACE" ] || fail "serve took ${t_stop} s to stop (grace ${STOP_GRACE} s)"
"$ENGINE" rm -v "$SERVE" >/dev/null 2>>"$WORK/podman.err"
passed "musechat serve (no network, on the demo's data): HEALTHCHECK passed after ${t_health} s, /readyz 200 after ${t_ready} s, SIGTERM -> exit 0 in ${t_stop} s"

# --- 7. podman-compose config -------------------------------------------------------------------------
# podman-compose: $PODMAN_COMPOSE, else the project's venv (a dev extra), else PATH
pc="${PODMAN_COMPOSE:-}"
[ -n "$pc" ] || { [ -x .venv/bin/podman-compose ] && pc=.venv/bin/podman-compose; } || pc="$(command -v podman-compose || true)"
[ -z "$pc" ] || pc="$(cd "$(dirname "$pc")" && pwd)/$(basename "$pc")"
if [ -n "$pc" ] && [ -x "$pc" ]; then
    mkdir -p "$WORK/compose/music"
    cp compose.yaml "$WORK/compose/"
    sed -e 's/^POSTGRES_PASSWORD=$/POSTGRES_PASSWORD=check-only/' -e 's/^QDRANT_API_KEY=$/QDRANT_API_KEY=check-only/' \
        compose.env.example >"$WORK/compose/.env"
    (cd "$WORK/compose" && "$pc" config) >"$WORK/compose.txt" 2>&1 || { tail -20 "$WORK/compose.txt"; fail "podman-compose config"; }
    got=$(sed -n '/^services:/,/^[a-z]/p' "$WORK/compose.txt" | grep -E '^  [a-z0-9-]+:$' | tr -d ' :' | sort | tr '\n' ' ')
    want="bot-discord bot-slack migrate postgres qdrant redis worker "  # the default profiles (discord, slack, cpu)
    [ "$got" = "$want" ] || fail "podman-compose config: services '$got', expected '$want'"
    passed "podman-compose config ($("$pc" --version 2>/dev/null | paste -sd, -)): services $got"
else
    say "SKIPPED: podman-compose config (no podman-compose; set PODMAN_COMPOSE)"
fi

#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up if needed, make sure PostgreSQL and Redis
# answer, then run the fast suite and, as its own step, the tests marked slow.
# Extra arguments go to both pytest runs (e.g. -x, -k name).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
PY=.venv/bin/python

echo "[test] step 1/2: default suite (not slow)"
"$PY" -m pytest -m "not slow" -q "$@"

echo "[test] step 2/2: slow tests"
set +e
"$PY" -m pytest -m "slow" -q "$@"
rc=$?
set -e
# Exit 5 = "no tests collected" for this marker only; step 1 already proved tests run.
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi

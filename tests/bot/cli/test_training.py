"""`musechat data from-catalog`, `train` and `eval` end to end (tiny profile, analyses in the feature cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bot.cli.training import register_training_commands
from bot.service.catalog_admin import FEATURES_DIR, FeatureCache, features_key
from bot.settings import get_settings
from engine.checkpoint import load_checkpoint, load_retriever
from engine.media import Segment
from engine.profiles import load_encoders
from engine.tracks import TrackAnalysis
from training.features import FeatureDataset, FeatureSpec, write_synthetic_features

TAGS = ["guitar", "piano", "drums", "calm", "fast", "techno", "rock", "ambient"]


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MUSECHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSECHAT_PROFILE", "tiny")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    register_training_commands(app)
    return app


def _fill_catalog(n: int) -> Path:
    enc = load_encoders("tiny")
    cache = FeatureCache(Path(get_settings().data_dir) / FEATURES_DIR / features_key(enc.profile))
    g = np.random.default_rng(0)
    for i in range(n):
        probs = {f"mtt:{t}": float(p) for t, p in zip(TAGS, g.random(len(TAGS)), strict=True)}
        cache.put(
            TrackAnalysis(
                content_hash=f"{i + 1:064x}", profile="tiny", duration_s=120.0,
                segments=[Segment(index=k, start_s=10.0 * k, end_s=10.0 * k + 10) for k in range(12)],
                segment_vectors=g.standard_normal((12, enc.profile.music_dim)).astype(np.float32),
                tag_probs=probs, tempo_bpm=100.0, loudness_db=-14.0, onset_rate=2.0, excerpt_start_s=30.0,
                excerpt_duration_s=30.0, sentence=f"Song {i}: tags",
            )
        )
    return cache.root


def test_from_catalog_train_eval(app: typer.Typer, tmp_path: Path) -> None:
    _fill_catalog(40)
    runner = CliRunner()
    feats = tmp_path / "feats"
    r = runner.invoke(app, ["data", "from-catalog", "--out", str(feats), "--shard-size", "16"])
    assert r.exit_code == 0, r.output
    assert "40 music-only quartets" in r.output
    ds = FeatureDataset(feats)
    assert len(ds) == 40 and int(ds.tensors["video_len"].sum()) == 0 and (ds.tensors["text_len"] > 0).all()
    assert len((feats / "quartets.jsonl").read_text().splitlines()) == 40
    again = runner.invoke(app, ["data", "from-catalog", "--out", str(feats)])
    assert again.exit_code == 0 and "(0 new)" in again.output

    run = tmp_path / "run"
    fusion = json.dumps({"d_model": 16, "n_heads": 4, "n_layers": 1})
    r = runner.invoke(app, ["train", "--data", str(feats), "--out", str(run), "--max-steps", "3", "--batch-size", "8",
                            "--holdout", "10", "--no-video", "--device", "cpu", "--fusion", fusion, "--modality-dropout"])
    assert r.exit_code == 0, r.output
    assert "modality dropout on (video 0.1, text 0.3, candidate 0.5)" in r.output
    assert f"MUSECHAT_FUSION_CHECKPOINT={run / 'model'}" in r.output
    model = load_checkpoint(run / "model", expect_profile="tiny")
    assert model.config.use_video is False and model.config.d_model == 16
    assert (model.config.p_drop_video, model.config.p_drop_text, model.config.p_drop_candidate) == (0.1, 0.3, 0.5)

    report = tmp_path / "eval" / "table"
    r = runner.invoke(app, ["eval", "--data", str(feats), "--checkpoint", f"w/o video={run / 'model'}", "--holdout", "10", "--report", str(report)])
    assert r.exit_code == 0, r.output
    payload = json.loads(report.with_suffix(".json").read_text())
    assert payload["pool_size"] == 10 and payload["results"][0]["name"] == "w/o video"
    # no video at turn 1: one constant query, so the 10 targets take the ranks 1..10 once each
    assert payload["results"][0]["turn1"]["median_rank"] == 5.5 and payload["results"][0]["turn1"]["r1"] == 10.0
    assert "| w/o video |" in report.with_suffix(".md").read_text()


def test_errors_are_messages(app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["data", "from-catalog", "--out", str(tmp_path / "f")])
    assert r.exit_code == 2 and "musechat catalog refresh" in r.output
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "no manifest.json" in r.output


def test_train_and_eval_the_two_tower_retriever(app: typer.Typer, tmp_path: Path) -> None:
    """`train --variant two_tower` on a tiny cache with video writes a retriever checkpoint; `eval` gives its turn-1 row."""
    spec = FeatureSpec(profile="tiny", video_dim=12, text_dim=8, music_dim=10, target_music_dim=10, max_segments=3, max_candidate_segments=3, max_text_tokens=4)
    feats = tmp_path / "feats"
    write_synthetic_features(feats, 40, spec, seed=0, n_text_tokens=2)
    runner = CliRunner()
    run = tmp_path / "retriever"
    fusion = json.dumps({"d_model": 16, "n_heads": 4, "n_layers": 1})
    r = runner.invoke(app, ["train", "--data", str(feats), "--out", str(run), "--variant", "two_tower", "--max-steps", "4",
                            "--batch-size", "8", "--holdout", "10", "--device", "cpu", "--fusion", fusion])
    assert r.exit_code == 0, r.output
    assert "trained 4 steps" in r.output and "modality dropout n/a (two-tower retriever, video only)" in r.output
    assert f"use it: musechat data build FOLDER --out DIR --retriever {run / 'model'}" in r.output
    retriever = load_retriever(run / "model", expect_profile="tiny", expect_dims=(12, 10))
    assert (retriever.config.d_model, retriever.config.n_layers, retriever.config.max_segments) == (16, 1, 3)
    with pytest.raises(Exception, match="not a fusion recommender"):
        load_checkpoint(run / "model")  # MUSECHAT_FUSION_CHECKPOINT cannot point at it

    report = tmp_path / "eval" / "table"
    r = runner.invoke(app, ["eval", "--data", str(feats), "--checkpoint", f"MVPt-style={run / 'model'}", "--holdout", "10", "--report", str(report)])
    assert r.exit_code == 0, r.output
    row = json.loads(report.with_suffix(".json").read_text())["results"][0]
    assert row["name"] == "MVPt-style" and row["modality_dropout"] is None and row["n_pools"] == 1
    assert row["turn1"]["n_queries"] == row["turn2"]["n_queries"] == 10
    assert row["turn2"]["r1"] == row["turn1"]["r1"] == row["turn2"]["success_rate"]  # video only: turn 2 is turn 1
    assert "| MVPt-style |" in report.with_suffix(".md").read_text()


def test_two_tower_errors_are_messages(app: typer.Typer, tmp_path: Path) -> None:
    _fill_catalog(12)
    runner = CliRunner()
    feats = tmp_path / "feats"
    assert runner.invoke(app, ["data", "from-catalog", "--out", str(feats)]).exit_code == 0
    r = runner.invoke(app, ["train", "--data", str(feats), "--out", str(tmp_path / "run"), "--variant", "two_tower", "--batch-size", "4"])
    assert r.exit_code == 2 and "12 of the 12 quartets have no video" in r.output
    r = runner.invoke(app, ["train", "--data", str(feats), "--out", str(tmp_path / "run"), "--variant", "two_tower", "--batch-size", "4", "--no-text"])
    assert r.exit_code == 2 and "the two-tower retriever has no ['use_text']" in r.output

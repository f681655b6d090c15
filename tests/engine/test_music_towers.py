"""Tests for engine/music_towers.py: the two trained AST towers around MVT-Fusion (paper 4.1)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from engine.encoders import hf
from engine.fusion import FusionConfig, MuseChatRecommender
from engine.music_towers import AstTower, TowerRecommender

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

"""Tests for engine/retriever.py: the two-tower video -> music retriever of `data build` (MVPt style)."""

from __future__ import annotations

import pytest
import torch

from engine.retriever import RetrieverConfig, TemporalTower, TwoTowerRetriever

B, S, DV, DM, D = 4, 5, 12, 10, 16


def small(**kw: object) -> RetrieverConfig:
    base = dict(profile="tiny", video_dim=DV, music_dim=DM, d_model=D, n_heads=4, n_layers=1, max_segments=6, dropout=0.0)
    base.update(kw)
    return RetrieverConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def model() -> TwoTowerRetriever:
    torch.manual_seed(0)
    return TwoTowerRetriever(small()).eval()


@pytest.fixture
def clips() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    return {
        "video": torch.randn(B, S, DV, generator=g),
        "video_mask": mask,
        "target": torch.randn(B, S, DM, generator=g),
        "target_mask": mask,
    }


def test_shapes_norms_and_loss(model: TwoTowerRetriever, clips: dict[str, torch.Tensor]) -> None:
    v = model.encode_video(clips["video"], clips["video_mask"])
    m = model.encode_music(clips["target"], clips["target_mask"])
    assert v.shape == (B, D) and m.shape == (B, D)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(m.norm(dim=-1), torch.ones(B))
    assert model.score(v, m).shape == (B, B)
    torch.testing.assert_close(model.score(v, m), v @ m.T)
    out = model(**clips)
    assert out["loss"].ndim == 0 and out["loss"].item() > 0
    torch.testing.assert_close(out["query"], v)
    torch.testing.assert_close(out["music"], m)
    assert model.loss.symmetric and model.loss.temperature == pytest.approx(0.1)  # paper 4.1's initial temperature
    # a whole clip without a mask is every segment present
    torch.testing.assert_close(model.encode_video(clips["video"]), model.encode_video(clips["video"], torch.ones(B, S, dtype=torch.bool)))


def test_padded_segments_are_ignored(model: TwoTowerRetriever, clips: dict[str, torch.Tensor]) -> None:
    before = model.encode_video(clips["video"], clips["video_mask"])
    noisy = clips["video"].clone()
    noisy[~clips["video_mask"]] = 1e3  # anything at padded positions
    torch.testing.assert_close(model.encode_video(noisy, clips["video_mask"]), before)
    # a clip alone gives the same vector as in a padded batch
    alone = model.encode_video(clips["video"][1:2, :3])
    torch.testing.assert_close(alone, before[1:2], rtol=1e-5, atol=1e-6)


def test_segment_order_matters(model: TwoTowerRetriever, clips: dict[str, torch.Tensor]) -> None:
    """Temporal modelling: position embeddings make the tower more than a bag of segments."""
    x = clips["video"][:1]
    assert not torch.allclose(model.encode_video(x), model.encode_video(x.flip(1)), atol=1e-4)


def test_towers_are_separate(model: TwoTowerRetriever) -> None:
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"video", "music", "loss"}
    assert model.video.proj.linear.in_features == DV and model.music.proj.linear.in_features == DM
    every = sum(p.numel() for p in model.parameters())
    assert every == sum(p.numel() for p in model.video.parameters()) + sum(p.numel() for p in model.music.parameters()) + 1


def test_bad_inputs_are_named() -> None:
    tower = TemporalTower(DV, small())
    with pytest.raises(ValueError, match=r"\(B, S, D\)"):
        tower(torch.randn(2, DV))
    with pytest.raises(ValueError, match="exceed"):
        tower(torch.randn(1, 7, DV))
    with pytest.raises(ValueError, match="at least one segment"):
        tower(torch.randn(2, 3, DV), torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="does not fit"):
        tower(torch.randn(2, 3, DV), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        small(d_model=18, n_heads=4)
    with pytest.raises(ValueError, match="video_dim"):
        small(video_dim=0)


def _planted(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Clips whose video and soundtrack share a latent per clip (and per segment): a relation to learn."""
    g = torch.Generator().manual_seed(seed)
    wv, wm = torch.randn(8, DV, generator=g), torch.randn(8, DM, generator=g)
    z = torch.randn(n, 1, 8, generator=g) + 0.3 * torch.randn(n, S, 8, generator=g)
    return {
        "video": z @ wv + 0.3 * torch.randn(n, S, DV, generator=g),
        "target": z @ wm + 0.3 * torch.randn(n, S, DM, generator=g),
    }


def test_training_lowers_the_loss_and_retrieves() -> None:
    """Seeded: 60 AdamW steps on planted clips lower the symmetric InfoNCE and lift held-out R@1 far above chance."""
    torch.manual_seed(0)
    model = TwoTowerRetriever(small())
    clips = _planted(96, seed=1)  # one set of maps: 64 clips to train on, 32 held out
    train, test = {k: v[32:] for k, v in clips.items()}, {k: v[:32] for k, v in clips.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.no_grad():
        first = model(**train)["loss"].item()
    for _ in range(60):
        loss = model(**train)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = model(**train)["loss"].item()
        scores = model.score(model.encode_video(test["video"]), model.encode_music(test["target"]))  # (32, 32)
    assert last < 0.5 * first, (first, last)
    r1 = (scores.argmax(dim=1) == torch.arange(32)).float().mean().item()
    assert r1 >= 10 / 32, r1  # chance is 1/32

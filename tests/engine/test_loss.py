"""Tests for engine/loss.py: InfoNCE (paper eq. 3) with a trainable temperature."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.fusion import FusionConfig, MuseChatRecommender
from engine.loss import InfoNCELoss


def hand_infonce(query: torch.Tensor, music: torch.Tensor, tau: float) -> float:
    """-1/B sum_i log softmax_j(<q_i, m_j> / tau)[i], with an explicit loop and log-sum-exp."""
    def unit(rows: list[list[float]]) -> list[list[float]]:
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in rows]

    q, m = unit(query.tolist()), unit(music.tolist())
    total = 0.0
    for i, qi in enumerate(q):
        logits = [sum(a * b for a, b in zip(qi, mj)) / tau for mj in m]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(z - top) for z in logits))
        total += log_z - logits[i]  # -log softmax at the positive
    return total / len(q)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 16, generator=g, dtype=torch.float64)
    m = q + 0.8 * torch.randn(6, 16, generator=g, dtype=torch.float64)
    return q, m


def test_starts_at_paper_temperature() -> None:
    loss = InfoNCELoss()
    assert loss.temperature == pytest.approx(0.1)
    assert loss.logit_scale.item() == pytest.approx(math.log(10.0))
    assert loss.logit_scale.requires_grad


def test_equals_hand_written_infonce(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, m = pair
    loss = InfoNCELoss().double()
    tau = loss.temperature  # 0.1 up to the float32 rounding of log(10)
    assert tau == pytest.approx(0.1)
    assert loss(q, m).item() == pytest.approx(hand_infonce(q, m, tau), abs=1e-9)
    # another temperature
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1 / 0.37))
    assert loss(q, m).item() == pytest.approx(hand_infonce(q, m, 0.37), abs=1e-9)


def test_extra_negatives(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, m = pair
    extra = torch.randn(4, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    loss = InfoNCELoss().double()
    mm = torch.cat([m, extra])
    assert loss(q, mm).item() == pytest.approx(hand_infonce(q, mm, loss.temperature), abs=1e-9)
    assert loss(q, mm).item() > loss(q, m).item()  # more negatives, same positives: larger loss


def test_symmetric_option(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, m = pair
    one_way = InfoNCELoss().double()
    both = InfoNCELoss(symmetric=True).double()
    tau = one_way.temperature
    assert one_way(q, m).item() == pytest.approx(hand_infonce(q, m, tau), abs=1e-9)
    want = 0.5 * (hand_infonce(q, m, tau) + hand_infonce(m, q, tau))
    assert both(q, m).item() == pytest.approx(want, abs=1e-9)
    with pytest.raises(ValueError, match="symmetric"):
        InfoNCELoss(symmetric=True)(q.float(), torch.cat([m, m]).float())


def test_one_way_is_the_query_to_music_direction_even_when_symmetric(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The gathered-negatives form of the symmetric loss (DDP) is built from two one-way calls."""
    q, m = pair
    both = InfoNCELoss(symmetric=True).double()
    tau = both.temperature
    extra = torch.randn(3, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert both.one_way(q, torch.cat([m, extra])).item() == pytest.approx(hand_infonce(q, torch.cat([m, extra]), tau), abs=1e-9)
    assert 0.5 * (both.one_way(q, m) + both.one_way(m, q)).item() == pytest.approx(both(q, m).item(), abs=1e-12)


def test_temperature_receives_exact_gradient(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, m = pair
    loss = InfoNCELoss().double()
    loss(q, m).backward()
    grad = loss.logit_scale.grad
    assert grad is not None and grad.abs().item() > 0
    # logits = s * cos with s = exp(logit_scale): dL/dlogit_scale = s * mean_i(sum_j p_ij cos_ij - cos_ii)
    cos = F.normalize(q, dim=-1) @ F.normalize(m, dim=-1).T
    s = loss.scale().item()  # 10, up to the float32 rounding of log(10)
    assert s == pytest.approx(10.0)
    p = torch.softmax(s * cos, dim=-1)
    want = s * ((p * cos).sum(-1) - cos.diag()).mean()
    assert grad.item() == pytest.approx(want.item(), rel=1e-9)


def test_temperature_clamped_at_minimum(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, m = pair
    loss = InfoNCELoss().double()
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1 / 0.001))  # tau 0.001 asked, 0.01 used
    assert loss.temperature == pytest.approx(0.01)
    assert loss(q, m).item() == pytest.approx(hand_infonce(q, m, 0.01), abs=1e-9)
    loss(q, m).backward()
    assert loss.logit_scale.grad.item() == 0.0  # past the clamp: no gradient (CLIP behaviour)
    with pytest.raises(ValueError):
        InfoNCELoss(init_temperature=0.005)


def test_shape_errors() -> None:
    loss = InfoNCELoss()
    with pytest.raises(ValueError, match="expected query"):
        loss(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="at least one music row"):
        loss(torch.randn(4, 8), torch.randn(3, 8))


def test_training_steps_lower_the_loss() -> None:
    """A tiny synthetic matching task: the target music is a fixed linear map of the video.

    d_model 64, 4 heads, 1 layer here (smaller than the paper's 256/16/4) to keep the test fast.
    """
    torch.manual_seed(0)
    n, dv, dt, dm, dtm = 24, 32, 32, 32, 24
    video = torch.randn(n, dv)
    target = video @ torch.randn(dv, dtm) + 0.1 * torch.randn(n, dtm)
    text, cand = torch.randn(n, 4, dt), torch.randn(n, 3, dm)
    cfg = FusionConfig("tiny", dv, dt, dm, dtm, d_model=64, n_heads=4, n_layers=1, dropout=0.0,
                       p_drop_video=0.0, p_drop_text=0.0, p_drop_candidate=0.0)
    model = MuseChatRecommender(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)

    def step() -> torch.Tensor:
        return model(video, text, cand, target_pooled=target)["loss"]

    with torch.no_grad():
        before = step().item()
    scale_before = model.loss.logit_scale.item()
    for _ in range(30):
        opt.zero_grad()
        step().backward()
        opt.step()
    with torch.no_grad():
        after = step().item()
        q = model.encode_query(video, text, cand)
        mv = model.encode_music(pooled=target)
    assert before > 2.0  # near log(24) = 3.18 at random init
    assert after < 0.5 * before, (before, after)
    assert model.loss.logit_scale.item() != scale_before  # the temperature is trained
    top1 = (q @ mv.T).argmax(dim=1)
    assert (top1 == torch.arange(n)).float().mean() > 0.8

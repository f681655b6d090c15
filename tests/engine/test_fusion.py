"""Tests for engine/fusion.py: MVT-Fusion, its baselines, the music tower and the ranking helpers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from engine.fusion import (
    APP_MODALITY_DROPOUT,
    VARIANTS,
    Branch,
    CrossAttention,
    FusionConfig,
    MusicTower,
    MuseChatRecommender,
    Projection,
    QueryFusion,
    masked_mean,
    modality_dropout_label,
    rank,
    track_vector,
)

# `tiny` profile feature sizes; d_model 256 and 16 heads as the paper
DV, DT, DM, DTM = 32, 32, 32, 24
B, T, P, FRAMES = 3, 6, 5, 4
ATOL = 1e-6


def tiny_config(**overrides: object) -> FusionConfig:
    base = FusionConfig(profile="tiny", video_dim=DV, text_dim=DT, music_dim=DM, target_music_dim=DTM, dropout=0.0)
    return dataclasses.replace(base, **overrides)


def make_model(seed: int = 0, **overrides: object) -> QueryFusion:
    torch.manual_seed(seed)
    return QueryFusion(tiny_config(**overrides)).eval()


@pytest.fixture
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    text_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    cand_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    return {
        "video": torch.randn(B, DV, generator=g),
        "text": torch.randn(B, T, DT, generator=g),
        "text_mask": text_mask,
        "candidate": torch.randn(B, P, DM, generator=g),
        "candidate_mask": cand_mask,
    }


def hand_mvt(m: QueryFusion, video: torch.Tensor, x_t: torch.Tensor, m_t: torch.Tensor, x_m: torch.Tensor, m_m: torch.Tensor) -> torch.Tensor:
    """x_f = x_v + Att(t_cls, x_mc, x_mc) + Att(mc_cls, x_t, x_t), from projected (or absent) inputs."""
    s_t, sm_t = m.text_branch(x_t, m_t)
    s_m, sm_m = m.music_branch(x_m, m_m)
    t_cls, mc_cls = s_t[:, 0], s_m[:, 0]
    return video + m.cross_attn(t_cls, s_m, sm_m) + m.cross_attn(mc_cls, s_t, sm_t)


# ---------------------------------------------------------------------------------------------
# shapes of every module


def test_block_shapes() -> None:
    torch.manual_seed(0)
    x = torch.randn(B, T, DT)
    mask = torch.ones(B, T, dtype=torch.bool)
    assert Projection(DT, 256)(x).shape == (B, T, 256)
    branch = Branch(256, 16, 4, 4, 0.0)
    seq, seq_mask = branch(torch.randn(B, T, 256), mask)
    assert seq.shape == (B, 1 + T, 256) and seq_mask.shape == (B, 1 + T)
    assert seq_mask[:, 0].all()
    assert branch.summary(seq, seq_mask).shape == (B, 256)
    assert CrossAttention(256, 16, 0.0)(torch.randn(B, 256), seq, seq_mask).shape == (B, 256)
    assert masked_mean(x, mask).shape == (B, DT)


@pytest.mark.parametrize("variant", VARIANTS)
def test_query_shapes_and_norm(variant: str, inputs: dict[str, torch.Tensor]) -> None:
    m = make_model(variant=variant)
    x_f = m.fuse(**inputs)
    q = m(**inputs)
    assert x_f.shape == (B, 256) and q.shape == (B, 256)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(q, F.normalize(x_f, dim=-1))


def test_music_tower_shapes_and_pooling() -> None:
    torch.manual_seed(0)
    tower = MusicTower(DTM, 256)
    tokens = torch.randn(B, P, DTM)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out = tower(tokens, mask)
    assert out.shape == (B, 256)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(B))
    # tokens are mean-pooled over the real ones: same as giving that mean as the pooled vector
    pooled = torch.stack([tokens[0, :2].mean(0), tokens[1].mean(0), tokens[2, 0]])
    torch.testing.assert_close(out, tower(pooled=pooled), atol=ATOL, rtol=0)
    # pooled -> linear -> L2 norm
    torch.testing.assert_close(tower(pooled=pooled), F.normalize(tower.proj(pooled), dim=-1))
    with pytest.raises(ValueError):
        tower()


def test_recommender_encoders_and_forward(inputs: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    model = MuseChatRecommender(tiny_config()).eval()
    q = model.encode_query(**inputs)
    m = model.encode_music(pooled=torch.randn(B, DTM))
    assert q.shape == (B, 256) and m.shape == (B, 256)
    out = model(**inputs, target_pooled=torch.randn(B, DTM))
    assert out["loss"].ndim == 0 and out["query"].shape == (B, 256) and out["music"].shape == (B, 256)
    torch.testing.assert_close(out["loss"], model.loss(out["query"], out["music"]))
    assert model.loss.temperature == pytest.approx(0.1)


def test_track_vector_and_rank() -> None:
    g = torch.Generator().manual_seed(3)
    segs = F.normalize(torch.randn(12, 256, generator=g), dim=-1)  # twelve 10 s segments
    tv = track_vector(segs)
    assert tv.shape == (256,)
    torch.testing.assert_close(tv, segs.mean(0) / segs.mean(0).norm())
    tracks = F.normalize(torch.randn(10, 256, generator=g), dim=-1)
    query = torch.stack([tracks[7] + 0.01 * torch.randn(256, generator=g), -tracks[2]])
    scores, idx = rank(query, tracks)
    assert scores.shape == (2, 10) and idx.shape == (2, 10)
    cos = F.normalize(query, dim=-1) @ tracks.T
    assert idx[0, 0] == 7 and idx[1, -1] == 2
    assert torch.equal(idx, cos.argsort(dim=-1, descending=True))
    torch.testing.assert_close(scores, cos.sort(dim=-1, descending=True).values)
    s3, i3 = rank(query, tracks, k=3)
    assert s3.shape == (2, 3) and torch.equal(i3, idx[:, :3])


# ---------------------------------------------------------------------------------------------
# the paper's fusion formula and the baselines, by hand from the submodules


def test_mvt_formula_by_hand(inputs: dict[str, torch.Tensor]) -> None:
    m = make_model()
    x_v = m.video_proj(inputs["video"])
    x_t = m.text_proj(inputs["text"])
    x_m = m.music_proj(inputs["candidate"])
    expected = hand_mvt(m, x_v, x_t, inputs["text_mask"], x_m, inputs["candidate_mask"])
    torch.testing.assert_close(m.fuse(**inputs), expected, atol=ATOL, rtol=0)


def test_mvt_formula_by_hand_per_sample(inputs: dict[str, torch.Tensor]) -> None:
    """Each sample alone, its padding cut off, gives the same x_f as in the padded batch."""
    m = make_model()
    batch = m.fuse(**inputs)
    for i in range(B):
        nt, nm = int(inputs["text_mask"][i].sum()), int(inputs["candidate_mask"][i].sum())
        x_v = m.video_proj(inputs["video"][i : i + 1])
        x_t = m.text_proj(inputs["text"][i : i + 1, :nt])
        x_m = m.music_proj(inputs["candidate"][i : i + 1, :nm])
        ones_t, ones_m = torch.ones(1, nt, dtype=torch.bool), torch.ones(1, nm, dtype=torch.bool)
        alone = hand_mvt(m, x_v, x_t, ones_t, x_m, ones_m)
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=0)


def test_baseline_formulas_by_hand(inputs: dict[str, torch.Tensor]) -> None:
    x = inputs
    # Sum-Fusion: x_v + mean(text) + mean(music), no attention
    m = make_model(variant="sum")
    want = m.video_proj(x["video"]) + masked_mean(m.text_proj(x["text"]), x["text_mask"]) + masked_mean(
        m.music_proj(x["candidate"]), x["candidate_mask"]
    )
    torch.testing.assert_close(m.fuse(**x), want, atol=ATOL, rtol=0)
    # Self-Attn: x_v + t_cls + mc_cls
    m = make_model(variant="self_attn")
    s_t, _ = m.text_branch(m.text_proj(x["text"]), x["text_mask"])
    s_m, _ = m.music_branch(m.music_proj(x["candidate"]), x["candidate_mask"])
    want = m.video_proj(x["video"]) + s_t[:, 0] + s_m[:, 0]
    torch.testing.assert_close(m.fuse(**x), want, atol=ATOL, rtol=0)
    # Cross-Attn: no encoder layers; queries are masked means of [CLS; tokens]
    m = make_model(variant="cross_attn")
    assert m.text_branch.encoder is None and m.music_branch.encoder is None
    x_t = torch.cat([m.text_branch.cls.expand(B, 1, -1), m.text_proj(x["text"])], 1)
    x_m = torch.cat([m.music_branch.cls.expand(B, 1, -1), m.music_proj(x["candidate"])], 1)
    mt = torch.cat([torch.ones(B, 1, dtype=torch.bool), x["text_mask"]], 1)
    mm = torch.cat([torch.ones(B, 1, dtype=torch.bool), x["candidate_mask"]], 1)
    want = (
        m.video_proj(x["video"])
        + m.cross_attn(masked_mean(x_t, mt), x_m, mm)
        + m.cross_attn(masked_mean(x_m, mm), x_t, mt)
    )
    torch.testing.assert_close(m.fuse(**x), want, atol=ATOL, rtol=0)


def test_variants_differ(inputs: dict[str, torch.Tensor]) -> None:
    outs = {v: make_model(seed=0, variant=v)(**inputs) for v in VARIANTS}
    for i, a in enumerate(VARIANTS):
        for b in VARIANTS[i + 1 :]:
            assert (outs[a] - outs[b]).abs().max() > 1e-3, (a, b)
    names = {v: {n for n, _ in make_model(variant=v).named_parameters()} for v in VARIANTS}
    assert not any(n.startswith(("text_branch", "music_branch", "cross_attn")) for n in names["sum"])
    assert not any(n.startswith("cross_attn") for n in names["self_attn"])
    assert not any("encoder" in n for n in names["cross_attn"]) and any(n.startswith("cross_attn") for n in names["cross_attn"])
    assert names["mvt"] == names["self_attn"] | names["cross_attn"]
    n_layers = {n.split(".")[3] for n in names["mvt"] if n.startswith("text_branch.encoder.layers.")}
    assert n_layers == {"0", "1", "2", "3"}  # paper 4.1: four self-attention layers per branch
    assert make_model().cross_attn.attn.num_heads == 16  # paper 4.1: 16 heads


def test_invalid_config() -> None:
    with pytest.raises(ValueError, match="variant"):
        tiny_config(variant="concat")
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(n_heads=7)
    with pytest.raises(ValueError, match="at least one input"):
        make_model().fuse()


# ---------------------------------------------------------------------------------------------
# masks and absent inputs


def test_key_padding_masks_respected(inputs: dict[str, torch.Tensor]) -> None:
    for variant in VARIANTS:
        m = make_model(variant=variant)
        base = m(**inputs)
        garbled = dict(inputs)
        garbled["text"] = torch.where(inputs["text_mask"][..., None], inputs["text"], 1e3 * torch.randn(B, T, DT))
        garbled["candidate"] = torch.where(
            inputs["candidate_mask"][..., None], inputs["candidate"], -1e3 * torch.randn(B, P, DM)
        )
        torch.testing.assert_close(m(**garbled), base, atol=1e-5, rtol=0, msg=variant)


def test_video_frames_are_mean_pooled_with_mask() -> None:
    m = make_model()
    frames = torch.randn(B, FRAMES, DV)
    fmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    pooled = torch.stack([frames[0].mean(0), frames[1, :2].mean(0), frames[2, 0]])
    torch.testing.assert_close(m(video=frames, video_mask=fmask), m(video=pooled), atol=ATOL, rtol=0)


COMBINATIONS = {
    "video only": ("video",),
    "video+text": ("video", "text"),
    "video+text+candidate": ("video", "text", "candidate"),
    "text only": ("text",),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("combo", list(COMBINATIONS), ids=list(COMBINATIONS))
def test_absent_inputs_use_learned_embeddings(combo: str, variant: str, inputs: dict[str, torch.Tensor]) -> None:
    given = COMBINATIONS[combo]
    m = make_model(variant=variant)
    kwargs = {k: v for k, v in inputs.items() if k.split("_")[0] in given}
    q = m(**kwargs)
    assert q.shape == (B, 256) and torch.isfinite(q).all()
    # by hand: a missing input is its learned absent embedding (one absent token for a branch)
    one = torch.ones(B, 1, dtype=torch.bool)
    x_v = m.video_proj(inputs["video"]) if "video" in given else m.absent_video.expand(B, -1)
    if "text" in given:
        x_t, m_t = m.text_proj(inputs["text"]), inputs["text_mask"]
    else:
        x_t, m_t = m.absent_text.expand(B, 1, -1), one
    if "candidate" in given:
        x_m, m_m = m.music_proj(inputs["candidate"]), inputs["candidate_mask"]
    else:
        x_m, m_m = m.absent_music.expand(B, 1, -1), one
    if variant == "mvt":
        want = hand_mvt(m, x_v, x_t, m_t, x_m, m_m)
    elif variant == "sum":
        want = x_v + masked_mean(x_t, m_t) + masked_mean(x_m, m_m)
    else:
        s_t, sm_t = m.text_branch(x_t, m_t)
        s_m, sm_m = m.music_branch(x_m, m_m)
        t_cls, mc_cls = m.text_branch.summary(s_t, sm_t), m.music_branch.summary(s_m, sm_m)
        if variant == "self_attn":
            want = x_v + t_cls + mc_cls
        else:
            want = x_v + m.cross_attn(t_cls, s_m, sm_m) + m.cross_attn(mc_cls, s_t, sm_t)
    torch.testing.assert_close(m.fuse(**kwargs), want, atol=ATOL, rtol=0)


def test_per_sample_absent_flags_match_missing_inputs(inputs: dict[str, torch.Tensor]) -> None:
    """Sample 0: no candidate; sample 1: no text; sample 2: no video -> each equals its own fully-missing case."""
    m = make_model()
    q = m(
        **inputs,
        has_video=torch.tensor([True, True, False]),
        has_text=torch.tensor([True, False, True]),
        has_candidate=torch.tensor([False, True, True]),
    )
    no_cand = m(video=inputs["video"], text=inputs["text"], text_mask=inputs["text_mask"])
    no_text = m(video=inputs["video"], candidate=inputs["candidate"], candidate_mask=inputs["candidate_mask"])
    no_video = m(**{k: v for k, v in inputs.items() if k != "video"})
    torch.testing.assert_close(q[0], no_cand[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(q[1], no_text[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(q[2], no_video[2], atol=1e-5, rtol=0)
    # the absent sample's own features do not matter
    changed = dict(inputs, video=inputs["video"] + torch.randn(B, DV))
    q2 = m(**changed, has_video=torch.tensor([True, True, False]), has_text=torch.tensor([True, False, True]),
           has_candidate=torch.tensor([False, True, True]))
    torch.testing.assert_close(q2[2], q[2], atol=ATOL, rtol=0)
    assert (q2[0] - q[0]).abs().max() > 1e-4


def test_empty_text_mask_counts_as_absent(inputs: dict[str, torch.Tensor]) -> None:
    m = make_model()
    mask = inputs["text_mask"].clone()
    mask[1] = False
    q = m(**dict(inputs, text_mask=mask))
    want = m(**inputs, has_text=torch.tensor([True, False, True]))
    torch.testing.assert_close(q, want, atol=ATOL, rtol=0)


def test_without_video_ignores_the_video(inputs: dict[str, torch.Tensor]) -> None:
    no_video = make_model(use_video=False)
    assert no_video.video_proj is None
    a = no_video(**inputs)
    b = no_video(**dict(inputs, video=torch.randn(B, DV)))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, no_video(**{k: v for k, v in inputs.items() if k != "video"}), atol=ATOL, rtol=0)
    # the cross-attention stays: x_f = absent_video + Att(t_cls, x_mc) + Att(mc_cls, x_t)
    m = no_video
    want = hand_mvt(m, m.absent_video.expand(B, -1), m.text_proj(inputs["text"]), inputs["text_mask"],
                    m.music_proj(inputs["candidate"]), inputs["candidate_mask"])
    torch.testing.assert_close(m.fuse(**inputs), want, atol=ATOL, rtol=0)


# paper 5.3 (Table 2): removing an input removes its cross-attention, the cls token is summed
ABLATIONS = {
    "without candidate": ({"use_candidate": False}, "text"),
    "without text": ({"use_text": False}, "music"),
}


@pytest.mark.parametrize("ablation", list(ABLATIONS), ids=list(ABLATIONS))
def test_table2_ablation_modules(ablation: str, inputs: dict[str, torch.Tensor]) -> None:
    overrides, kept = ABLATIONS[ablation]
    removed = "music" if kept == "text" else "text"
    m = make_model(**overrides)
    names = {n for n, _ in m.named_parameters()}
    # the removed input's projection, absent embedding and branch, and the cross-attention, are gone
    assert m.cross_attn is None and not any(n.startswith("cross_attn") for n in names)
    assert getattr(m, f"{removed}_proj") is None and getattr(m, f"{removed}_branch") is None
    assert getattr(m, f"absent_{removed}") is None
    assert not any(n.startswith((f"{removed}_proj", f"{removed}_branch", f"absent_{removed}")) for n in names)
    # what stays: the kept branch with its four self-attention layers (paper 4.1)
    branch = getattr(m, f"{kept}_branch")
    assert len(branch.encoder.layers) == 4
    full = {n for n, _ in make_model().named_parameters()}
    assert names == {n for n in full if not n.startswith(("cross_attn", f"{removed}_proj", f"{removed}_branch", f"absent_{removed}"))}
    # shapes and the formula: x_f = x_v + kept_cls
    x_f = m.fuse(**inputs)
    assert x_f.shape == (B, 256) and m(**inputs).shape == (B, 256)
    key = "text" if kept == "text" else "candidate"
    seq, _ = branch(getattr(m, f"{kept}_proj")(inputs[key]), inputs[f"{key}_mask"])
    assert seq.shape[:2] == (B, 1 + inputs[key].shape[1])
    torch.testing.assert_close(x_f, m.video_proj(inputs["video"]) + seq[:, 0], atol=ATOL, rtol=0)
    # the removed input changes nothing
    other = "candidate" if kept == "text" else "text"
    garbled = dict(inputs, **{other: 5 * torch.randn_like(inputs[other])})
    torch.testing.assert_close(m(**garbled), m(**inputs), atol=0, rtol=0)
    without = {k: v for k, v in inputs.items() if not k.startswith(other)}
    torch.testing.assert_close(m(**without), m(**inputs), atol=ATOL, rtol=0)
    # every parameter left trains (DDP needs no unused-parameter search)
    torch.manual_seed(0)
    model = MuseChatRecommender(tiny_config(**overrides))
    model(**inputs, target_pooled=torch.randn(B, DTM))["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_video_only_model_and_no_input_refused(inputs: dict[str, torch.Tensor]) -> None:
    m = make_model(use_text=False, use_candidate=False)
    assert m.text_branch is None and m.music_branch is None and m.cross_attn is None
    torch.testing.assert_close(m.fuse(**inputs), m.video_proj(inputs["video"]), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="at least one of video, text and candidate"):
        tiny_config(use_video=False, use_text=False, use_candidate=False)


def test_modality_dropout_is_off_by_default(inputs: dict[str, torch.Tensor]) -> None:
    c = FusionConfig(profile="tiny", video_dim=DV, text_dim=DT, music_dim=DM, target_music_dim=DTM)
    assert (c.p_drop_video, c.p_drop_text, c.p_drop_candidate) == (0.0, 0.0, 0.0)
    assert c.modality_dropout is False and modality_dropout_label(c) == "off (paper)"
    m = make_model()
    with torch.no_grad():
        want = m(**inputs)
        m.train()  # dropout 0.0 in make_model: training mode changes nothing without modality dropout
        for _ in range(5):
            torch.testing.assert_close(m(**inputs), want, atol=ATOL, rtol=0)
    app = dataclasses.replace(c, **APP_MODALITY_DROPOUT)
    assert app.modality_dropout and modality_dropout_label(app) == "on (video 0.1, text 0.3, candidate 0.5)"


def test_modality_dropout_in_training_only(inputs: dict[str, torch.Tensor]) -> None:
    m = make_model(p_drop_video=0.0, p_drop_text=1.0, p_drop_candidate=0.0)
    with torch.no_grad():
        want = m(**inputs, has_text=torch.zeros(B, dtype=torch.bool))  # eval: no dropout
        assert (m(**inputs) - want).abs().max() > 1e-4
        m.train()
        torch.testing.assert_close(m(**inputs), want, atol=ATOL, rtol=0)
    # dropping everything would leave nothing: the sample keeps its original inputs
    m = make_model(p_drop_video=1.0, p_drop_text=1.0, p_drop_candidate=1.0)
    with torch.no_grad():
        want = m(**inputs)
        m.train()
        torch.testing.assert_close(m(**inputs), want, atol=ATOL, rtol=0)


def test_modality_dropout_rates() -> None:
    m = make_model(p_drop_video=0.1, p_drop_text=0.3, p_drop_candidate=0.5).train()
    n = 20000
    torch.manual_seed(5)
    ones = torch.ones(n, dtype=torch.bool)
    pv, pt, pm = m.presence(
        n, torch.device("cpu"), video=torch.zeros(n, 1), text=torch.zeros(n, 1, 1), text_mask=None,
        candidate=torch.zeros(n, 1, 1), candidate_mask=None, has_video=ones, has_text=ones, has_candidate=ones,
    )
    # P(kept) = 1 - p, plus the restore when all three drop (prob 0.1 * 0.3 * 0.5 = 0.015)
    assert abs(pv.float().mean().item() - (0.9 + 0.015)) < 0.01
    assert abs(pt.float().mean().item() - (0.7 + 0.015)) < 0.01
    assert abs(pm.float().mean().item() - (0.5 + 0.015)) < 0.01
    assert (pv | pt | pm).all()
    # an input the sample lacks is never switched on
    off = torch.zeros(n, dtype=torch.bool)
    pv, pt, pm = m.presence(
        n, torch.device("cpu"), video=torch.zeros(n, 1), text=None, text_mask=None, candidate=None,
        candidate_mask=None, has_video=off, has_text=None, has_candidate=None,
    )
    assert not (pv | pt | pm).any()


def test_every_parameter_in_the_graph(inputs: dict[str, torch.Tensor]) -> None:
    """All inputs present: the absent embeddings still get a (zero) gradient, so DDP needs no unused-param search."""
    torch.manual_seed(0)
    model = MuseChatRecommender(tiny_config())
    out = model(**inputs, target_pooled=torch.randn(B, DTM))
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert torch.count_nonzero(model.query.absent_video.grad) == 0
    assert model.query.video_proj.linear.weight.grad.abs().sum() > 0


def test_integer_masks_and_mask_shape_check(inputs: dict[str, torch.Tensor]) -> None:
    m = make_model()
    as_int = dict(inputs, text_mask=inputs["text_mask"].long(), candidate_mask=inputs["candidate_mask"].int())
    torch.testing.assert_close(m(**as_int), m(**inputs), atol=0, rtol=0)
    with pytest.raises(ValueError, match="does not fit"):
        m(**dict(inputs, text_mask=inputs["text_mask"][:, :3]))

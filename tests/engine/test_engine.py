"""The Engine facade: zero-shot and fusion queries, re-ranking with steering and negatives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.checkpoint import CheckpointMismatchError, save_checkpoint
from engine.engine import (
    FUSION_VECTOR,
    MODE_FUSION,
    MODE_ZERO_SHOT,
    TEXT_VECTOR,
    CandidateRow,
    Engine,
    EngineConfig,
    TrackContext,
)
from engine.fusion import FusionConfig, MuseChatRecommender
from engine.profiles import load_encoders


@pytest.fixture(scope="module")
def tiny():
    return load_encoders("tiny")


@pytest.fixture(scope="module")
def zero_shot(tiny) -> Engine:
    return Engine(EngineConfig(profile="tiny"), encoders=tiny)


@pytest.fixture(scope="module")
def video(zero_shot, bikes_mp4):
    return zero_shot.video_features(bikes_mp4, fps=1.0)


def row(track_id: str, dim: int, *, drums: float = 0.1, seed: int = 0, tempo: float = 120.0) -> CandidateRow:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return CandidateRow(track_id, v / np.linalg.norm(v), {"mtt:drums": drums, "mtt:piano": 0.3}, (tempo, -15.0, 3.0))


def test_zero_shot_query_searches_the_text_space(zero_shot, video, tiny) -> None:
    q = zero_shot.query(video=video, text="calm piano")
    assert q.mode == MODE_ZERO_SHOT and q.vector_name == TEXT_VECTOR
    assert q.vector.shape == (tiny.text.dim,)
    assert np.linalg.norm(q.vector) == pytest.approx(1.0, abs=1e-5)


def test_a_query_needs_something(zero_shot) -> None:
    with pytest.raises(ValueError):
        zero_shot.query()


def test_more_drums_moves_from_the_previous_track(zero_shot, video, tiny) -> None:
    prev = TrackContext("prev", text=row("prev", tiny.text.dim).text, tag_probs={"mtt:drums": 0.2, "mtt:piano": 0.3}, rhythm=(120.0, -15.0, 3.0))
    rows = [row("few", tiny.text.dim, drums=0.05, seed=1), row("many", tiny.text.dim, drums=0.9, seed=2), row("same", tiny.text.dim, drums=0.2, seed=3)]
    q = zero_shot.query(video=video, text="more drums", candidate=prev)
    ranking = q.rerank(rows)
    assert rows[ranking.order[0]].track_id == "many"
    assert ranking.parts["steering"][1] > ranking.parts["steering"][0]
    q_less = zero_shot.query(video=video, text="less drums", candidate=prev)
    assert rows[q_less.rerank(rows).order[0]].track_id == "few"


def test_another_pushes_away_from_the_rejected_track(zero_shot, tiny) -> None:
    rows = [row(f"t{i}", tiny.text.dim, seed=i) for i in range(6)]
    rejected = TrackContext("t9", text=rows[2].text, tag_probs=dict(rows[2].tag_probs), rhythm=rows[2].rhythm)
    q = zero_shot.query(negatives=[rejected], candidate=rejected)
    ranking = q.rerank(rows)
    assert q.negative_ids == ("t9",) and q.positive_ids == () and q.vector is None
    assert int(ranking.order[-1]) == 2  # the twin of the rejected track comes last


def test_empty_candidates(zero_shot, video) -> None:
    ranking = zero_shot.query(video=video).rerank([])
    assert ranking.order.shape == (0,)


def fusion_config(tiny, profile: str = "tiny") -> FusionConfig:
    return FusionConfig(
        profile=profile, video_dim=tiny.image.dim, text_dim=tiny.text.dim, music_dim=tiny.music.dim,
        target_music_dim=tiny.music.dim, d_model=32, n_heads=4, n_layers=1,
    )


def test_fusion_mode_with_a_checkpoint(tiny, video, tmp_path) -> None:
    save_checkpoint(MuseChatRecommender(fusion_config(tiny)).eval(), tmp_path / "ckpt")
    eng = Engine(EngineConfig(profile="tiny", fusion_checkpoint=tmp_path / "ckpt"), encoders=tiny)
    assert eng.mode == MODE_FUSION
    prev = TrackContext("prev", segment_music=np.random.default_rng(0).normal(size=(3, tiny.music.dim)).astype(np.float32))
    q1 = eng.query(video=video)
    q2 = eng.query(video=video, text="more drums", candidate=prev)
    assert q1.mode == MODE_FUSION and q1.vector_name == FUSION_VECTOR and q1.vector.shape == (32,)
    assert not np.allclose(q1.vector, q2.vector)  # the candidate and the words change the query
    rows = [CandidateRow(f"t{i}", np.eye(tiny.text.dim, dtype=np.float32)[i], {"mtt:drums": 0.1 * i}, (120.0, -15.0, 3.0), search_score=0.5 - 0.1 * i) for i in range(4)]
    ranking = q2.rerank(rows)
    assert set(ranking.parts) == {"fusion", "steering"}
    assert list(eng.query(video=video).rerank(rows).order) == [0, 1, 2, 3]  # cosine alone


def test_fusion_checkpoint_of_another_profile_is_refused(tiny, video, tmp_path) -> None:
    save_checkpoint(MuseChatRecommender(fusion_config(tiny, profile="lite")).eval(), tmp_path / "ckpt")
    eng = Engine(EngineConfig(profile="tiny", fusion_checkpoint=tmp_path / "ckpt"), encoders=tiny)
    with pytest.raises(CheckpointMismatchError):
        eng.query(video=video)


@pytest.mark.parametrize("fusion", [False, True], ids=["zero-shot", "fusion"])
def test_a_ranker_ranks_as_the_query_it_stands_for(tiny, video, tmp_path, fusion: bool) -> None:
    config = EngineConfig(profile="tiny")
    if fusion:
        save_checkpoint(MuseChatRecommender(fusion_config(tiny)).eval(), tmp_path / "ckpt")
        config = EngineConfig(profile="tiny", fusion_checkpoint=tmp_path / "ckpt")
    eng = Engine(config, encoders=tiny)
    prev = TrackContext("prev", text=row("prev", tiny.text.dim).text, tag_probs={"mtt:drums": 0.2}, rhythm=(120.0, -15.0, 3.0))
    rejected = TrackContext("t9", text=row("t9", tiny.text.dim, seed=9).text, tag_probs={"mtt:piano": 0.8}, rhythm=(90.0, -20.0, 2.0))
    rows = [dataclasses.replace(row(f"t{i}", tiny.text.dim, drums=0.1 * i, seed=i), search_score=0.5 - 0.05 * i) for i in range(8)]
    inputs = {"video": video, "text": "more drums, less piano", "candidate": prev, "negatives": [rejected]}
    want = eng.query(**inputs).rerank(rows)
    ranker = eng.ranker(mode=eng.mode, **inputs)
    assert ranker.vector is None  # nothing to search with: its rerank only
    got = ranker.rerank(rows)
    assert got.mode == want.mode == (MODE_FUSION if fusion else MODE_ZERO_SHOT)
    np.testing.assert_array_equal(got.order, want.order)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.parts.keys() == want.parts.keys() and "not like rejected" in got.parts
    assert got.preference.describe() == want.preference.describe() != ""


# --- a checkpoint with trained AST towers (engine/music_towers.py) ------------------------------


def test_a_towers_checkpoint_reads_the_candidate_clip_with_g_mc(tiny, video, tiny_towers) -> None:
    import torch

    from engine.music_towers import TowerRecommender, fusion_id, load_tower_checkpoint

    eng = Engine(EngineConfig(profile="tiny", fusion_checkpoint=tiny_towers), encoders=tiny)
    assert eng.fusion_towers and eng.fusion_id == fusion_id(tiny_towers)  # known before anything is loaded
    model = eng.fusion
    assert isinstance(model, TowerRecommender) and not model.training
    assert not any(p.requires_grad for p in model.parameters())  # frozen in the app
    g = np.random.default_rng(5)
    mels = tiny.music.log_mels(g.standard_normal(16000 * 10).astype(np.float32) * 0.1)  # (64, 16) float16
    junk = g.normal(size=(3, tiny.music.dim)).astype(np.float32)
    prev = TrackContext("prev", clip_mels=mels, segment_music=junk)
    got = eng.query(video=video, text="more drums", candidate=prev)
    assert got.mode == MODE_FUSION and got.vector_name == FUSION_VECTOR and got.vector.shape == (256,)
    # by hand, on a model loaded apart: the mean video segment vector, the words' token states, g_mc on the clip
    fresh = load_tower_checkpoint(tiny_towers, expect_profile="tiny")
    with torch.no_grad():
        tok = tiny.text.encode_tokens(["more drums"])
        v = torch.as_tensor(video.segment_vectors, dtype=torch.float32).mean(0, keepdim=True)
        want = fresh.encode_query(v, tok.states, candidate_mels=torch.from_numpy(mels)[None], text_mask=tok.mask)[0].numpy()
    np.testing.assert_allclose(got.vector, want, rtol=1e-5, atol=1e-6)
    # the pooled segment features are never fed to g_mc's place: without a clip the turn has no candidate
    no_clip = eng.query(video=video, text="more drums", candidate=TrackContext("prev", segment_music=junk)).vector
    np.testing.assert_array_equal(no_clip, eng.query(video=video, text="more drums").vector)
    assert not np.allclose(no_clip, got.vector)


def test_a_towers_checkpoint_is_refused_for_the_lite_profile(tiny_towers, video) -> None:
    eng = Engine(EngineConfig(profile="lite", fusion_checkpoint=tiny_towers))  # lite has no AST towers: nothing to load
    with pytest.raises(CheckpointMismatchError, match="profile 'tiny'"):
        _ = eng.fusion


def test_a_checkpoint_without_towers_keeps_the_pooled_candidate(tiny, tmp_path) -> None:
    save_checkpoint(MuseChatRecommender(fusion_config(tiny)).eval(), tmp_path / "ckpt")
    eng = Engine(EngineConfig(profile="tiny", fusion_checkpoint=tmp_path / "ckpt"), encoders=tiny)
    assert not eng.fusion_towers and isinstance(eng.fusion, MuseChatRecommender) and len(eng.fusion_id) == 16

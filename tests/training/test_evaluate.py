"""Tests of training/evaluate.py: turn inputs, track vectors, pools, the Table 1 report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.checkpoint import CheckpointMismatchError, save_checkpoint
from engine.fusion import MuseChatRecommender, track_vector
from training.evaluate import evaluate_checkpoints, evaluate_model, markdown_table, music_vectors, query_vectors, write_report
from training.features import FeatureDataset, FeatureSpec, random_pools, write_synthetic_features
from training.metrics import average_metrics, target_ranks, turn_metrics
from training.train_fusion import fusion_config_for

SPEC = FeatureSpec(profile="tiny", video_dim=12, text_dim=8, music_dim=10, target_music_dim=10, max_segments=3, max_candidate_segments=3, max_text_tokens=4)
SMALL = {"d_model": 16, "n_heads": 4, "n_layers": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> FeatureDataset:
    return write_synthetic_features(tmp_path_factory.mktemp("eval") / "cache", 70, SPEC, seed=1, n_text_tokens=3)


@pytest.fixture(scope="module")
def model() -> MuseChatRecommender:
    torch.manual_seed(0)
    return MuseChatRecommender(fusion_config_for(SPEC, SMALL)).eval()


def test_turn1_is_video_only_and_turn2_uses_prompt_and_candidate(data: FeatureDataset, model: MuseChatRecommender) -> None:
    idx = torch.arange(10)
    q1, q2 = query_vectors(model, data, idx, 1, "cpu"), query_vectors(model, data, idx, 2, "cpu")
    changed = FeatureDataset.from_tensors(data.spec, data.ids, {**data.tensors, "text": data.tensors["text"][:] + 1, "candidate": -data.tensors["candidate"][:]})
    assert torch.equal(query_vectors(model, changed, idx, 1, "cpu"), q1)
    assert not torch.allclose(query_vectors(model, changed, idx, 2, "cpu"), q2)
    assert torch.allclose(q1.norm(dim=-1), torch.ones(10))
    # the clip query is the normalised mean of the per-segment queries
    seg_q = model.encode_query(video=data.tensors["video"][0].float())  # (S, d)
    assert torch.allclose(q1[0], track_vector(seg_q), atol=1e-6)


def test_track_vector_is_the_mean_of_segment_vectors(data: FeatureDataset, model: MuseChatRecommender) -> None:
    m = music_vectors(model, data, torch.tensor([4, 5]), "cpu")
    own = track_vector(model.encode_music(pooled=data.tensors["target"][5].float()))
    assert torch.allclose(m[1], own, atol=1e-6)


def test_pools_and_metrics_agree_with_a_direct_computation(data: FeatureDataset, model: MuseChatRecommender) -> None:
    res = evaluate_model(model, data, name="random init", pool_size=30, pool_seed=5)  # 70 quartets: 2 pools, 10 left out
    assert res.n_pools == 2 and res.turn2.n_queries == 60 and res.turn2.pool_size == 30 and res.pool_seed == 5
    assert res.modality_dropout == "off (paper)"
    per_pool = []
    for pool in random_pools(70, 30, seed=5):
        idx = torch.tensor(pool)
        music = music_vectors(model, data, idx, "cpu")
        r1, r2 = (target_ranks(query_vectors(model, data, idx, turn, "cpu") @ music.T, torch.arange(30)).numpy() for turn in (1, 2))
        per_pool.append((turn_metrics(r1, 30), turn_metrics(r2, 30, turn1_ranks=r1)))
    assert res.per_pool == per_pool
    assert res.turn1 == average_metrics([a for a, _ in per_pool])
    assert res.turn2 == average_metrics([b for _, b in per_pool])
    assert res.turn2.median_rank == pytest.approx((per_pool[0][1].median_rank + per_pool[1][1].median_rank) / 2)
    # another seed, other pools (same model, same data)
    other = evaluate_model(model, data, pool_size=30, pool_seed=6)
    assert other.per_pool != res.per_pool


def test_report_has_table1_layout_chance_and_json(data: FeatureDataset, model: MuseChatRecommender, tmp_path: Path) -> None:
    save_checkpoint(model, tmp_path / "ckpt")
    results = evaluate_checkpoints(data, [("MuseChat (ours)", tmp_path / "ckpt")], pool_size=500)
    assert results[0].turn2.pool_size == 70 and results[0].n_pools == 1  # fewer than 500: one pool of all
    table = markdown_table(results, 500)
    lines = table.splitlines()
    assert lines[0].startswith("| Method | MR ↓ | R@1 | R@5 | R@10 | SR |") and lines[0].endswith("| modality dropout |")
    assert lines[2] == "| Random (chance) | 250 | 0.20 | 1.00 | 2.00 | 0.40 | 250 | 0.20 | - | - |"
    assert lines[3].startswith("| MuseChat (ours) |") and lines[3].endswith("| 1 × 70 | off (paper) |")
    assert "| MuseChat (paper) | 2 | 32.79 | 63.92 | 76.53 | 40.49 |" in table
    # Table 2 with the R@5 / R@10 reference values
    assert "| w/o video: music, text (paper, Table 2) | 19 | 8.12 | 24.53 | 37.11 | 8.12 |" in table
    assert "| w/o candidate: video, text (paper, Table 2) | 5 | 22.67 | 51.53 | 65.42 | 26.02 |" in table
    assert "| MVPt, video -> music (paper, Table 2) | 7 | 20.71 | 48.89 | 63.14 | 20.71 |" in table
    md, js = write_report(results, 70, tmp_path / "out" / "results")
    payload = json.loads(js.read_text())
    assert payload["pool_size"] == 70 and payload["chance"]["r1"] == pytest.approx(100 / 70)
    assert payload["results"][0]["turn2"]["r1"] == results[0].turn2.r1
    assert payload["averaged_across_pools"] is True and payload["results"][0]["modality_dropout"] == "off (paper)"
    assert payload["paper_table2"]["w/o video: music, text (paper, Table 2)"]["r10"] == 37.11
    assert md.read_text().splitlines()[2].startswith("| Random (chance) | 35 | 1.43 |")


def test_a_checkpoint_for_other_feature_sizes_is_refused(data: FeatureDataset, tmp_path: Path) -> None:
    other = FeatureSpec(profile="tiny", video_dim=7, text_dim=8, music_dim=10, target_music_dim=10)
    save_checkpoint(MuseChatRecommender(fusion_config_for(other, SMALL)), tmp_path / "other")
    with pytest.raises(CheckpointMismatchError, match=r"\(7, 8, 10, 10\)"):
        evaluate_checkpoints(data, [("x", tmp_path / "other")])

"""Tests of training/data.py: the quartet JSONL format, turn texts from tag differences, catalog quartets."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.encoders.base import TextEncoder, TextTokens
from engine.media import Segment
from engine.tracks import TrackAnalysis
from training.data import (
    catalog_quartets,
    feedback_text,
    read_quartets,
    retrieve_candidate,
    candidate_pools,
    write_quartets,
)
from training.features import FeatureDataset, FeatureShardWriter, FeatureSpec

EXAMPLE = Path(__file__).parents[2] / "training" / "examples" / "quartets.example.jsonl"


class HashTextEncoder(TextEncoder):
    """A deterministic text encoder for tests: one token per word, the word's seeded random vector."""

    dim = 6

    def encode_tokens(self, texts: list[str]) -> TextTokens:
        words = [t.split() for t in texts]
        t = max(1, max(len(w) for w in words))
        states = torch.zeros(len(texts), t, self.dim)
        mask = torch.zeros(len(texts), t, dtype=torch.bool)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                g = torch.Generator().manual_seed(sum(map(ord, w)))
                states[i, j] = torch.randn(self.dim, generator=g)
                mask[i, j] = True
        return TextTokens(states=states, mask=mask)

    def encode_sentences(self, texts: list[str]) -> torch.Tensor:
        tok = self.encode_tokens(texts)
        return torch.nn.functional.normalize(tok.states.sum(1), dim=-1)


def test_example_file_reads_and_round_trips(tmp_path: Path) -> None:
    quartets = list(read_quartets(EXAMPLE))
    assert [q.id for q in quartets] == ["mv-0001", "mv-0002", "catalog-3f9a"]
    assert quartets[0].video == "videos/skate_park.mp4" and quartets[2].video is None
    assert quartets[0].prompt == quartets[0].turns[1].user
    assert "rock" in quartets[0].prompt and "electronic" in quartets[0].prompt
    write_quartets(tmp_path / "q.jsonl", quartets)
    assert list(read_quartets(tmp_path / "q.jsonl")) == quartets


def test_bad_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "target": "t"}\n{"video": "v"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(read_quartets(tmp_path / "bad.jsonl"))


FEEDBACK_CASES = [
    (["drums", "fast"], ["piano", "fast"], ["piano"], ["drums"]),
    (["piano"], ["piano", "calm"], ["calm"], []),
    (["piano", "loud"], ["piano"], [], ["loud"]),
]


@pytest.mark.parametrize(("cand", "target", "more", "less"), FEEDBACK_CASES)
def test_feedback_names_the_tag_differences(cand: list[str], target: list[str], more: list[str], less: list[str]) -> None:
    text = feedback_text(cand, target, random.Random(0))
    for t in more + less:
        assert t in text
    shared = set(cand) & set(target)
    for t in shared:
        assert t not in text
    assert feedback_text(["a"], ["a"], random.Random(0)) in ("Something different, please.", "Not this one, show me another.")


def test_candidate_retrieval_excludes_the_target() -> None:
    vecs = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert retrieve_candidate(vecs[0], vecs, [0, 1, 2], exclude=0) == 1
    assert retrieve_candidate(vecs[2], vecs[[0, 1]], [0, 1], exclude=2) == 1
    assert [p.tolist() for p in candidate_pools(3, 2000, seed=0)] == [[1, 2], [0, 2], [0, 1]]


def test_candidate_pools_are_random_non_overlapping_pools() -> None:
    """Paper 3: candidates come from random non-overlapping pools of 2,000 that exclude the target."""
    n = 4500
    pools = candidate_pools(n, 2000, seed=1)
    assert len(pools) == n
    groups = {tuple(sorted([i, *p.tolist()])) for i, p in enumerate(pools)}
    assert sorted(len(g) for g in groups) == [500, 2000, 2000]  # 2,000 + 2,000 + the remainder
    assert sorted(i for g in groups for i in g) == list(range(n))  # each clip in exactly one pool
    for i in (0, 17, 4499):
        assert i not in pools[i] and len(set(pools[i].tolist())) == len(pools[i])
        assert all(i in pools[j] for j in pools[i][:5])  # same pool, both ways
    assert [p.tolist() for p in candidate_pools(n, 2000, seed=1)] == [p.tolist() for p in pools]
    assert pools[0].tolist() != candidate_pools(n, 2000, seed=2)[0].tolist()
    assert not any(g == tuple(range(g[0], g[0] + len(g))) for g in groups)  # random, not consecutive blocks


def _analysis(i: int, tags: dict[str, float], vec: np.ndarray) -> TrackAnalysis:
    return TrackAnalysis(
        content_hash=f"{i:064x}", profile="tiny", duration_s=30.0,
        segments=[Segment(index=k, start_s=10.0 * k, end_s=10.0 * k + 10) for k in range(3)],
        segment_vectors=np.stack([vec + 0.01 * k for k in range(3)]).astype(np.float32),
        tag_probs=tags, tempo_bpm=120.0, loudness_db=-12.0, onset_rate=2.0, excerpt_start_s=0.0,
        excerpt_duration_s=30.0, sentence=f"Track {i} by Someone: tags",
    )


def test_catalog_quartets_features_and_resume(tmp_path: Path) -> None:
    tags = [
        {"mtt:guitar": 0.9, "mtt:rock": 0.8, "msd:fast": 0.3},
        {"mtt:piano": 0.9, "mtt:calm": 0.7, "msd:slow": 0.3},
        {"mtt:guitar": 0.6, "mtt:metal": 0.9, "msd:fast": 0.5},
    ]
    vecs = [np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0, 0.0]), np.array([0.9, 0.1, 0.0, 0.0])]
    analyses = [_analysis(i, tags[i], vecs[i]) for i in range(3)]
    spec = FeatureSpec(profile="tiny", video_dim=5, text_dim=6, music_dim=4, target_music_dim=4)
    writer = FeatureShardWriter(tmp_path, spec, shard_size=2)
    quartets = catalog_quartets(analyses, HashTextEncoder(), writer, seed=0)
    writer.close()
    assert [q.candidate for q in quartets] == [f"sha256:{analyses[j].content_hash}" for j in (2, 2, 0)]
    assert quartets[0].target_title == "Track 0 by Someone" and quartets[0].video is None
    assert "metal" in quartets[0].prompt  # the candidate's tag the target lacks
    ds = FeatureDataset(tmp_path)
    assert len(ds) == 3 and ds.tensors["video_len"].tolist() == [0, 0, 0]
    assert ds.tensors["target"][0, :3].float().numpy() == pytest.approx(analyses[0].segment_vectors, abs=1e-3)
    assert ds.tensors["candidate"][0, :3].float().numpy() == pytest.approx(analyses[2].segment_vectors, abs=1e-3)
    n_words = len(quartets[1].prompt.split())
    assert ds.tensors["text_len"][1].item() == min(n_words, spec.max_text_tokens)
    again = FeatureShardWriter(tmp_path, spec, shard_size=2)
    assert catalog_quartets(analyses, HashTextEncoder(), again, seed=0) == []  # all cached: nothing redone

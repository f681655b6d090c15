"""Tests of training/features.py: shards, resume of an extraction, batches, pools."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.features import (
    MANIFEST,
    SHARD_BYTES,
    ShardedArray,
    FeatureCacheError,
    FeatureDataset,
    FeatureItem,
    FeatureShardWriter,
    FeatureSpec,
    random_pools,
)

SPEC = FeatureSpec(profile="tiny", video_dim=3, text_dim=2, music_dim=4, target_music_dim=4, max_segments=3, max_candidate_segments=2, max_text_tokens=4)


def _item(i: int, *, video: bool = True, text_tokens: int = 2) -> FeatureItem:
    f = float(i)
    return FeatureItem(
        id=f"q{i}",
        target=np.full((3, 4), f + 0.5),
        video=np.arange(9, dtype=np.float32).reshape(3, 3) + f if video else None,
        candidate=np.full((5, 4), -f),  # longer than max_candidate_segments: cut to 2
        text=np.full((text_tokens, 2), f) if text_tokens else None,
    )


def test_shards_round_trip_and_resume(tmp_path: Path) -> None:
    w = FeatureShardWriter(tmp_path, SPEC, shard_size=2)
    for i in range(3):
        w.add(_item(i))
    # interrupted: shard 0 (q0, q1) is written, q2 is pending and lost
    meta = json.loads((tmp_path / MANIFEST).read_text())
    assert [s["ids"] for s in meta["shards"]] == [["q0", "q1"]] and meta["complete"] is False
    with pytest.raises(FeatureCacheError, match="incomplete"):
        FeatureDataset(tmp_path)

    w2 = FeatureShardWriter(tmp_path, SPEC, shard_size=2)
    assert w2.done_ids == {"q0", "q1"}
    for i in range(5):
        w2.add(_item(i, video=i != 3, text_tokens=0 if i == 4 else 2))
    w2.close()
    ds = FeatureDataset(tmp_path)
    assert ds.ids == ["q0", "q1", "q2", "q3", "q4"]
    t = ds.tensors
    assert t["video"].dtype == torch.float16 and t["video"].shape == (5, 3, 3)
    assert t["video_len"].tolist() == [3, 3, 3, 0, 3]
    assert t["candidate_len"].tolist() == [2] * 5
    assert t["text_len"].tolist() == [2, 2, 2, 2, 0]
    assert t["candidate"][2].float().tolist() == [[-2.0] * 4] * 2
    assert t["video"][1].float().tolist() == (np.arange(9).reshape(3, 3) + 1).tolist()


def test_writer_rejects_another_spec_and_wrong_dims(tmp_path: Path) -> None:
    FeatureShardWriter(tmp_path, SPEC).close()
    other = dataclasses.replace(SPEC, profile="lite")
    with pytest.raises(FeatureCacheError) as e:
        FeatureShardWriter(tmp_path, other)
    assert str(e.value) == f"feature cache {tmp_path} was written with profile={SPEC.profile!r}; this run's would have profile='lite'"
    w = FeatureShardWriter(tmp_path / "b", SPEC)
    with pytest.raises(FeatureCacheError, match="target must be"):  # refused when added, before any write
        w.add(FeatureItem(id="x", target=np.zeros((3, 5))))
    with pytest.raises(FeatureCacheError, match="needs target music"):
        w.add(FeatureItem(id="y", target=np.zeros((0, 4))))
    w.close()
    assert w.shards == [] and w.done_ids == set()


def test_batch_takes_the_same_segment_of_video_and_target(tmp_path: Path) -> None:
    w = FeatureShardWriter(tmp_path, SPEC)
    for i in range(4):
        item = _item(i, video=i != 3)
        item.target = np.arange(3, dtype=np.float32)[:, None].repeat(4, 1) + 10 * i  # segment j: 10 i + j
        w.add(item)
    w.close()
    ds = FeatureDataset(tmp_path)
    seg = ds.segment_choice(123)
    assert torch.equal(seg, ds.segment_choice(123))
    assert ((seg >= 0) & (seg < 3)).all()
    b = ds.batch(torch.tensor([0, 2, 3]), seg)
    assert b["video"].shape == (3, 3) and b["text"].shape == (3, 4, 2) and b["candidate"].shape == (3, 2, 4)
    assert b["has_video"].tolist() == [True, True, False]
    assert b["text_mask"].tolist() == [[True, True, False, False]] * 3
    for row, i in enumerate([0, 2, 3]):
        assert b["target_pooled"][row, 0].item() == 10 * i + seg[i].item()
        if i != 3:
            assert b["video"][row, 0].item() == 3 * seg[i].item() + i


def test_pools_are_random_seeded_and_disjoint() -> None:
    pools = random_pools(1234, 500, seed=3)
    assert [len(p) for p in pools] == [500, 500]  # the remainder of 234 is left out
    flat = [i for p in pools for i in p]
    assert len(set(flat)) == 1000 and set(flat) <= set(range(1234))  # disjoint, within range
    assert all(p == sorted(p) for p in pools)
    assert random_pools(1234, 500, seed=3) == pools  # seeded
    other = random_pools(1234, 500, seed=4)
    assert other != pools and set(other[0]) != set(pools[0])
    # random: not the consecutive blocks, and members spread over the whole range
    assert pools[0] != list(range(500)) and pools[0] != list(range(500, 1000))
    assert min(pools[0]) < 50 and max(pools[0]) > 1180
    # pool membership is uniform: over many seeds each index lands in a pool ~1000/1234 of the time
    counts = np.zeros(1234)
    for seed in range(200):
        for p in random_pools(1234, 500, seed=seed):
            counts[p] += 1
    assert abs(counts.mean() / 200 - 1000 / 1234) < 1e-9 and counts.min() > 0.6 * 200 and counts.max() < 0.97 * 200
    # small sets: one pool of all; the data build keeps the remainder (a single index joins the last pool)
    assert random_pools(2, 500) == [[0, 1]] and random_pools(0, 500) == []
    kept = random_pools(7, 3, seed=0, keep_remainder=True)
    assert [len(p) for p in kept] == [3, 4] and sorted(i for p in kept for i in p) == list(range(7))
    kept = random_pools(8, 3, seed=0, keep_remainder=True)
    assert [len(p) for p in kept] == [3, 3, 2] and sorted(i for p in kept for i in p) == list(range(8))
    with pytest.raises(ValueError, match="pool_size"):
        random_pools(10, 0)


def test_prompts_keep_clips_77_token_context(tmp_path: Path) -> None:
    """The default cache keeps a prompt's every token up to CLIP's 77 (not cut at 32)."""
    spec = FeatureSpec(profile="tiny", video_dim=3, text_dim=2, music_dim=4, target_music_dim=4)
    assert spec.max_text_tokens == 77 and spec.shape("text") == (77, 2)
    writer = FeatureShardWriter(tmp_path, spec)
    text = np.arange(2 * 90, dtype=np.float32).reshape(90, 2)  # 90 token states: more than CLIP's context
    writer.add(FeatureItem(id="a", target=np.ones((1, 4)), text=text[:60]))
    writer.add(FeatureItem(id="b", target=np.ones((1, 4)), text=text))
    writer.close()
    ds = FeatureDataset(tmp_path)
    assert ds.tensors["text_len"].tolist() == [60, 77]
    assert ds.tensors["text"][0, :60].float().numpy() == pytest.approx(text[:60])
    assert ds.tensors["text"][1].float().numpy() == pytest.approx(text[:77])


def test_log_mel_spec_and_batches(tmp_path: Path) -> None:
    spec = FeatureSpec.for_log_mels("tiny", video_dim=3, text_dim=2, mel_frames=4, mel_bins=2, max_segments=2, max_text_tokens=4)
    assert (spec.music_dim, spec.target_music_dim, spec.max_candidate_segments, spec.music_input) == (8, 8, 1, "log_mels")
    with pytest.raises(ValueError, match="flattened"):
        FeatureSpec(profile="tiny", video_dim=3, text_dim=2, music_dim=7, target_music_dim=8, music_input="log_mels", mel_frames=4, mel_bins=2)
    with pytest.raises(ValueError, match="music_input"):
        FeatureSpec(profile="tiny", video_dim=3, text_dim=2, music_dim=8, target_music_dim=8, music_input="wav")
    writer = FeatureShardWriter(tmp_path, spec)
    target = np.arange(16, dtype=np.float32).reshape(2, 8)  # two 10 s segments of 4 frames x 2 bins
    writer.add(FeatureItem(id="a", target=target, candidate=100 + np.arange(8, dtype=np.float32)[None], video=np.ones((2, 3))))
    writer.add(FeatureItem(id="b", target=target[:1], video=np.ones((1, 3))))  # no candidate
    writer.close()
    ds = FeatureDataset(tmp_path)
    b = ds.batch(torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert set(b) == {"video", "has_video", "text", "text_mask", "candidate_mels", "has_candidate", "target_mels"}
    assert b["target_mels"][0].tolist() == target[1].reshape(4, 2).tolist()  # segment 1 of quartet a, as (frames, bins)
    assert b["target_mels"][1].tolist() == target[0].reshape(4, 2).tolist()
    assert b["candidate_mels"][0].tolist() == (100 + np.arange(8)).reshape(4, 2).tolist()
    assert b["has_candidate"].tolist() == [True, False]


# ---------------------------------------------------------------------------------------------
# shards on disk as .npy folders, memory-mapped when read (a log-mel cache does not fit in RAM)


def test_shards_are_npy_folders_read_memory_mapped_with_equal_values(tmp_path: Path) -> None:
    w = FeatureShardWriter(tmp_path, SPEC, shard_size=2)
    for i in range(5):
        w.add(_item(i, video=i != 3))
    w.close()
    assert [s["file"] for s in json.loads((tmp_path / MANIFEST).read_text())["shards"]] == ["shard-00000", "shard-00001", "shard-00002"]
    assert sorted(p.name for p in (tmp_path / "shard-00001").iterdir()) == sorted(
        [f"{n}.npy" for n in ("video", "target", "candidate", "text")] + [f"{n}_len.npy" for n in ("video", "target", "candidate", "text")]
    )
    mapped, loaded = FeatureDataset(tmp_path), FeatureDataset(tmp_path, mmap=False)
    for name in ("video", "target", "candidate", "text"):
        m = mapped.tensors[name]
        assert isinstance(m, ShardedArray) and all(isinstance(p, np.memmap) for p in m.parts)  # on disk, not in RAM
        assert isinstance(loaded.tensors[name], torch.Tensor) and m.shape == loaded.tensors[name].shape
        assert m.dtype == loaded.tensors[name].dtype == torch.float16
        assert torch.equal(m[:], loaded.tensors[name])
    # every indexing the training and evaluation code uses gives what the in-memory tensor gives
    idx, seg = torch.tensor([4, 0, 3, 1, 4]), torch.tensor([2, 0, 1, 1, 0])
    t, r = mapped.tensors["video"], loaded.tensors["video"]
    for key in (3, -1, slice(1, 4), idx, (idx, seg), (idx, 0), (2, slice(0, 2)), (idx, slice(None), 1), torch.tensor([], dtype=torch.long),
                torch.tensor(2), (idx, torch.tensor(1)), (torch.tensor(4), torch.tensor(2))):
        assert torch.equal(t[key], r[key]), key
    # batches are equal, log-mel or not; a lazy subset reads the same rows
    segs = mapped.segment_choice(3)
    assert torch.equal(segs, loaded.segment_choice(3))
    for a, b in zip(mapped.batch(idx, segs).values(), loaded.batch(idx, segs).values(), strict=True):
        assert torch.equal(a, b)
    sub = mapped.subset([4, 1])
    assert isinstance(sub.tensors["target"], ShardedArray) and sub.ids == ["q4", "q1"]
    assert torch.equal(sub.tensors["target"][:], loaded.tensors["target"][torch.tensor([4, 1])])
    assert torch.equal(sub.subset([1]).tensors["candidate"][0], loaded.tensors["candidate"][1])
    with pytest.raises(IndexError):
        t[5]


def test_a_format_1_cache_of_npz_shards_is_still_read(tmp_path: Path) -> None:
    w = FeatureShardWriter(tmp_path, SPEC, shard_size=2)
    for i in range(3):
        w.add(_item(i))
    w.close()
    meta = json.loads((tmp_path / MANIFEST).read_text())
    for shard in meta["shards"]:  # rewrite as format 1 wrote it: one .npz per shard
        folder = tmp_path / shard["file"]
        np.savez(tmp_path / f"{shard['file']}.npz", **{p.stem: np.load(p) for p in folder.iterdir()})
        shard["file"] += ".npz"
    meta["format_version"] = 1
    (tmp_path / MANIFEST).write_text(json.dumps(meta))
    old, new = FeatureDataset(tmp_path), FeatureDataset(tmp_path, mmap=False)
    assert old.ids == ["q0", "q1", "q2"] and torch.equal(old.tensors["target"][:], new.tensors["target"])


def test_log_mel_shards_are_sized_by_bytes() -> None:
    paper = FeatureSpec.for_log_mels("paper", video_dim=512, text_dim=512, mel_frames=1024, mel_bins=128)
    per_quartet = (12 + 1) * 1024 * 128 * 2 + 12 * 512 * 2 + 77 * 512 * 2 + 4 * 4  # float16 log-mels dominate
    assert paper.item_bytes == per_quartet
    assert paper.default_shard_size() == SHARD_BYTES // per_quartet == 76  # ~266 MB a shard
    assert SPEC.default_shard_size() == 1024

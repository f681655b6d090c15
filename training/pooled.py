"""The pooled (video, own soundtrack) pairs the two-tower turn-1 retriever reads, from a `data build` folder.

`data build` keeps each music video's analyses (the frozen encoders' per-segment vectors) under
`MEDIA_CACHE` in its output folder. The retriever trains and retrieves on those pooled vectors
whichever music input the cache itself holds (`pooled_clips`: for a log-mel cache, the same quartets
in the same order). Here, not in training/data.py, so that the training loop and the evaluation read
them without importing the data builder, which itself calls the training loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from engine.tracks import TrackAnalysis
from engine.video import VideoFeatures
from training.features import MUSIC_FEATURES, MUSIC_LOG_MELS, FeatureCacheError, FeatureDataset, FeatureSpec

MEDIA_CACHE = "media"  # per-video analyses under the output folder, so a rerun decodes nothing twice


def common_rows(vf: VideoFeatures, ta: TrackAnalysis) -> tuple[list[int], list[int]]:
    """Rows of the video's and of the music's segments that both kept (the same 10 s each)."""
    vi = {s.index: k for k, s in enumerate(vf.segments)}
    mi = {s.index: k for k, s in enumerate(ta.segments)}
    common = sorted(set(vi) & set(mi))
    return [vi[i] for i in common], [mi[i] for i in common]


def padded(arrays: Sequence[np.ndarray], rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[(S_i, D)] -> float32 (N, rows, D) zero-padded + lengths (N,); longer arrays are cut at `rows`."""
    out = torch.zeros(len(arrays), rows, arrays[0].shape[1])
    lengths = torch.zeros(len(arrays), dtype=torch.int32)
    for i, a in enumerate(arrays):
        k = min(rows, len(a))
        out[i, :k] = torch.as_tensor(np.asarray(a[:k], dtype=np.float32))
        lengths[i] = k
    return out, lengths


def retriever_spec(spec: FeatureSpec, music_dim: int) -> FeatureSpec:
    """The pooled-feature spec the turn-1 retriever reads for a cache of `spec`: `spec` itself, or for a
    log-mel cache the same sizes with the frozen music encoder's `music_dim`-d pooled vectors."""
    if spec.music_input != MUSIC_LOG_MELS:
        return spec
    return dataclasses.replace(spec, music_dim=music_dim, target_music_dim=music_dim, max_candidate_segments=spec.max_segments,
                               music_input=MUSIC_FEATURES, mel_frames=0, mel_bins=0)


def pairs(spec: FeatureSpec, ids: list[str], videos: Sequence[np.ndarray], musics: Sequence[np.ndarray], root: Path | str = ".") -> FeatureDataset:
    """(video, own soundtrack) pairs of pooled segment vectors as a FeatureDataset (float16, as a cache stores them)."""
    video, vlen = padded(videos, spec.max_segments)
    target, tlen = padded(musics, spec.max_segments)
    tensors = {"video": video.half(), "video_len": vlen, "target": target.half(), "target_len": tlen}
    return FeatureDataset.from_tensors(spec, ids, tensors, root=root)


def pooled_clips(data: FeatureDataset) -> FeatureDataset:
    """What the two-tower retriever reads of a cache: `data` itself when it holds pooled features; for a
    log-mel cache of `data build`, each quartet's (video, own soundtrack) as the frozen encoder's pooled
    segment vectors, read from the build's per-video analyses (`media/` under the cache), the same
    quartets in the same order (so a --holdout split and the eval pools are the same)."""
    if data.spec.music_input != MUSIC_LOG_MELS:
        return data
    media = data.root / MEDIA_CACHE
    videos, musics = [], []
    for qid in data.ids:
        sha = qid.removeprefix("video-")
        vpath, mpath = media / f"{sha}.video.npz", media / f"{sha}.music.npz"
        if not qid.startswith("video-") or not (vpath.is_file() and mpath.is_file()):
            raise FeatureCacheError(
                f"{data.root} is a log-mel cache and the two-tower retriever reads pooled music features, which a log-mel "
                f"build keeps in its per-video analyses ({media}); {qid}'s are not there. Use the build's folder as it "
                "was written, or a `data build --music-input features` cache"
            )
        vf, ta = VideoFeatures.from_bytes(vpath.read_bytes()), TrackAnalysis.from_bytes(mpath.read_bytes())
        v_rows, m_rows = common_rows(vf, ta)
        videos.append(vf.segment_vectors[v_rows])
        musics.append(ta.segment_vectors[m_rows])
    spec = retriever_spec(data.spec, int(musics[0].shape[1]))
    return pairs(spec, list(data.ids), videos, musics, root=data.root)

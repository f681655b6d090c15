"""What the engine sees of a video: per-segment image features, labels and pace (paper section 4.1).

The paper's video branch: frames sampled per 10 s segment of the centre 120 s, a frozen image
encoder per frame, the mean over a segment's frames as that segment's vector. The clip vector is
the L2-normalised mean of the segment vectors (section 5's track-level rule applied to video).

The paper samples 5 fps; a chat query uses `fps` from settings (benchmarks/bench_encoders.py
measures how closely a reduced rate agrees with 5 fps). Features are computed once per
conversation and serialised (`to_bytes` / `from_bytes`), so a turn k >= 2 decodes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.encoders.base import ImageEncoder
from engine.media import (
    CorruptMediaError,
    MediaLimits,
    Segment,
    decode_frames_and_motion,
    plan_segments,
    probe,
)

log = logging.getLogger(__name__)

PAPER_FPS = 5.0  # frames per second per segment (paper section 3)
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, the key of a video across turns, processes and stores."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class VideoFeatures:
    content_hash: str
    duration_s: float
    fps: float  # frames per second sampled per segment
    segments: list[Segment]
    segment_vectors: np.ndarray  # (S, D) mean frame feature per segment, float32
    labels: list[tuple[str, float]]  # top image labels over all sampled frames
    motion: np.ndarray  # (S,) mean absolute frame difference in [0, 1]
    cut_rate: np.ndarray  # (S,) cuts per second
    profile: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def clip_vector(self) -> np.ndarray:
        """L2-normalised mean of the segment vectors.  # (D,)"""
        v = self.segment_vectors.mean(axis=0)
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def to_bytes(self) -> bytes:
        """Serialise (npz with a JSON header) for caching between turns and processes."""
        meta = {
            "content_hash": self.content_hash,
            "duration_s": self.duration_s,
            "fps": self.fps,
            "segments": [[s.index, s.start_s, s.end_s] for s in self.segments],
            "labels": self.labels,
            "profile": self.profile,
            "timings": self.timings,
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            segment_vectors=self.segment_vectors,
            motion=self.motion,
            cut_rate=self.cut_rate,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> VideoFeatures:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        meta = json.loads(z["meta"].tobytes().decode())
        return cls(
            content_hash=meta["content_hash"],
            duration_s=meta["duration_s"],
            fps=meta["fps"],
            segments=[Segment(index=i, start_s=a, end_s=b) for i, a, b in meta["segments"]],
            segment_vectors=z["segment_vectors"],
            labels=[(str(n), float(p)) for n, p in meta["labels"]],
            motion=z["motion"],
            cut_rate=z["cut_rate"],
            profile=meta["profile"],
            timings=meta.get("timings", {}),
        )


def video_features(
    path: str | Path,
    image_encoder: ImageEncoder,
    *,
    profile: str,
    fps: float = PAPER_FPS,
    limits: MediaLimits | None = None,
    ffmpeg: str | None = None,
    n_labels: int = 5,
) -> VideoFeatures:
    """Decode, embed and measure a video: everything a conversation needs from it, once."""
    limits = limits or MediaLimits()
    t0 = time.perf_counter()
    info = probe(path, limits=limits, require_video=True)
    segments = plan_segments(info.duration_s)
    t_probe = time.perf_counter()
    # One decode gives both the encoder's frames and the motion/cut signals.
    per_segment, pace = decode_frames_and_motion(
        path, segments=segments, fps=fps, size=image_encoder.input_size, limits=limits, ffmpeg=ffmpeg
    )
    t_decode = time.perf_counter()
    # A segment that yielded no frame (past a mis-reported end) is dropped from every array alike.
    keep = [i for i, f in enumerate(per_segment) if len(f)]
    if not keep:
        raise CorruptMediaError(f"no frame decoded from {path}")
    segments = [segments[i] for i in keep]
    per_segment = [per_segment[i] for i in keep]

    frames = np.concatenate(per_segment, axis=0)  # (F, H, W, 3)
    feats, labels = image_encoder.encode_with_labels(frames, k=n_labels)  # (F, D), top labels
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().float().numpy()
    bounds = np.cumsum([0] + [len(f) for f in per_segment])
    seg_vecs = np.stack([feats[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])  # (S, D)
    t_embed = time.perf_counter()
    timings = {
        "probe": t_probe - t0,
        "decode": t_decode - t_probe,
        "embed": t_embed - t_decode,
        "total": t_embed - t0,
    }
    log.info("embedded video %s: %d segments, %d frames in %.2fs", Path(path).name, len(segments), len(frames), timings["total"])
    return VideoFeatures(
        content_hash=content_hash(path),
        duration_s=info.duration_s,
        fps=fps,
        segments=segments,
        segment_vectors=seg_vecs.astype(np.float32),
        labels=labels,
        motion=np.asarray(pace.motion, dtype=np.float32)[keep],
        cut_rate=np.asarray(pace.cut_rate, dtype=np.float32)[keep],
        profile=profile,
        timings=timings,
    )

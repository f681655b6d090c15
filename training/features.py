"""Frozen-encoder features of MuseChat quartets, cached on disk in shards (paper sections 3-4.1).

The encoders are frozen (paper 4.1), so their outputs are computed once and an epoch never decodes
media again. One quartet is stored as
    video      (S, Dv)  image-encoder features averaged over each 10 s segment's frames (5 fps)
    target     (S, Dm)  the target music's per-segment pooled vectors (g_mt's input)
    candidate  (Sc, Dm) the candidate music's per-segment vectors: the tokens x_mc (the bot feeds
                        the previous track's segment features the same way, bot/service/conversation.py)
    text       (T, Dt)  the user prompt's unpooled token states (paper 4.1)
with S <= MAX_SEGMENTS (twelve 10 s segments of a 120 s clip, paper 3). A missing input has
length 0 (music-only quartets have no video; a quartet may have no prompt).

On disk: a directory with `manifest.json` and `shard-00000.npz`, ... Each shard holds arrays
padded to the spec's maxima plus a length per item, in float16 (half the disk and memory; the
encoders' features are well inside its range) and is written to a temporary name then renamed.
The manifest is rewritten after each shard, and lists the ids each shard holds, so an interrupted
extraction resumes where the last complete shard ended (`FeatureShardWriter.done_ids`).

`FeatureDataset` loads every shard into memory (at the lite profile's sizes an 88k-quartet
dataset is a few GB in float16); batches are indexed tensors, no DataLoader workers are needed.

With `FeatureSpec.music_input == "log_mels"` (the trained AST towers, engine/music_towers.py) the
music arrays hold AST's log-mel inputs instead, each 10 s sample flattened to one row of
mel_frames x mel_bins float16 values: the target's segments, and one 10 s candidate clip; batches
hand them to `TowerRecommender` as `target_mels` / `candidate_mels` (B, frames, mel bins).

`write_synthetic_features` writes a dataset with a planted video <-> music relation (a shared
latent per quartet) for the tests and the benchmark: it is a test instrument, never training data.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from storage.files import write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_SEGMENTS = 12  # 120 s clip / 10 s segments (paper section 3)
MAX_TEXT_TOKENS = 77  # prompt tokens kept: CLIP's whole context (paper 4.1, the CLIP text encoder's tokens)
DEFAULT_SHARD_SIZE = 1024  # quartets per shard
STORE_DTYPE = np.float16
ARRAYS = ("video", "target", "candidate", "text")
MUSIC_FEATURES, MUSIC_LOG_MELS = "features", "log_mels"  # FeatureSpec.music_input


@dataclass
class FeatureSpec:
    """Feature sizes and paddings of a cache; `profile` names the encoders that produced them."""

    profile: str
    video_dim: int
    text_dim: int
    music_dim: int  # candidate tokens (g_mc's input)
    target_music_dim: int  # target segments (g_mt's input)
    max_segments: int = MAX_SEGMENTS
    max_candidate_segments: int = MAX_SEGMENTS
    max_text_tokens: int = MAX_TEXT_TOKENS
    music_input: str = MUSIC_FEATURES  # "features": frozen-encoder vectors; "log_mels": the trained towers' inputs
    mel_frames: int = 0  # log_mels: AST frames per 10 s sample (1024 for the paper's AST)
    mel_bins: int = 0  # log_mels: mel bins (128)

    def __post_init__(self) -> None:
        if self.music_input not in (MUSIC_FEATURES, MUSIC_LOG_MELS):
            raise ValueError(f"music_input must be {MUSIC_FEATURES!r} or {MUSIC_LOG_MELS!r}, got {self.music_input!r}")
        if self.music_input == MUSIC_LOG_MELS:
            width = self.mel_frames * self.mel_bins
            if width <= 0 or self.music_dim != width or self.target_music_dim != width or self.max_candidate_segments != 1:
                raise ValueError(
                    "a log-mel cache stores each 10 s sample flattened: music_dim = target_music_dim = "
                    f"mel_frames x mel_bins ({width}) and one candidate clip (max_candidate_segments 1)"
                )

    @classmethod
    def for_log_mels(cls, profile: str, video_dim: int, text_dim: int, mel_frames: int, mel_bins: int, **kw: int) -> FeatureSpec:
        """A cache of the towers' inputs: per quartet the target's 10 s segments and one 10 s candidate clip as log-mels."""
        width = mel_frames * mel_bins
        return cls(profile=profile, video_dim=video_dim, text_dim=text_dim, music_dim=width, target_music_dim=width,
                   max_candidate_segments=1, music_input=MUSIC_LOG_MELS, mel_frames=mel_frames, mel_bins=mel_bins, **kw)

    def shape(self, name: str) -> tuple[int, int]:
        return {
            "video": (self.max_segments, self.video_dim),
            "target": (self.max_segments, self.target_music_dim),
            "candidate": (self.max_candidate_segments, self.music_dim),
            "text": (self.max_text_tokens, self.text_dim),
        }[name]


@dataclass
class FeatureItem:
    """One quartet's features (module docstring); None for a missing input."""

    id: str
    target: np.ndarray  # (S, Dm)
    video: np.ndarray | None = None  # (S, Dv)
    candidate: np.ndarray | None = None  # (Sc, Dm)
    text: np.ndarray | None = None  # (T, Dt)


class FeatureCacheError(Exception):
    """A feature cache is missing, damaged, or does not fit what the caller expects."""


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FeatureCacheError(f"{root} is not a feature cache: it has no {MANIFEST}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FeatureCacheError(f"{path} is not valid JSON: {e}") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise FeatureCacheError(f"{path} has format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    return meta


class FeatureShardWriter:
    """Append quartet features to a cache directory, a shard at a time; resumable (module docstring)."""

    def __init__(self, root: str | Path, spec: FeatureSpec, shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.shard_size = shard_size
        self._pending: list[FeatureItem] = []
        self._pending_ids: set[str] = set()
        self.build: dict = {}  # how the quartets were made (`record_build`), kept in the manifest
        self._complete = False
        if (self.root / MANIFEST).is_file():
            meta = read_manifest(self.root)
            if meta["spec"] != asdict(spec):
                raise FeatureCacheError(f"feature cache {self.root} was written with spec {meta['spec']}, not {asdict(spec)}")
            self.shards: list[dict] = meta["shards"]
            self.build = dict(meta.get("build", {}))
            self._complete = bool(meta.get("complete"))
        else:
            self.shards = []
            self._write_manifest(complete=False)
        self.done_ids: set[str] = {i for s in self.shards for i in s["ids"]}

    def _write_manifest(self, complete: bool) -> None:
        self._complete = complete
        meta = {"format_version": FORMAT_VERSION, "spec": asdict(self.spec), "shards": self.shards, "complete": complete}
        if self.build:
            meta["build"] = self.build
        write_atomic(self.root / MANIFEST, (json.dumps(meta) + "\n").encode())

    def record_build(self, key: str, value: object) -> None:
        """Keep `value` (JSON) under the manifest's "build" object at once (e.g. where the candidates came from)."""
        self.build[key] = value
        self._write_manifest(complete=self._complete)

    def add(self, item: FeatureItem) -> None:
        if item.id in self.done_ids or item.id in self._pending_ids:
            return
        self._pending.append(item)
        self._pending_ids.add(item.id)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending items as one shard and record it in the manifest."""
        if not self._pending:
            return
        items, self._pending, self._pending_ids = self._pending, [], set()
        n = len(items)
        arrays: dict[str, np.ndarray] = {}
        for name in ARRAYS:
            rows, dim = self.spec.shape(name)
            data = np.zeros((n, rows, dim), dtype=STORE_DTYPE)
            lengths = np.zeros(n, dtype=np.int32)
            for i, item in enumerate(items):
                x = getattr(item, name)
                if x is None:
                    continue
                x = np.asarray(x, dtype=np.float32)
                if x.ndim != 2 or x.shape[1] != dim:
                    raise FeatureCacheError(f"{item.id}: {name} must be (*, {dim}), got {x.shape}")
                k = min(rows, x.shape[0])
                data[i, :k] = x[:k]
                lengths[i] = k
            arrays[name] = data
            arrays[f"{name}_len"] = lengths
        if (arrays["target_len"] == 0).any():
            raise FeatureCacheError("every quartet needs target music features")
        name = f"shard-{len(self.shards):05d}.npz"
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomic(self.root / name, buf.getvalue())
        ids = [it.id for it in items]
        self.shards.append({"file": name, "n": n, "ids": ids})
        self.done_ids.update(ids)
        self._write_manifest(complete=False)
        log.info("feature cache %s: wrote %s (%d quartets, %d in all)", self.root, name, n, len(self.done_ids))

    def close(self) -> None:
        """Flush and mark the cache complete."""
        self.flush()
        self._write_manifest(complete=True)


class FeatureDataset:
    """Every quartet of a feature cache in memory as padded float16 tensors + lengths."""

    def __init__(self, root: str | Path, *, require_complete: bool = True) -> None:
        self.root = Path(root)
        meta = read_manifest(self.root)
        if require_complete and not meta.get("complete"):
            raise FeatureCacheError(f"feature cache {self.root} is incomplete: finish (resume) its extraction first")
        self.spec = FeatureSpec(**meta["spec"])
        parts: dict[str, list[np.ndarray]] = {}
        self.ids: list[str] = []
        for shard in meta["shards"]:
            with np.load(self.root / shard["file"], allow_pickle=False) as z:
                for key in z.files:
                    parts.setdefault(key, []).append(z[key])
            self.ids.extend(shard["ids"])
        if not self.ids:
            raise FeatureCacheError(f"feature cache {self.root} holds no quartets")
        self.tensors = {k: torch.from_numpy(np.concatenate(v)) for k, v in parts.items()}

    @classmethod
    def from_tensors(cls, spec: FeatureSpec, ids: list[str], tensors: dict[str, torch.Tensor]) -> FeatureDataset:
        ds = cls.__new__(cls)
        ds.root, ds.spec, ds.ids, ds.tensors = Path("."), spec, ids, tensors
        return ds

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> FeatureDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return FeatureDataset.from_tensors(self.spec, [self.ids[i] for i in idx.tolist()], {k: v[idx] for k, v in self.tensors.items()})

    def split(self, n_test: int, seed: int = 0) -> tuple[FeatureDataset, FeatureDataset]:
        """(train, test): a seeded random split with `n_test` quartets held out."""
        if not 0 < n_test < len(self):
            raise ValueError(f"n_test must lie in (0, {len(self)}), got {n_test}")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[n_test:].sort().values), self.subset(perm[:n_test].sort().values)

    def segment_choice(self, epoch_seed: int) -> torch.Tensor:
        """One segment index per quartet for an epoch, drawn from `epoch_seed` alone.  # (N,)

        Video segment j and target segment j are the same 10 s of the clip (its own soundtrack);
        the draw does not depend on the rank or the batch, so DDP and resumed runs see the same.
        """
        u = torch.rand(len(self), generator=torch.Generator().manual_seed(epoch_seed), dtype=torch.float64)
        t = self.tensors
        vlen = t["video_len"].to(torch.long)
        tlen = t["target_len"].to(torch.long)
        n_seg = torch.where(vlen > 0, torch.minimum(vlen, tlen), tlen)  # (N,)
        return (u * n_seg).floor().to(torch.long).clamp(max=n_seg - 1)

    def batch(self, idx: torch.Tensor, segments: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Model inputs of quartets `idx` at segment `segments[idx]` (keyword arguments of the model)."""
        t = self.tensors
        seg = segments[idx]
        def lengths_mask(name: str) -> torch.Tensor:
            rows = t[name].shape[1]
            return torch.arange(rows)[None, :] < t[f"{name}_len"][idx].to(torch.long)[:, None]  # (B, rows)

        if self.spec.music_input == MUSIC_LOG_MELS:  # the towers' inputs, 10 s each (paper 5.1)
            b, f, m = len(idx), self.spec.mel_frames, self.spec.mel_bins
            out = {
                "video": t["video"][idx, seg].float(),  # (B, Dv)
                "has_video": t["video_len"][idx] > 0,
                "text": t["text"][idx].float(),  # (B, T, Dt)
                "text_mask": lengths_mask("text"),
                "candidate_mels": t["candidate"][idx, 0].float().view(b, f, m),  # (B, F, M) the candidate clip
                "has_candidate": t["candidate_len"][idx] > 0,
                "target_mels": t["target"][idx, seg.clamp(max=t["target_len"][idx].to(torch.long) - 1)].float().view(b, f, m),
            }
            return {k: v.to(device) for k, v in out.items()}
        out = {
            "video": t["video"][idx, seg].float(),  # (B, Dv)
            "has_video": t["video_len"][idx] > 0,
            "text": t["text"][idx].float(),  # (B, T, Dt)
            "text_mask": lengths_mask("text"),
            "candidate": t["candidate"][idx].float(),  # (B, Sc, Dm)
            "candidate_mask": lengths_mask("candidate"),
            "target_pooled": t["target"][idx, seg.clamp(max=t["target_len"][idx].to(torch.long) - 1)].float(),  # (B, Dm)
        }
        return {k: v.to(device) for k, v in out.items()}

    def clip_lengths(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Segments each quartet's video and target share (video segment j is target segment j).  # (N,)

        0 for a quartet without video (music-only caches).
        """
        t = self.tensors
        vlen, tlen = t["video_len"].to(torch.long), t["target_len"].to(torch.long)
        n = torch.minimum(vlen, tlen)
        return n if idx is None else n[idx]

    def clip_batch(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Whole clips of quartets `idx` for the two-tower retriever (engine/retriever.py).

        {"video": (B, S, Dv), "video_mask": (B, S), "target": (B, S, Dm), "target_mask": (B, S)}: the
        segments both the video and its own soundtrack have, the same mask on both sides.
        """
        if self.spec.music_input == MUSIC_LOG_MELS:
            raise ValueError("the two-tower retriever reads cached music features; this is a log-mel cache")
        t = self.tensors
        n = self.clip_lengths(idx)
        if (n == 0).any():
            raise ValueError(f"{int((n == 0).sum())} of the {len(idx)} quartets have no video: the two-tower retriever needs (video, soundtrack) pairs")
        s = t["video"].shape[1]
        mask = torch.arange(s)[None, :] < n[:, None]  # (B, S)
        out = {
            "video": t["video"][idx].float(),  # (B, S, Dv)
            "video_mask": mask,
            "target": t["target"][idx, :s].float(),  # (B, S, Dm)
            "target_mask": mask,
        }
        return {k: v.to(device) for k, v in out.items()}


def write_synthetic_features(
    root: str | Path,
    n: int,
    spec: FeatureSpec,
    *,
    seed: int = 0,
    latent_dim: int = 16,
    noise: float = 0.5,
    shard_size: int = DEFAULT_SHARD_SIZE,
    n_text_tokens: int = 8,
) -> FeatureDataset:
    """A cache with a planted relation (test instrument, module docstring); returns it loaded.

    Each quartet has a latent z (latent_dim); segment j's latent is z + 0.3 noise; its video is a
    fixed linear map of it plus `noise`, its target music another fixed map plus `noise`. The
    candidate is another quartet's target; the prompt's tokens carry (z_target - z_candidate).
    """
    g = np.random.default_rng(seed)
    s = spec.max_segments
    wv = g.standard_normal((latent_dim, spec.video_dim)) / np.sqrt(latent_dim)
    wm = g.standard_normal((latent_dim, spec.target_music_dim)) / np.sqrt(latent_dim)
    wc = g.standard_normal((latent_dim, spec.music_dim)) / np.sqrt(latent_dim)
    wt = g.standard_normal((latent_dim, spec.text_dim)) / np.sqrt(latent_dim)
    z = g.standard_normal((n, latent_dim))
    seg_z = z[:, None, :] + 0.3 * g.standard_normal((n, s, latent_dim))  # (N, S, k)
    cand = (np.arange(n) + 1 + g.integers(0, max(n - 1, 1), n)) % n  # never the quartet itself (n > 1)
    writer = FeatureShardWriter(root, spec, shard_size=shard_size)
    for i in range(n):
        c = cand[i]
        video = seg_z[i] @ wv + noise * g.standard_normal((s, spec.video_dim))
        target = seg_z[i] @ wm + noise * g.standard_normal((s, spec.target_music_dim))
        candidate = seg_z[c, : spec.max_candidate_segments] @ wc + noise * g.standard_normal((min(s, spec.max_candidate_segments), spec.music_dim))
        text = np.tile((z[i] - z[c]) @ wt, (n_text_tokens, 1)) + noise * g.standard_normal((n_text_tokens, spec.text_dim))
        writer.add(FeatureItem(id=f"syn-{i:06d}", target=target, video=video, candidate=candidate, text=text))
    writer.close()
    return FeatureDataset(root)


def random_pools(n: int, pool_size: int, *, seed: int = 0, keep_remainder: bool = False) -> list[list[int]]:
    """Random, seeded, non-overlapping pools of `pool_size` indices of range(n) (paper 3 and 5).

    The paper: "randomly create non-overlapping music pools using test data, each containing 500
    tracks" (evaluation) and candidates drawn from pools of 2,000 (data). A seeded permutation of
    range(n) is cut into consecutive pools; each pool is sorted. The remainder (n mod pool_size)
    is dropped, as evaluation needs pools of one size; with `keep_remainder` (data build: every
    clip needs a candidate) it is a last, smaller pool, merged into the one before it when it
    holds a single index (a pool of one has no candidate). Fewer than `pool_size` in all: one pool
    of every index.
    """
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    if n <= pool_size:
        return [list(range(n))] if n else []
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    pools = [sorted(perm[i : i + pool_size]) for i in range(0, n - pool_size + 1, pool_size)]
    rest = perm[len(pools) * pool_size :]
    if keep_remainder and rest:
        if len(rest) == 1:
            pools[-1] = sorted(pools[-1] + rest)
        else:
            pools.append(sorted(rest))
    return pools

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

On disk: a directory with `manifest.json` and shard folders `shard-00000/`, ... Each shard holds
one `.npy` file per array, padded to the spec's maxima, plus a length per item (`video_len.npy`
...), in float16 (half the disk and memory; the encoders' features and log-mels are well inside
its range); it is written to a temporary folder then renamed. The manifest is rewritten after each
shard, and lists the ids each shard holds, so an interrupted extraction resumes where the last
complete shard ended (`FeatureShardWriter.done_ids`). A shard holds at most `shard_size` quartets
and, by default, about SHARD_BYTES of arrays (the writer fills one shard in memory at a time).
Caches of format 1 (one `shard-00000.npz` per shard) are still read, into memory.

`FeatureDataset` memory-maps the shards' arrays (`np.load(mmap_mode="r")`): an epoch reads the rows
of each batch from disk (through the page cache) instead of holding the cache in RAM, which the
log-mel caches need (the paper's 88k quartets of twelve 1024 x 128 float16 log-mels are ~290 GB).
The lengths are small and kept in memory. `FeatureDataset(root, mmap=False)` loads everything
instead. Batches are indexed tensors, no DataLoader workers are needed.

With `FeatureSpec.music_input == "log_mels"` (the trained AST towers, engine/music_towers.py) the
music arrays hold AST's log-mel inputs instead, each 10 s sample flattened to one row of
mel_frames x mel_bins float16 values: the target's segments, and one 10 s candidate clip; batches
hand them to `TowerRecommender` as `target_mels` / `candidate_mels` (B, frames, mel bins).

`write_synthetic_features` writes a dataset with a planted video <-> music relation (a shared
latent per quartet) for the tests and the benchmark: it is a test instrument, never training data.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from storage.files import write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: a folder of .npy files per shard (memory-mappable); 1: one .npz per shard
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
MAX_SEGMENTS = 12  # 120 s clip / 10 s segments (paper section 3)
MAX_TEXT_TOKENS = 77  # prompt tokens kept: CLIP's whole context (paper 4.1, the CLIP text encoder's tokens)
DEFAULT_SHARD_SIZE = 1024  # quartets per shard, at most
SHARD_BYTES = 256 * 2**20  # bytes of arrays per shard, about (the writer holds one shard in memory)
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

    @property
    def item_bytes(self) -> int:
        """Bytes one quartet takes on disk (its padded arrays in float16, and the lengths)."""
        itemsize = np.dtype(STORE_DTYPE).itemsize
        return sum(rows * dim * itemsize + 4 for rows, dim in map(self.shape, ARRAYS))

    def default_shard_size(self) -> int:
        """Quartets per shard: DEFAULT_SHARD_SIZE, fewer when they would pass SHARD_BYTES (log-mels)."""
        return max(1, min(DEFAULT_SHARD_SIZE, SHARD_BYTES // self.item_bytes))


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
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise FeatureCacheError(f"{path} has format_version {meta.get('format_version')!r}, expected one of {READABLE_VERSIONS}")
    return meta


class FeatureShardWriter:
    """Append quartet features to a cache directory, a shard at a time; resumable (module docstring).

    `shard_size`: quartets per shard (None: `spec.default_shard_size()`). Items are copied into
    the shard's float16 arrays as they are added, so the writer holds one shard, never more.
    """

    def __init__(self, root: str | Path, spec: FeatureSpec, shard_size: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.shard_size = spec.default_shard_size() if shard_size is None else int(shard_size)
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self._buffers: dict[str, np.ndarray] = {}  # the shard being filled: (shard_size, rows, dim) and lengths
        self._pending_ids: list[str] = []
        self.build: dict = {}  # how the quartets were made (`record_build`), kept in the manifest
        self._complete = False
        if (self.root / MANIFEST).is_file():
            meta = read_manifest(self.root)
            if meta["spec"] != asdict(spec):
                new = asdict(spec)
                changed = [k for k in sorted(set(new) | set(meta["spec"])) if meta["spec"].get(k) != new.get(k)]
                was = ", ".join(f"{k}={meta['spec'].get(k)!r}" for k in changed)
                now = ", ".join(f"{k}={new.get(k)!r}" for k in changed)
                raise FeatureCacheError(f"feature cache {self.root} was written with {was}; this run's would have {now}")
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
        """Copy one quartet into the current shard (written when full); ids already there are skipped."""
        if item.id in self.done_ids or item.id in self._pending_ids:
            return
        rows_of: dict[str, tuple[np.ndarray, int]] = {}
        for name in ARRAYS:  # check everything before touching the buffers
            x = getattr(item, name)
            if x is None:
                continue
            x = np.asarray(x)
            rows, dim = self.spec.shape(name)
            if x.ndim != 2 or x.shape[1] != dim:
                raise FeatureCacheError(f"{item.id}: {name} must be (*, {dim}), got {x.shape}")
            rows_of[name] = (x, min(rows, x.shape[0]))
        if rows_of.get("target", (None, 0))[1] == 0:
            raise FeatureCacheError(f"{item.id}: every quartet needs target music features")
        if not self._buffers:
            for name in ARRAYS:
                self._buffers[name] = np.zeros((self.shard_size, *self.spec.shape(name)), dtype=STORE_DTYPE)
                self._buffers[f"{name}_len"] = np.zeros(self.shard_size, dtype=np.int32)
        i = len(self._pending_ids)
        for name, (x, k) in rows_of.items():
            self._buffers[name][i, :k] = x[:k]
            self._buffers[f"{name}_len"][i] = k
        self._pending_ids.append(item.id)
        if len(self._pending_ids) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending items as one shard (a folder of .npy files) and record it in the manifest."""
        if not self._pending_ids:
            return
        ids, n = self._pending_ids, len(self._pending_ids)
        buffers, self._buffers, self._pending_ids = self._buffers, {}, []
        name = f"shard-{len(self.shards):05d}"
        final, tmp = self.root / name, self.root / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted flush
        shutil.rmtree(final, ignore_errors=True)  # written but not in the manifest: not part of the cache
        tmp.mkdir()
        for key, array in buffers.items():
            np.save(tmp / f"{key}.npy", array[:n])
        tmp.replace(final)
        del buffers
        self.shards.append({"file": name, "n": n, "ids": ids})
        self.done_ids.update(ids)
        self._write_manifest(complete=False)
        log.info("feature cache %s: wrote %s (%d quartets, %d in all)", self.root, name, n, len(self.done_ids))

    def close(self) -> None:
        """Flush and mark the cache complete."""
        self.flush()
        self._write_manifest(complete=True)


class ShardedArray:
    """Several shards' arrays (memory-mapped or not) as one, indexed along the first axis on demand.

    `x[key]` reads only the rows `key` names and returns a torch tensor, with torch's indexing rules
    for what the training and evaluation code uses: an int, a slice or an index tensor first, then
    ints, slices, or an index tensor paired element-wise with the first (`x[idx, seg]`). `select`
    is a lazy subset (a train/test split reads nothing).
    """

    def __init__(self, parts: Sequence[np.ndarray], rows: np.ndarray | None = None) -> None:
        if not parts:
            raise ValueError("a ShardedArray needs at least one part")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # (P + 1,)
        self.rows = rows  # logical -> physical row, or None: all rows in order
        n = len(rows) if rows is not None else int(self.offsets[-1])
        self.shape = torch.Size((n, *self.parts[0].shape[1:]))
        self.dtype = torch.from_numpy(np.zeros(0, dtype=self.parts[0].dtype)).dtype

    def __len__(self) -> int:
        return self.shape[0]

    def _physical(self, logical: np.ndarray) -> np.ndarray:
        return logical if self.rows is None else self.rows[logical]

    def select(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> ShardedArray:
        """The rows `indices` as another ShardedArray (nothing is read)."""
        idx = np.asarray(torch.as_tensor(indices, dtype=torch.long).numpy(), dtype=np.int64)
        idx = np.where(idx < 0, idx + len(self), idx)
        if ((idx < 0) | (idx >= len(self))).any():
            raise IndexError(f"index out of range for {len(self)} rows")
        return ShardedArray(self.parts, self._physical(idx))

    def __getitem__(self, key: object) -> torch.Tensor:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        scalar = isinstance(first, (int, np.integer)) or (isinstance(first, (torch.Tensor, np.ndarray)) and first.ndim == 0)
        if isinstance(first, slice):
            logical = np.arange(len(self))[first]
        else:
            logical = np.asarray(torch.as_tensor(first, dtype=torch.long).numpy(), dtype=np.int64).reshape(-1)
        logical = np.where(logical < 0, logical + len(self), logical)
        if ((logical < 0) | (logical >= len(self))).any():
            raise IndexError(f"index out of range for {len(self)} rows")
        paired = [isinstance(r, list) or (isinstance(r, (torch.Tensor, np.ndarray)) and r.ndim > 0) for r in rest]
        rest = tuple(int(r) if isinstance(r, (torch.Tensor, np.ndarray)) and r.ndim == 0 else r for r in rest)
        rest_np = [np.asarray(torch.as_tensor(r).numpy()).reshape(-1) if p else r for r, p in zip(rest, paired, strict=True)]
        phys = self._physical(logical)
        shard = np.searchsorted(self.offsets, phys, side="right") - 1  # (n,)
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        for sid in np.unique(shard) if len(phys) else [0]:
            at = np.flatnonzero(shard == sid)
            sub = (phys[at] - self.offsets[sid], *(r[at] if p else r for r, p in zip(rest_np, paired, strict=True)))
            pieces.append((at, np.asarray(self.parts[sid][sub])))
        out = np.empty((len(phys), *pieces[0][1].shape[1:]), dtype=pieces[0][1].dtype)
        for at, piece in pieces:
            out[at] = piece
        return torch.from_numpy(out[0] if scalar else out)


def _load_shard(path: Path, mmap: bool) -> dict[str, np.ndarray]:
    """A shard's arrays: a folder of .npy files (memory-mapped when `mmap`) or a format-1 .npz (in memory)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    if not path.is_dir():
        raise FeatureCacheError(f"feature cache shard {path} is missing")
    arrays = {}
    for name in ARRAYS:
        for key in (name, f"{name}_len"):
            file = path / f"{key}.npy"
            if not file.is_file():
                raise FeatureCacheError(f"feature cache shard {path} lacks {file.name}")
            small = key.endswith("_len")
            arrays[key] = np.load(file, mmap_mode="r" if mmap and not small else None, allow_pickle=False)
    return arrays


class FeatureDataset:
    """A feature cache's quartets: padded float16 arrays (memory-mapped by default) + lengths in memory.

    `tensors[name]` for name in ARRAYS is a `ShardedArray` (or a tensor, for `from_tensors`);
    `tensors[name + "_len"]` an int32 tensor. Both index alike: `t["target"][idx]` -> (B, S, Dm).
    """

    def __init__(self, root: str | Path, *, require_complete: bool = True, mmap: bool = True) -> None:
        self.root = Path(root)
        meta = read_manifest(self.root)
        if require_complete and not meta.get("complete"):
            raise FeatureCacheError(f"feature cache {self.root} is incomplete: finish (resume) its extraction first")
        self.spec = FeatureSpec(**meta["spec"])
        parts: dict[str, list[np.ndarray]] = {}
        self.ids: list[str] = []
        for shard in meta["shards"]:
            for key, array in _load_shard(self.root / shard["file"], mmap).items():
                parts.setdefault(key, []).append(array)
            self.ids.extend(shard["ids"])
        if not self.ids:
            raise FeatureCacheError(f"feature cache {self.root} holds no quartets")
        self.tensors: dict[str, torch.Tensor | ShardedArray] = {}
        for key, arrays in parts.items():
            if key.endswith("_len"):
                self.tensors[key] = torch.from_numpy(np.concatenate(arrays))
            elif mmap:
                self.tensors[key] = ShardedArray(arrays)
            else:
                self.tensors[key] = torch.from_numpy(np.concatenate(arrays))

    @classmethod
    def from_tensors(
        cls, spec: FeatureSpec, ids: list[str], tensors: dict[str, torch.Tensor | ShardedArray], root: str | Path = "."
    ) -> FeatureDataset:
        """A dataset of these arrays; `root`: the cache folder they come from, if any."""
        ds = cls.__new__(cls)
        ds.root, ds.spec, ds.ids, ds.tensors = Path(root), spec, ids, tensors
        return ds

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> FeatureDataset:
        """The quartets `indices`; memory-mapped arrays stay on disk (`ShardedArray.select`)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        tensors = {k: v.select(idx) if isinstance(v, ShardedArray) else v[idx] for k, v in self.tensors.items()}
        return FeatureDataset.from_tensors(self.spec, [self.ids[i] for i in idx.tolist()], tensors, root=self.root)

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
            raise ValueError("the two-tower retriever reads pooled music features; this is a log-mel cache "
                             "(training.pooled.pooled_clips reads a log-mel build's pooled vectors)")
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

"""musicnn's VGG taggers in PyTorch: an independent judge of tags (benchmarks/bench_steering.py).

The PyPI `musicnn` package (J. Pons and X. Serra, ISMIR 2019 LBD; ISC licence, (c) 2019 Jordi
Pons) ships, beside the musicnn models the lite profile uses (engine/encoders/musicnn.py), two
VGG-like baselines trained on the same datasets: `MTT_vgg` (MagnaTagATune, 50 tags) and
`MSD_vgg` (Million Song Dataset, 50 tags). They are a different network (five 3x3 convolution
blocks over the log-mel image, no musically shaped filters, no penultimate dense layer) with
their own weights, so their tags are a second opinion the engine never reads. Nothing in the
recommender uses this file: it lets a benchmark judge "did the pick move the way the user asked"
with a tagger other than the one steering moves along.

Network (the package's `models.py`, `vgg(x, is_training, num_classes, 128)`), per 3 s patch of
187 frames x 96 mel bands, NHWC in TF:
- batch norm of the input (1 channel);
- five blocks of conv 3x3 "same" (128 filters) -> ReLU -> batch norm -> max pool, pools
  (4, 1) stride 2 | (2, 2) s 2 | (2, 2) s 2 | (2, 2) s 2 | (4, 4) s 4, "valid":
  187x96 -> 92x48 -> 46x24 -> 23x12 -> 11x6 -> 2x1;
- flatten in TF's (H, W, C) order (256) -> dense 50 (logits).
Input: the same float32 log-mel as musicnn (engine/melspec.py: log10(1 + 10000 x) computed in
float32; the package's own float16 cast overflows on ordinary music).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.encoders.musicnn import (
    MSD_LABELS,
    MSD_PREFIX,
    MTT_LABELS,
    MTT_PREFIX,
    TF_BN_EPSILON,
    FrozenBatchNorm,
    _copy,
    musicnn_package_dir,
)
from engine.encoders.tf_checkpoint import read_tf_checkpoint
from engine.melspec import N_MELS, PATCH_FRAMES, musicnn_log_mel, patches

log = logging.getLogger(__name__)

VGG_FILTERS = 128  # `define_model`: vgg(..., 128) for both MTT_vgg and MSD_vgg
VGG_POOLS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((4, 4), (4, 4)),
)  # (pool size, stride) per block, (time, frequency)
BATCH_PATCHES = 8  # patches per forward pass


@dataclass(frozen=True)
class VggConfig:
    name: str  # checkpoint folder inside the musicnn package
    labels: tuple[str, ...]
    filters: int = VGG_FILTERS
    n_frames: int = PATCH_FRAMES
    n_mels: int = N_MELS

    @property
    def flat_features(self) -> int:
        h, w = self.n_frames, self.n_mels
        for (ph, pw), (sh, sw) in VGG_POOLS:
            h, w = (h - ph) // sh + 1, (w - pw) // sw + 1
        return h * w * self.filters  # 2 * 1 * 128 = 256


VGG_CONFIGS = {
    "MTT_vgg": VggConfig(name="MTT_vgg", labels=MTT_LABELS),
    "MSD_vgg": VggConfig(name="MSD_vgg", labels=MSD_LABELS),
}


class MusicnnVgg(nn.Module):
    """The VGG tagger: (B, 187, 96) log-mel patches -> (B, 50) logits."""

    def __init__(self, cfg: VggConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_bn = FrozenBatchNorm(1, TF_BN_EPSILON)
        chans = [1] + [cfg.filters] * len(VGG_POOLS)
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(len(VGG_POOLS)))
        self.bns = nn.ModuleList(FrozenBatchNorm(cfg.filters, TF_BN_EPSILON) for _ in VGG_POOLS)
        self.dense = nn.Linear(cfg.flat_features, len(cfg.labels))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(log_mel.unsqueeze(1))  # (B, 1, T, M)
        for conv, bn, (pool, stride) in zip(self.convs, self.bns, VGG_POOLS, strict=True):
            x = F.max_pool2d(bn(F.relu(conv(x))), pool, stride)  # (B, C, T', M')
        flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TF flattens NHWC: (B, H*W*C)
        return self.dense(flat)  # (B, 50)


@torch.no_grad()
def load_vgg_weights(model: MusicnnVgg, tensors: dict[str, np.ndarray]) -> None:
    """Copy an MTT_vgg / MSD_vgg TF checkpoint into `model`; every variable must be used."""
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise KeyError(f"variable {name!r} missing from the checkpoint")
        used.add(name)
        return tensors[name]

    for i, conv in enumerate(model.convs):
        _copy(conv.weight, take(f"{i + 1}CNN/kernel").transpose(3, 2, 0, 1), f"{i + 1}CNN")  # HWIO -> OIHW
        _copy(conv.bias, take(f"{i + 1}CNN/bias"), f"{i + 1}CNN")
    for i, bn in enumerate([model.input_bn, *model.bns]):
        name = "batch_normalization" if i == 0 else f"batch_normalization_{i}"
        for field in ("gamma", "beta", "moving_mean", "moving_variance"):
            _copy(getattr(bn, field), take(f"{name}/{field}"), f"{name}/{field}")
    _copy(model.dense.weight, take("dense/kernel").T, "dense")
    _copy(model.dense.bias, take("dense/bias"), "dense")
    optimizer_state = {n for n in tensors if "/Adam" in n or n in ("beta1_power", "beta2_power")}
    unused = set(tensors) - used - optimizer_state
    if unused:
        raise ValueError(f"checkpoint variables not used by the model: {sorted(unused)}")


def load_vgg(name: str, package_dir: str | Path | None = None) -> MusicnnVgg:
    """Build "MTT_vgg" or "MSD_vgg" and load its weights from the musicnn package."""
    if name not in VGG_CONFIGS:
        raise ValueError(f"unknown musicnn VGG model {name!r}; expected one of {sorted(VGG_CONFIGS)}")
    root = Path(package_dir) if package_dir is not None else musicnn_package_dir()
    model = MusicnnVgg(VGG_CONFIGS[name])
    load_vgg_weights(model, read_tf_checkpoint(f"{root / name}/"))
    log.info("loaded musicnn %s from %s", name, root)
    return model.eval().requires_grad_(False)


class VggTagger:
    """MTT_vgg + MSD_vgg tags of 16 kHz mono audio: {"mtt:<tag>": p, "msd:<tag>": p}, p averaged over 3 s patches."""

    def __init__(self, package_dir: str | Path | None = None) -> None:
        self.mtt = load_vgg("MTT_vgg", package_dir)
        self.msd = load_vgg("MSD_vgg", package_dir)
        self.tag_names = [MTT_PREFIX + t for t in MTT_LABELS] + [MSD_PREFIX + t for t in MSD_LABELS]

    def tag_patches(self, log_mel_patches: np.ndarray) -> np.ndarray:
        """(P, 187, 96) -> per-patch tag probabilities.  # (P, 100)"""
        out = []
        with torch.inference_mode():
            for start in range(0, len(log_mel_patches), BATCH_PATCHES):
                x = torch.from_numpy(np.ascontiguousarray(log_mel_patches[start : start + BATCH_PATCHES], dtype=np.float32))
                out.append(torch.sigmoid(torch.cat([self.mtt(x), self.msd(x)], dim=1)).numpy())  # (b, 100)
        return np.concatenate(out)

    def tags(self, audio: np.ndarray) -> dict[str, float]:
        """Mean tag probabilities over the clip's patches (shorter than 3 s: repeated to fill one)."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"expected non-empty mono audio (N,), got shape {audio.shape}")
        probs = self.tag_patches(patches(musicnn_log_mel(audio))).mean(axis=0)  # (100,)
        return dict(zip(self.tag_names, map(float, probs), strict=True))

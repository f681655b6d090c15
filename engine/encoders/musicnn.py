"""musicnn in PyTorch: the lite profile's music encoder and auto-tagger (DESIGN.md, "Model profiles").

musicnn (J. Pons and X. Serra, "musicnn: pre-trained convolutional neural networks for music
audio tagging", ISMIR 2019 LBD; https://github.com/jordipons/musicnn, ISC licence,
(c) 2019 Jordi Pons) ships its MagnaTagATune (MTT) and Million Song Dataset (MSD) models on PyPI
as TensorFlow 1 checkpoints. This file re-implements the network of the package's `models.py`
(`build_musicnn`) and loads those checkpoints with `engine.encoders.tf_checkpoint`, so neither
TensorFlow nor a network connection is needed.

Where it sits in MuseChat: the paper's music encoders g_mc / g_mt are AST on log-mel input
(section 4.1); in the lite profile musicnn stands in for them. The per-patch penultimate
features of both models (3 s patches) are the music branch's tokens, and their sigmoid
outputs give the catalog's tags: top-5 MTT and top-5 MSD, as the paper's dataset was tagged
(section 3).

Network (per 3 s patch of 187 frames x 96 mel bands):
- front end: batch-normalised input; "timbral" convolutions (7 frames x 38 and x 67 mel bands,
  204 filters) and "temporal" convolutions (128, 64, 32 frames x 1 band, 51 filters), each
  ReLU -> batch norm -> max over frequency; concatenated to 561 channels per frame.
- mid end: three 1-D convolutions over time (7 frames, 64 filters) with residual connections;
  dense concatenation of front end and mid-end outputs -> 753 channels per frame.
- back end: max and mean over time (interleaved as TF flattens them), batch norm, dense 200 +
  ReLU + batch norm (the "penultimate" features), dense 50 (logits).
Batch norm runs in inference mode with the checkpoint's moving statistics (TF epsilon 1e-3).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.encoders.base import MusicEmbedding, MusicEncoder
from engine.encoders.tf_checkpoint import read_tf_checkpoint
from engine.melspec import N_MELS, PATCH_FRAMES, SAMPLE_RATE, musicnn_log_mel, patches

log = logging.getLogger(__name__)

TF_BN_EPSILON = 1e-3  # tf.compat.v1.layers.batch_normalization's default
# Patches per forward pass. Small batches keep the timbral conv outputs (~10 MB per patch) in
# cache: on 2 CPU cores a 120 s clip took ~1.9 s at 2 patches per pass and ~5 s or more at 8.
DEFAULT_BATCH_PATCHES = 2
TOP_K_TAGS = 5  # tags kept per vocabulary, as the paper's dataset did (section 3)

# musicnn/configuration.py, in the models' output order
MTT_LABELS: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)  # fmt: skip
MSD_LABELS: tuple[str, ...] = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill",
    "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental",
    "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy",
    "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop",
    "sad", "House", "happy",
)  # fmt: skip
MTT_PREFIX = "mtt:"
MSD_PREFIX = "msd:"


@dataclass(frozen=True)
class MusicnnConfig:
    name: str  # checkpoint folder inside the musicnn package, e.g. "MTT_musicnn"
    labels: tuple[str, ...]
    n_mels: int = N_MELS
    n_frames: int = PATCH_FRAMES  # 3 s at 16 kHz, hop 256
    frontend_scale: float = 1.6  # `num_filt`: timbral filters = int(1.6 * 128), temporal int(1.6 * 32)
    timbral_kernels: tuple[tuple[int, float], ...] = ((7, 0.4), (7, 0.7))  # (frames, fraction of mel bands)
    temporal_kernels: tuple[int, ...] = (128, 64, 32)  # frames
    midend_filters: int = 64
    midend_kernel: int = 7  # frames
    backend_units: int = 200  # size of the penultimate features
    bn_eps: float = TF_BN_EPSILON

    @property
    def timbral_filters(self) -> int:
        return int(self.frontend_scale * 128)

    @property
    def temporal_filters(self) -> int:
        return int(self.frontend_scale * 32)

    @property
    def frontend_channels(self) -> int:
        timbral = len(self.timbral_kernels) * self.timbral_filters
        return timbral + len(self.temporal_kernels) * self.temporal_filters

    @property
    def midend_channels(self) -> int:
        return self.frontend_channels + 3 * self.midend_filters  # dense connection of all mid-end outputs


MUSICNN_CONFIGS: dict[str, MusicnnConfig] = {
    "MTT_musicnn": MusicnnConfig(name="MTT_musicnn", labels=MTT_LABELS),
    "MSD_musicnn": MusicnnConfig(name="MSD_musicnn", labels=MSD_LABELS),
}


class FrozenBatchNorm(nn.Module):
    """Inference-mode batch norm over dimension `dim` with TF's (gamma, beta, moving stats)."""

    def __init__(self, num_features: int, eps: float, dim: int = 1) -> None:
        super().__init__()
        self.eps = eps
        self.dim = dim
        self.register_buffer("gamma", torch.ones(num_features))
        self.register_buffer("beta", torch.zeros(num_features))
        self.register_buffer("moving_mean", torch.zeros(num_features))
        self.register_buffer("moving_variance", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gamma * torch.rsqrt(self.moving_variance + self.eps)
        shift = self.beta - self.moving_mean * scale
        view = [1] * x.dim()
        view[self.dim] = -1
        return x * scale.view(view) + shift.view(view)


def _conv_relu_bn_max_over_frequency(conv: nn.Conv2d, bn: FrozenBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """max over frequency of bn(relu(conv(x))), reducing before the element-wise work.

    ReLU and the BN affine map are monotone per channel, so they commute with the max: increasing
    where the BN scale (sign of gamma) is positive, decreasing where it is negative (then the max
    of BN is BN of the min, and min z = -max(-z): the conv runs with those channels negated).
    Same result as models.py, without three passes over the (B, C, T, M) conv output.
    """
    sign = torch.where(bn.gamma < 0, -1.0, 1.0)  # (C,)
    z = F.conv2d(x, conv.weight * sign.view(-1, 1, 1, 1), conv.bias * sign)  # (B, C, T, M')
    extreme = z.amax(dim=3) * sign.view(1, -1, 1)  # (B, C, T): max (or min) over frequency of conv(x)
    return bn(F.relu(extreme))  # (B, C, T)


class TimbralBlock(nn.Module):
    """Conv over (7 frames x a fraction of the mel bands), ReLU, BN, max over frequency."""

    def __init__(self, filters: int, frames: int, bands: int, eps: float) -> None:
        super().__init__()
        self.frames = frames
        self.conv = nn.Conv2d(1, filters, kernel_size=(frames, bands))
        self.bn = FrozenBatchNorm(filters, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, T, M)
        pad = (self.frames - 1) // 2  # models.py pads time by 3 on both sides, 'valid' in frequency
        x = F.pad(x, (0, 0, pad, pad))  # (B, 1, T + 6, M)
        return _conv_relu_bn_max_over_frequency(self.conv, self.bn, x)  # (B, C, T)


class TemporalBlock(nn.Module):
    """Conv over (`frames` frames x 1 band) with TF 'same' padding, ReLU, BN, max over frequency."""

    def __init__(self, filters: int, frames: int, eps: float) -> None:
        super().__init__()
        self.frames = frames
        self.conv = nn.Conv2d(1, filters, kernel_size=(frames, 1))
        self.bn = FrozenBatchNorm(filters, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, T, M)
        before = (self.frames - 1) // 2  # TF 'same' puts the odd extra pad frame after
        x = F.pad(x, (0, 0, before, self.frames - 1 - before))  # (B, 1, T + frames - 1, M)
        return _conv_relu_bn_max_over_frequency(self.conv, self.bn, x)  # (B, C, T)


class MidendLayer(nn.Module):
    """Conv over time spanning all input channels ('valid' after a 3-frame pad), ReLU, BN."""

    def __init__(self, in_channels: int, filters: int, frames: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, filters, kernel_size=frames, padding=(frames - 1) // 2)
        self.bn = FrozenBatchNorm(filters, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C_in, T)
        return self.bn(F.relu(self.conv(x)))  # (B, filters, T)


class Musicnn(nn.Module):
    """musicnn (`build_musicnn` in musicnn/models.py): log-mel patches -> (logits, penultimate)."""

    def __init__(self, cfg: MusicnnConfig) -> None:
        super().__init__()
        self.cfg = cfg
        eps = cfg.bn_eps
        self.input_bn = FrozenBatchNorm(1, eps)
        self.timbral = nn.ModuleList(
            TimbralBlock(cfg.timbral_filters, frames, int(fraction * cfg.n_mels), eps)
            for frames, fraction in cfg.timbral_kernels
        )
        self.temporal = nn.ModuleList(
            TemporalBlock(cfg.temporal_filters, frames, eps) for frames in cfg.temporal_kernels
        )
        self.midend = nn.ModuleList(
            [
                MidendLayer(cfg.frontend_channels, cfg.midend_filters, cfg.midend_kernel, eps),
                MidendLayer(cfg.midend_filters, cfg.midend_filters, cfg.midend_kernel, eps),
                MidendLayer(cfg.midend_filters, cfg.midend_filters, cfg.midend_kernel, eps),
            ]
        )
        self.pool_bn = FrozenBatchNorm(2 * cfg.midend_channels, eps)
        self.dense = nn.Linear(2 * cfg.midend_channels, cfg.backend_units)
        self.dense_bn = FrozenBatchNorm(cfg.backend_units, eps)
        self.classifier = nn.Linear(cfg.backend_units, len(cfg.labels))

    def forward(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log_mel (B, T, M) -> logits (B, n_labels), penultimate features (B, backend_units)."""
        x = self.input_bn(log_mel.unsqueeze(1))  # (B, 1, T, M)
        front = [block(x) for block in self.timbral] + [block(x) for block in self.temporal]
        front_cat = torch.cat(front, dim=1)  # (B, 561, T)
        m1 = self.midend[0](front_cat)  # (B, 64, T)
        m2 = self.midend[1](m1) + m1  # (B, 64, T)
        m3 = self.midend[2](m2) + m2  # (B, 64, T)
        features = torch.cat([front_cat, m1, m2, m3], dim=1)  # (B, 753, T)
        # TF concatenates max and mean on a trailing axis and flattens: max_0, mean_0, max_1, ...
        pooled = torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)  # (B, 1506)
        hidden = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))  # (B, 200)
        return self.classifier(hidden), hidden


# TF variable names in graph-construction order (models.py): conv2d, conv2d_1, ... and
# batch_normalization, batch_normalization_1, ...
def _tf_layer_order(model: Musicnn) -> tuple[list[nn.Module], list[FrozenBatchNorm], list[nn.Linear]]:
    convs: list[nn.Module] = []
    bns: list[FrozenBatchNorm] = [model.input_bn]
    for block in [*model.timbral, *model.temporal, *model.midend]:
        convs.append(block.conv)
        bns.append(block.bn)
    bns += [model.pool_bn, model.dense_bn]
    return convs, bns, [model.dense, model.classifier]


def _tf_name(base: str, index: int) -> str:
    return base if index == 0 else f"{base}_{index}"


def _copy(target: torch.Tensor, value: np.ndarray, name: str) -> None:
    if tuple(target.shape) != value.shape:
        raise ValueError(f"{name}: checkpoint shape {value.shape} != model shape {tuple(target.shape)}")
    target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


@torch.no_grad()
def load_tf_weights(model: Musicnn, tensors: dict[str, np.ndarray]) -> None:
    """Copy a musicnn TF checkpoint's variables into `model` (optimizer slots are ignored)."""
    convs, bns, denses = _tf_layer_order(model)
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise KeyError(f"variable {name!r} missing from the checkpoint")
        used.add(name)
        return tensors[name]

    for i, conv in enumerate(convs):
        name = _tf_name("conv2d", i)
        kernel = take(f"{name}/kernel")  # TF HWIO: (frames, bands, in, out)
        if isinstance(conv, nn.Conv1d):  # (frames, in_channels, 1, out) -> (out, in_channels, frames)
            weight = kernel[:, :, 0, :].transpose(2, 1, 0)
        else:  # -> (out, in, frames, bands)
            weight = kernel.transpose(3, 2, 0, 1)
        _copy(conv.weight, weight, name)
        _copy(conv.bias, take(f"{name}/bias"), name)
    for i, bn in enumerate(bns):
        name = _tf_name("batch_normalization", i)
        for field in ("gamma", "beta", "moving_mean", "moving_variance"):
            _copy(getattr(bn, field), take(f"{name}/{field}"), f"{name}/{field}")
    for i, dense in enumerate(denses):
        name = _tf_name("dense", i)
        _copy(dense.weight, take(f"{name}/kernel").T, name)  # TF (in, out) -> torch (out, in)
        _copy(dense.bias, take(f"{name}/bias"), name)
    optimizer_state = {n for n in tensors if "/Adam" in n or n in ("beta1_power", "beta2_power")}
    unused = set(tensors) - used - optimizer_state
    if unused:
        raise ValueError(f"checkpoint variables not used by the model: {sorted(unused)}")


def musicnn_package_dir() -> Path:
    """Folder of the installed PyPI `musicnn` package (found without importing it: no TF needed)."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the musicnn package is not installed (pip install --no-deps musicnn)")
    return Path(next(iter(spec.submodule_search_locations)))


def load_musicnn(
    name: str, package_dir: str | Path | None = None, device: str | torch.device = "cpu"
) -> Musicnn:
    """Build `name` ("MTT_musicnn" or "MSD_musicnn") and load its weights from the musicnn package."""
    if name not in MUSICNN_CONFIGS:
        raise ValueError(f"unknown musicnn model {name!r}; expected one of {sorted(MUSICNN_CONFIGS)}")
    root = Path(package_dir) if package_dir is not None else musicnn_package_dir()
    model = Musicnn(MUSICNN_CONFIGS[name])
    # musicnn's checkpoint prefix is the folder itself: files "<dir>/.index", "<dir>/.data-..."
    load_tf_weights(model, read_tf_checkpoint(f"{root / name}/"))
    log.info("loaded musicnn %s from %s", name, root)
    return model.to(device).eval().requires_grad_(False)


def top_tags(
    tags: dict[str, float], k: int = TOP_K_TAGS
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Top-k MTT and top-k MSD tags of a `MusicEmbedding.tags` dict, names without their prefix.

    Returns ([("classical", 0.71), ...], [("instrumental", 0.52), ...]), each sorted by
    decreasing probability: the paper's dataset took the top 5 of each vocabulary (section 3).
    """

    def best(prefix: str) -> list[tuple[str, float]]:
        scored = [(name[len(prefix) :], p) for name, p in tags.items() if name.startswith(prefix)]
        return sorted(scored, key=lambda item: item[1], reverse=True)[:k]

    return best(MTT_PREFIX), best(MSD_PREFIX)


class MusicnnEncoder(MusicEncoder):
    """Lite-profile music encoder: musicnn MTT + MSD on 3 s log-mel patches (16 kHz mono).

    `encode(audio)` gives tokens (P, 400) = per-patch [MTT penultimate (200), MSD penultimate
    (200)], pooled (400,) = their mean over patches, and tags = {"mtt:<tag>": p, "msd:<tag>": p}
    with p the sigmoid output averaged over patches (100 tags; names as musicnn spells them).
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        package_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_patches: int = DEFAULT_BATCH_PATCHES,
    ) -> None:
        self.device = torch.device(device)
        self.batch_patches = batch_patches
        self.mtt = load_musicnn("MTT_musicnn", package_dir, self.device)
        self.msd = load_musicnn("MSD_musicnn", package_dir, self.device)
        self.dim = self.mtt.cfg.backend_units + self.msd.cfg.backend_units
        self.tag_names = [MTT_PREFIX + t for t in self.mtt.cfg.labels] + [
            MSD_PREFIX + t for t in self.msd.cfg.labels
        ]

    def embed_patches(self, log_mel_patches: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, 187, 96) log-mel patches -> features (P, dim), tag probabilities (P, 100) on CPU."""
        features, probs = [], []
        with torch.inference_mode():
            for start in range(0, len(log_mel_patches), self.batch_patches):
                chunk = np.ascontiguousarray(log_mel_patches[start : start + self.batch_patches])
                x = torch.from_numpy(chunk).to(self.device, torch.float32)  # (b, 187, 96)
                mtt_logits, mtt_hidden = self.mtt(x)  # (b, 50), (b, 200)
                msd_logits, msd_hidden = self.msd(x)
                features.append(torch.cat([mtt_hidden, msd_hidden], dim=1).cpu())  # (b, 400)
                probs.append(torch.sigmoid(torch.cat([mtt_logits, msd_logits], dim=1)).cpu())  # (b, 100)
        # concatenated outside inference mode: normal tensors, usable as inputs to trained heads
        return torch.cat(features), torch.cat(probs)

    def _embedding(self, tokens: torch.Tensor, probs: torch.Tensor) -> MusicEmbedding:
        mean_probs = probs.mean(dim=0).tolist()  # (100,)
        return MusicEmbedding(
            tokens=tokens,  # (P, 400)
            pooled=tokens.mean(dim=0),  # (400,)
            tags=dict(zip(self.tag_names, mean_probs, strict=True)),
        )

    @staticmethod
    def _patches(audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"expected non-empty mono audio (N,), got shape {audio.shape}")
        return patches(musicnn_log_mel(audio))  # (P, 187, 96)

    def encode(self, audio: np.ndarray) -> MusicEmbedding:
        """Embed and tag 16 kHz mono float32 audio (shorter than 3 s: repeated to fill a patch)."""
        tokens, probs = self.embed_patches(self._patches(audio))
        return self._embedding(tokens, probs)

    def encode_batch(self, clips: list[np.ndarray]) -> list[MusicEmbedding]:
        """Embed several clips, their patches batched together through the networks."""
        if not clips:
            return []
        per_clip = [self._patches(c) for c in clips]
        tokens, probs = self.embed_patches(np.concatenate(per_clip))
        counts = [len(p) for p in per_clip]
        return [
            self._embedding(t, p)
            for t, p in zip(tokens.split(counts), probs.split(counts), strict=True)
        ]

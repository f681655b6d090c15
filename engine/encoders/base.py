"""The three encoder interfaces every model profile implements (DESIGN.md, "Model profiles").

One code path for `paper`, `lite` and `tiny`: the rest of the engine only sees these.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TextTokens:
    states: torch.Tensor  # (B, T, D) unpooled last hidden states (the prompt branch's tokens)
    mask: torch.Tensor  # (B, T) bool, True where a real token stands


@dataclass
class MusicEmbedding:
    tokens: torch.Tensor  # (P, D) one vector per patch/frame: the music branch's tokens
    pooled: torch.Tensor  # (D,) the clip's embedding (mean of patches, or the CLS token)
    tags: dict[str, float] | None  # tag -> probability averaged over the clip; None if untagged


class ImageEncoder(ABC):
    """Frozen image encoder applied per frame (paper 4.1: CLIP ViT-B/32; lite: EfficientNet-Lite0)."""

    dim: int  # output feature size
    input_size: int  # square side in pixels the frames should be scaled to by ffmpeg

    @abstractmethod
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """Embed RGB uint8 frames (N, H, W, 3) -> (N, dim) float32."""

    @abstractmethod
    def labels(self, frames: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """Top-k human-readable labels for the frames (probabilities averaged over frames)."""

    def encode_with_labels(self, frames: np.ndarray, k: int = 5) -> tuple[torch.Tensor, list[tuple[str, float]]]:
        """`encode` and `labels` together; encoders whose labels come from the same forward pass
        override this to run the network once (a video query pays for every frame)."""
        return self.encode(frames), self.labels(frames, k)

    def encode_batch_with_labels(self, batch: Sequence[np.ndarray], k: int = 5) -> list[tuple[torch.Tensor, list[tuple[str, float]]]]:
        """`encode_with_labels` of several frame stacks (one per video) at once: encoders that can
        run them in ONE forward pass override this (a model worker's micro-batches, bot/jobs/batching.py).
        Each result equals `encode_with_labels` of its stack (up to float rounding). Default: one by one."""
        return [self.encode_with_labels(frames, k) for frames in batch]


class TextEncoder(ABC):
    """Frozen text encoder: unpooled token states for fusion, pooled sentence vectors for zero-shot."""

    dim: int

    @abstractmethod
    def encode_tokens(self, texts: list[str]) -> TextTokens:
        """Token states (B, T, dim) and mask (B, T)."""

    @abstractmethod
    def encode_sentences(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised sentence vectors (B, dim)."""


class MusicEncoder(ABC):
    """Music encoder on log-mel features (paper: AST; lite: musicnn MTT + MSD)."""

    dim: int
    sample_rate: int  # Hz of the mono float32 audio `encode` expects
    tag_names: list[str]  # the tag vocabulary (empty if the backbone has no tagger)

    @abstractmethod
    def encode(self, audio: np.ndarray) -> MusicEmbedding:
        """Embed mono float32 audio at `sample_rate` (one segment or a whole clip)."""

    def encode_batch(self, clips: list[np.ndarray]) -> list[MusicEmbedding]:
        """Embed several clips; backbones override this to batch the forward pass."""
        return [self.encode(c) for c in clips]

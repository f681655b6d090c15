"""The turn-1 retriever of MuseChat's dataset: a two-tower video -> music model in the MVPt style (paper 3).

The paper's dataset drew each quartet's candidate music from "a pretrained MVP two-tower
retriever (CLIP image + AST)" among pools of 2,000 that exclude the target (section 3): a
plausible but wrong first pick, which the conversation's second turn then corrects. MVPt (Surís
et al., "It's Time for Artistic Correspondence in Music and Video", CVPR 2022; the paper's
Table 1/2 "MVPt" row) models the long-term temporal context of each modality with a Transformer
per tower and trains them contrastively on (video, own soundtrack) pairs. This file is that model
over the features our caches hold:

- video tower: the clip's per-segment image features (S, Dv) (frames at 5 fps averaged per 10 s
  segment, engine/video.py), projected to d, learned segment-position embeddings added, a learned
  CLS prepended, `n_layers` Transformer encoder layers over the segments -> the CLS output (B, d);
- music tower: the same over the soundtrack's per-segment music features (S, Dm);
- both L2-normalised; ranking by cosine (paper 5), trained with a symmetric InfoNCE (video ->
  music and music -> video, CLIP's form; MVPt's loss is bidirectional too) with a trainable
  temperature initialised at 0.1 (engine/loss.py).

A clip is one sequence (up to twelve 10 s segments of a 120 s clip), so the towers see the whole
clip's temporal context, as MVPt does; padded segments are masked. The retriever sees video only
(turn 1): it has no prompt and no candidate input, which is what the dataset's first pick needs.

Checkpoints use the fusion checkpoint format (engine/checkpoint.py: safetensors + config.json, with
"model": "two_tower"); `training/train_fusion.py --variant two_tower` trains it with the same loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.fusion import D_MODEL, Branch, Projection
from engine.loss import InfoNCELoss

log = logging.getLogger(__name__)

MODEL_KIND = "two_tower"  # the checkpoint's "model" field, and `musechat train --variant two_tower`
MAX_SEGMENTS = 12  # a 120 s clip in 10 s segments (paper 3): the position embeddings' length


@dataclass
class RetrieverConfig:
    profile: str  # model profile the feature sizes come from: paper | lite | tiny
    video_dim: int  # image-encoder feature size (per segment)
    music_dim: int  # music-encoder feature size (per segment)
    d_model: int = D_MODEL  # the shared space
    n_heads: int = 8
    n_layers: int = 2  # temporal Transformer layers per tower
    ff_mult: int = 4  # feed-forward width, x d_model
    dropout: float = 0.1
    max_segments: int = MAX_SEGMENTS  # longest clip, in segments (position embeddings)

    def __post_init__(self) -> None:
        for name in ("video_dim", "music_dim", "d_model", "n_heads", "n_layers", "max_segments"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"dropout must lie in [0, 1], got {self.dropout}")


class TemporalTower(nn.Module):
    """Per-segment features (B, S, D) + mask (B, S) -> one clip vector (B, d), L2-normalised.

    Projection (LayerNorm + linear, as the fusion branches), learned segment positions, a CLS token
    and self-attention layers over the segments (engine/fusion.py `Branch`); the CLS output is the clip.
    """

    def __init__(self, in_dim: int, config: RetrieverConfig) -> None:
        super().__init__()
        c = config
        self.max_segments = c.max_segments
        self.proj = Projection(in_dim, c.d_model)
        self.pos = nn.Parameter(torch.randn(c.max_segments, c.d_model) * 0.02)
        self.branch = Branch(c.d_model, c.n_heads, c.n_layers, c.ff_mult, c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"segment features must be (B, S, D), got {tuple(x.shape)}")
        b, s, _ = x.shape
        if s > self.max_segments:
            raise ValueError(f"{s} segments exceed the tower's {self.max_segments} (RetrieverConfig.max_segments)")
        if mask is None:
            mask = torch.ones(b, s, dtype=torch.bool, device=x.device)
        elif mask.shape != (b, s):
            raise ValueError(f"mask {tuple(mask.shape)} does not fit segments {tuple(x.shape)}")
        mask = mask.to(device=x.device, dtype=torch.bool)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every clip needs at least one segment")
        h = self.proj(x) + self.pos[:s].to(x.dtype)  # (B, S, d)
        seq, seq_mask = self.branch(h, mask)  # (B, 1+S, d)
        return F.normalize(self.branch.summary(seq, seq_mask), dim=-1)  # (B, d)


class TwoTowerRetriever(nn.Module):
    """Video tower + music tower + symmetric InfoNCE (module docstring).

    `encode_video(video, video_mask)` and `encode_music(music, music_mask)` give (B, d) clip
    vectors; `forward(video, video_mask, target, target_mask)` -> {"loss", "query", "music"}, row
    i of the target being clip i's own soundtrack (call the model itself under DDP).
    """

    kind = MODEL_KIND

    def __init__(self, config: RetrieverConfig) -> None:
        super().__init__()
        self.config = config
        self.video = TemporalTower(config.video_dim, config)
        self.music = TemporalTower(config.music_dim, config)
        self.loss = InfoNCELoss(symmetric=True)  # holds the trainable temperature

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Clip-level video vectors: video (B, S, Dv) + mask (B, S) -> (B, d)."""
        return self.video(video, video_mask)

    def encode_music(self, music: torch.Tensor, music_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Clip-level music vectors: music (B, S, Dm) + mask (B, S) -> (B, d)."""
        return self.music(music, music_mask)

    def score(self, video: torch.Tensor, music: torch.Tensor) -> torch.Tensor:
        """Cosine similarities of video clip vectors (B, d) with music clip vectors (N, d).  # (B, N)"""
        return video @ music.T

    def forward(
        self,
        video: torch.Tensor,
        target: torch.Tensor,
        *,
        video_mask: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training step: {"loss": scalar, "query": (B, d) video vectors, "music": (B, d) target vectors}."""
        q = self.encode_video(video, video_mask)
        m = self.encode_music(target, target_mask)
        return {"loss": self.loss(q, m), "query": q, "music": m}

"""InfoNCE contrastive loss with a trainable temperature (paper section 4.1, eq. 3).

The paper trains the fused query x_f against the target-music vector with InfoNCE: for a batch of
B (query, target) pairs, each query must pick its own target among the B targets in the batch,

    L = -1/B * sum_i log( exp(<q_i, m_i> / tau) / sum_j exp(<q_i, m_j> / tau) )

with a trainable temperature tau initialised at 0.1. The paper's loss is one-directional
(query -> music); `symmetric=True` adds the music -> query direction and averages the two (CLIP).

The temperature is stored the CLIP way, as `logit_scale = log(1 / tau)`, so that it stays positive
and its gradient is well scaled, and it is clamped so that tau >= `min_temperature` (0.01): CLIP
clamps at 100 for the same reason, a collapsing temperature makes the logits explode. The clamp
is applied in `forward` (no in-place edit of the parameter, which DDP would not like); past the
clamp the temperature gets no gradient. Keep `logit_scale` out of weight decay in the optimiser,
as open_clip does.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

INIT_TEMPERATURE = 0.1  # paper section 4.1
MIN_TEMPERATURE = 0.01  # clamp: logits are at most 100 x cosine


class InfoNCELoss(nn.Module):
    """InfoNCE between L2-normalised query and music vectors; `forward` returns a scalar.

    `forward(query (B, D), music (M, D))` with M >= B: row i of `music` is the positive of query i,
    rows B..M-1 (if any) are extra negatives shared by every query. Inputs are L2-normalised here
    (idempotent for vectors that already are), so the logits are cosine / tau.
    One-directional query -> music by default, as the paper; `symmetric=True` averages it with the
    music -> query direction (needs M == B).
    """

    def __init__(
        self,
        init_temperature: float = INIT_TEMPERATURE,
        min_temperature: float = MIN_TEMPERATURE,
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < min_temperature <= init_temperature:
            raise ValueError(f"need 0 < min_temperature <= init_temperature, got {min_temperature}, {init_temperature}")
        self.symmetric = symmetric
        self.max_logit_scale = math.log(1.0 / min_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))  # log(1/tau)

    def scale(self) -> torch.Tensor:
        """1 / tau after the clamp, differentiable w.r.t. `logit_scale`.  # ()"""
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()

    @property
    def temperature(self) -> float:
        """The effective temperature tau (after the clamp)."""
        return float(1.0 / self.scale().detach())

    def logits(self, query: torch.Tensor, music: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities, query rows against music rows.  # (B, M)"""
        if query.ndim != 2 or music.ndim != 2 or query.shape[1] != music.shape[1]:
            raise ValueError(f"expected query (B, D) and music (M, D), got {tuple(query.shape)} and {tuple(music.shape)}")
        if music.shape[0] < query.shape[0]:
            raise ValueError(f"need at least one music row per query: {music.shape[0]} < {query.shape[0]}")
        q = F.normalize(query, dim=-1)
        m = F.normalize(music, dim=-1)
        return self.scale() * q @ m.T  # (B, M)

    def one_way(self, query: torch.Tensor, music: torch.Tensor) -> torch.Tensor:
        """The query -> music direction alone, whatever `symmetric` says (M >= B rows).  # ()

        Under DDP with gathered negatives a symmetric loss is the mean of two such calls, each
        rank's rows against every rank's columns (training/train_fusion.py `_gathered_loss`).
        """
        logits = self.logits(query, music)  # (B, M)
        return F.cross_entropy(logits, torch.arange(query.shape[0], device=logits.device))

    def forward(self, query: torch.Tensor, music: torch.Tensor) -> torch.Tensor:
        logits = self.logits(query, music)  # (B, M)
        b = query.shape[0]
        targets = torch.arange(b, device=logits.device)
        loss = F.cross_entropy(logits, targets)
        if self.symmetric:
            if music.shape[0] != b:
                raise ValueError("symmetric InfoNCE needs as many music rows as queries")
            loss = 0.5 * (loss + F.cross_entropy(logits.T, targets))
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4f}, symmetric={self.symmetric}"

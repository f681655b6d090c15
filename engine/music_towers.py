"""The trained music towers of MuseChat: two AST encoders, g_mc and g_mt, around MVT-Fusion (paper 4.1).

Figure 3 of the paper marks only the CLIP encoders frozen; section 4.2 speaks of "the previously
fine-tuned AST Encoder g_mt". So the recommendation module owns two separate AST towers, both
trained with the fusion module:
- g_mc (candidate): a 10 s candidate clip's log-mels -> its output tokens [cls, x_1 .. x_(nm-1)],
  the token sequence x_mc of eq. 1 (AST's distillation token is one of them);
- g_mt (target): the same 10 s of the target music -> the last layer's CLS state, the target's
  vector before the tower head (`MusicTower`).
`TowerRecommender` runs both towers and hands their outputs to `MuseChatRecommender` as the
candidate tokens and the target's pooled vector, so the fusion code is the same one the cached-
feature path uses. `freeze_towers=True` keeps both towers fixed (no gradient, eval mode): a
deviation from the paper, named as such, for runs that cannot afford training them.

The reasoner's music input (paper 4.2) is `mean_tokens`: the mean of ALL output tokens of the
fine-tuned g_mt, frozen by then.

Inputs are AST's log-mel filter banks (`AstMusicEncoder.log_mels`: (frames, mel bins), 1024 x 128
for the paper's AST, 10.24 s), which a training cache keeps in float16.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.fusion import FusionConfig, MuseChatRecommender
from engine.loss import InfoNCELoss

TOWERS_FILE = "towers.safetensors"  # g_mc.* and g_mt.* weights, beside the fusion checkpoint's files
TOWERS_META = "towers.json"

log = logging.getLogger(__name__)


class AstTower(nn.Module):
    """One AST encoder (no classifier head): log-mels (B, frames, mel) -> last hidden states (B, T, D)."""

    def __init__(self, ast: nn.Module, *, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.ast = ast  # an ASTModel (transformers)
        self.dim = int(ast.config.hidden_size)
        if gradient_checkpointing:
            self.ast.gradient_checkpointing_enable()

    @classmethod
    def from_classifier(cls, model: nn.Module, **kwargs: bool) -> AstTower:
        """A trainable copy of an ASTForAudioClassification's encoder (the checkpoint the profile loads)."""
        ast = copy.deepcopy(model.audio_spectrogram_transformer).float().requires_grad_(True)
        return cls(ast, **kwargs)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        if mels.ndim != 3:
            raise ValueError(f"log-mels must be (B, frames, mel bins), got {tuple(mels.shape)}")
        return self.ast(mels.float()).last_hidden_state  # (B, T, D): [cls, distillation, patches...]


class TowerRecommender(nn.Module):
    """MuseChatRecommender fed by the two trained AST towers (module docstring).

    `forward(video, text, candidate_mels, target_mels, **fusion kwargs)` -> {"loss", "query", "music"}.
    """

    def __init__(self, recommender: MuseChatRecommender, g_mc: AstTower, g_mt: AstTower, *, freeze_towers: bool = False) -> None:
        super().__init__()
        c = recommender.config
        if (g_mc.dim, g_mt.dim) != (c.music_dim, c.target_music_dim):
            raise ValueError(
                f"towers give {g_mc.dim}/{g_mt.dim}-d tokens, the fusion config takes music_dim {c.music_dim} "
                f"and target_music_dim {c.target_music_dim}"
            )
        self.recommender = recommender
        self.g_mc = g_mc
        self.g_mt = g_mt
        self.freeze_towers = freeze_towers
        if freeze_towers:
            log.warning("AST towers frozen: a deviation from the paper, which trains g_mc and g_mt with the fusion module")
            for tower in (g_mc, g_mt):
                tower.requires_grad_(False).eval()

    @property
    def config(self) -> FusionConfig:
        return self.recommender.config

    @property
    def loss(self) -> InfoNCELoss:
        return self.recommender.loss

    def train(self, mode: bool = True) -> TowerRecommender:
        super().train(mode)
        if self.freeze_towers:
            self.g_mc.eval()
            self.g_mt.eval()
        return self

    def candidate_tokens(self, mels: torch.Tensor) -> torch.Tensor:
        """x_mc of eq. 1: g_mc's output tokens of a 10 s candidate clip.  # (B, T, D)"""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_towers):
            return self.g_mc(mels)

    def target_cls(self, mels: torch.Tensor) -> torch.Tensor:
        """g_mt's last-layer CLS state of a 10 s target segment.  # (B, D)"""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_towers):
            return self.g_mt(mels)[:, 0]

    @torch.no_grad()
    def mean_tokens(self, mels: torch.Tensor) -> torch.Tensor:
        """The reasoner's music input (paper 4.2): the mean of all g_mt output tokens.  # (B, D)"""
        return self.g_mt(mels).mean(dim=1)

    def encode_music(self, target_mels: torch.Tensor) -> torch.Tensor:
        """L2-normalised target vectors (B, d) from 10 s target log-mels."""
        return self.recommender.encode_music(pooled=self.target_cls(target_mels))

    def encode_query(self, video: torch.Tensor | None = None, text: torch.Tensor | None = None, candidate_mels: torch.Tensor | None = None, **kwargs: torch.Tensor | None) -> torch.Tensor:
        """L2-normalised queries (B, d); the candidate as g_mc's tokens of its log-mels."""
        cand = None if candidate_mels is None else self.candidate_tokens(candidate_mels)
        return self.recommender.encode_query(video, text, cand, **kwargs)

    def forward(
        self,
        video: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        candidate_mels: torch.Tensor | None = None,
        *,
        target_mels: torch.Tensor,
        **kwargs: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Training step on 10 s samples: the video segment, the same 10 s of target music, a 10 s candidate clip, the prompt."""
        cand = None if candidate_mels is None else self.candidate_tokens(candidate_mels)
        return self.recommender(video, text, cand, target_pooled=self.target_cls(target_mels), **kwargs)


def load_towers(profile: str, backbone: str | None = None, *, gradient_checkpointing: bool = False) -> tuple[AstTower, AstTower]:
    """Two trainable copies (g_mc, g_mt) of the profile's AST (or `backbone`: a hub id or local folder)."""
    from engine.encoders import hf
    from engine.profiles import RANDOM_TINY, resolve_profile

    cfg = resolve_profile(profile, {"music": backbone} if backbone else None)
    if cfg.music_family != "ast":
        raise ValueError(f"profile {cfg.name!r} has no AST music encoder ({cfg.music_family}); trained towers need AST")
    if cfg.music_backbone == RANDOM_TINY:
        model, _ = hf.tiny_ast()
    else:
        model = hf.from_pretrained(hf.ASTForAudioClassification, cfg.music_backbone, setting="MUSECHAT_MUSIC_BACKBONE", dtype=torch.float32)
    return (AstTower.from_classifier(model, gradient_checkpointing=gradient_checkpointing),
            AstTower.from_classifier(model, gradient_checkpointing=gradient_checkpointing))


def save_towers(model: TowerRecommender, directory: str | Path) -> Path:
    """Write g_mc and g_mt (weights + AST config) into `directory` (a fusion checkpoint's folder)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"{name}.{k}": v.detach().cpu().contiguous() for name in ("g_mc", "g_mt") for k, v in getattr(model, name).ast.state_dict().items()}
    save_file(state, str(directory / TOWERS_FILE), metadata={"format": "pt"})
    meta = {"ast_config": model.g_mc.ast.config.to_dict(), "frozen": model.freeze_towers}
    (directory / TOWERS_META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_tower_weights(model: TowerRecommender, directory: str | Path) -> None:
    """Load weights written by `save_towers` into `model`'s towers."""
    state = load_file(str(Path(directory) / TOWERS_FILE))
    for name in ("g_mc", "g_mt"):
        prefix = f"{name}."
        getattr(model, name).ast.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def load_tower_checkpoint(directory: str | Path, *, expect_profile: str | None = None, device: str | torch.device = "cpu") -> TowerRecommender:
    """A `TowerRecommender` from a run's checkpoint folder: the fusion checkpoint plus `save_towers`' files, eval mode."""
    from transformers import ASTConfig, ASTModel

    from engine.checkpoint import CheckpointNotFoundError, load_checkpoint

    directory = Path(directory)
    if not (directory / TOWERS_META).is_file() or not (directory / TOWERS_FILE).is_file():
        raise CheckpointNotFoundError(f"{directory} holds no trained AST towers ({TOWERS_FILE}, {TOWERS_META})")
    recommender = load_checkpoint(directory, expect_profile=expect_profile)
    meta = json.loads((directory / TOWERS_META).read_text())
    config = ASTConfig.from_dict(meta["ast_config"])
    model = TowerRecommender(recommender, AstTower(ASTModel(config)), AstTower(ASTModel(config)), freeze_towers=bool(meta.get("frozen")))
    load_tower_weights(model, directory)
    return model.to(device).eval()

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

The app (a run's model/ folder as `MUSECHAT_FUSION_CHECKPOINT`) uses the towers the same way:
- a catalog track's "fusion" vector is `track_vector` of g_mt's vectors (+ the tower head) over
  its analysed 10 s segments (`tower_track`), as `training/evaluate.py` `music_vectors` does;
- at turn k >= 2 the previous track is the candidate: g_mc reads ONE 10 s clip of it
  (`candidate_segment`: the analysed segment nearest the centre of the listening excerpt, i.e. 10 s
  the user heard), whose log-mels the catalog keeps beside the vector (`TowerTrack`);
- `fusion_id` fingerprints the checkpoint's files, so a catalog built with other weights (or
  without towers) is detected, never mixed.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.fusion import FusionConfig, MuseChatRecommender
from engine.loss import InfoNCELoss

TOWERS_FILE = "towers.safetensors"  # g_mc.* and g_mt.* weights, beside the fusion checkpoint's files
TOWERS_META = "towers.json"
TOWER_TRACK_VERSION = 1  # bump when what `tower_track` computes changes: cached entries are redone
FUSION_ID_FILES = ("config.json", "model.safetensors", TOWERS_META, TOWERS_FILE)  # what `fusion_id` digests
FUSION_ID_LEN = 16  # hex digits kept

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


# =================================================================================================
# the towers in the app: catalog vectors, the candidate clip, the checkpoint's fingerprint
# =================================================================================================


def has_towers(directory: str | Path | None) -> bool:
    """Whether a fusion checkpoint folder holds trained AST towers (`save_towers`' two files)."""
    if directory is None:
        return False
    directory = Path(directory)
    return (directory / TOWERS_META).is_file() and (directory / TOWERS_FILE).is_file()


_FUSION_IDS: dict[tuple[Any, ...], str] = {}


def fusion_id(directory: str | Path) -> str:
    """A fingerprint of a fusion checkpoint: sha256 over its config, weights and towers (when present).

    Catalog points record it (payload `fusion_id`) so that vectors of other weights are never mixed
    with this checkpoint's queries. Memoised per (path, sizes, mtimes): the paper's towers are two
    ~350 MB files, hashed once per process (about a second)."""
    directory = Path(directory).resolve()
    files = [directory / name for name in FUSION_ID_FILES if (directory / name).is_file()]
    stats = tuple((f.name, st.st_size, st.st_mtime_ns) for f in files for st in [os.stat(f)])
    key = (str(directory), stats)
    if key not in _FUSION_IDS:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        _FUSION_IDS[key] = h.hexdigest()[:FUSION_ID_LEN]
    return _FUSION_IDS[key]


def candidate_segment(segment_bounds: Sequence[tuple[float, float]], excerpt_start_s: float, excerpt_duration_s: float) -> int:
    """Which analysed 10 s segment is a track's candidate clip x_mc (eq. 1): the one whose centre is
    nearest the listening excerpt's centre, so g_mc reads 10 s the user heard (a 25 s excerpt holds
    that whole segment); ties go to the earlier segment. `segment_bounds`: (start, end) in track time."""
    if not segment_bounds:
        raise ValueError("a track without segments has no candidate clip")
    centre = excerpt_start_s + excerpt_duration_s / 2
    return int(np.argmin([abs((a + b) / 2 - centre) for a, b in segment_bounds]))


@dataclass
class TowerTrack:
    """What a catalog keeps per track for one towers checkpoint (`fusion_id`): the target vector and
    the candidate clip's log-mels (g_mc's input at turn k >= 2, so no audio is decoded in a chat)."""

    content_hash: str
    fusion_id: str
    fusion_vector: np.ndarray  # (d,) L2-normalised mean of g_mt's segment vectors, float32
    candidate_segment: int  # index into the track's analysed segments
    candidate_mels: np.ndarray  # (frames, mel bins) float16, AST's input for that segment
    version: int = TOWER_TRACK_VERSION

    def to_bytes(self) -> bytes:
        meta = {"content_hash": self.content_hash, "fusion_id": self.fusion_id, "candidate_segment": self.candidate_segment, "version": self.version}
        buf = io.BytesIO()
        np.savez(
            buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            fusion_vector=np.asarray(self.fusion_vector, dtype=np.float32), candidate_mels=np.asarray(self.candidate_mels, dtype=np.float16),
        )  # fmt: skip
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TowerTrack:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            return cls(
                content_hash=str(meta["content_hash"]), fusion_id=str(meta["fusion_id"]), fusion_vector=z["fusion_vector"],
                candidate_segment=int(meta["candidate_segment"]), candidate_mels=z["candidate_mels"], version=int(meta["version"]),
            )  # fmt: skip


def check_tower_inputs(model: TowerRecommender, encoder: Any, where: str | Path = "checkpoint") -> None:
    """Raise CheckpointMismatchError unless the towers read the log-mels the profile's AST feature extractor makes."""
    from engine.checkpoint import CheckpointMismatchError

    fe = getattr(encoder, "features", None)
    if fe is None or not hasattr(encoder, "log_mels"):
        raise CheckpointMismatchError(f"fusion checkpoint {where} has trained AST towers; this profile's music encoder is not AST")
    cfg = model.g_mc.ast.config
    want = (int(cfg.max_length), int(cfg.num_mel_bins))
    have = (int(fe.max_length), int(fe.num_mel_bins))
    if want != have:
        raise CheckpointMismatchError(
            f"the AST towers of {where} take {want[0]} x {want[1]} log-mels; the profile's AST feature extractor makes {have[0]} x {have[1]}"
        )


@torch.no_grad()
def tower_track(
    content_hash: str, clips: Sequence[np.ndarray], segment_bounds: Sequence[tuple[float, float]], encoder: Any,
    model: TowerRecommender, *, excerpt_start_s: float, excerpt_duration_s: float, fusion_id: str,
) -> TowerTrack:  # fmt: skip
    """A track's `TowerTrack` from its analysed segments' audio (`engine.tracks.DecodedTrack.segment_audio`).

    Each segment -> `encoder.log_mels` (float16, as a training cache holds them) -> g_mt's CLS ->
    the tower head (`encode_music`, L2-normalised) -> `track_vector` of the segments (paper 5;
    training/evaluate.py `music_vectors`). The candidate clip is `candidate_segment`'s log-mels."""
    from engine.fusion import track_vector

    if len(clips) != len(segment_bounds) or not clips:
        raise ValueError(f"{len(clips)} clips for {len(segment_bounds)} segments")
    mels = np.stack([encoder.log_mels(c) for c in clips])  # (S, frames, mel) float16
    device = next(model.parameters()).device
    segs = model.encode_music(torch.from_numpy(mels).to(device))  # (S, d)
    vector = track_vector(segs).float().cpu().numpy()
    k = candidate_segment(segment_bounds, excerpt_start_s, excerpt_duration_s)
    return TowerTrack(content_hash, fusion_id, vector.astype(np.float32), k, mels[k])

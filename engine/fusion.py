"""MVT-Fusion, the target-music tower and the MuseChat recommender, all in this file (paper 4.1).

The recommendation module of MuseChat maps (video, candidate music, prompt) to a query vector and
the target music to a music vector in one 256-d space; ranking is by cosine (paper section 5).
Only features enter here: the frozen encoders (engine/encoders) give their sizes, nothing else.

Query side (paper 4.1, "MVT-Fusion"):
- video: frame features averaged over a 10 s segment (or the frames are given and averaged here),
  projected to d = 256                                                    -> x_v   (B, d)
- prompt: unpooled text-encoder token states, projected, a learned CLS prepended, 4 Transformer
  encoder (self-attention) layers                                         -> x_t   (B, 1+T, d)
- candidate music: music-encoder tokens of the previous recommendation, projected, a learned CLS
  prepended, 4 self-attention layers                                      -> x_mc  (B, 1+P, d)
- ONE multi-head cross-attention (16 heads) used both ways:
      x_f = x_v + Att(q = t_cls, k = v = x_mc) + Att(q = mc_cls, k = v = x_t)
  The keys include the other branch's CLS position, so a key set is never empty.
- output: L2-normalised x_f (B, d).

Missing inputs. Turn 1 has no candidate and often no prompt; a text-only start has no video. Each
input comes with a per-sample boolean (`has_video`, `has_text`, `has_candidate`); where it is
False the input is replaced by a learned "absent" embedding in d-space: x_v := absent_video, and a
branch's token sequence := one absent token (the branch still has its CLS, so attention is well
defined). The substitution goes through `torch.where`, so the absent embeddings are in the graph
of every batch (zero gradient when unused): DDP needs no `find_unused_parameters`. A text whose
mask has no real token counts as absent.
Modality dropout (training only, our choice, not in the paper; OFF by default): each present input
is marked absent with probability `p_drop_video` / `p_drop_text` / `p_drop_candidate`,
independently per sample. The app's checkpoints use it (`APP_MODALITY_DROPOUT`, the training
option `modality_dropout`) so that one model serves turn 1 (video only), turn 2 (all three) and
text-only starts, and does not learn to lean on one input; the paper's runs leave it off. A sample
left with no input at all gets its original flags back: an all-absent query is a constant and
teaches nothing. `modality_dropout_label(config)` names what a model was trained with (reports).

Baselines of the paper's Table 1, by `FusionConfig.variant`:
- "mvt":        the full model above.
- "sum":        Sum-Fusion, no attention: x_v + mean(projected text) + mean(projected music).
- "self_attn":  the two self-attention branches, fused by a sum: x_v + t_cls + mc_cls.
- "cross_attn": the cross-attention without the self-attention branches. Without encoder layers a
                CLS token cannot gather its sequence, so each branch's query is the masked mean of
                [CLS; projected tokens]; keys/values are [CLS; projected tokens].
Ablations of the paper's Table 2:
- "without video" (`use_video=False`): no video projection; x_v is the learned absent embedding.
- "without candidate" (`use_candidate=False`) / "without text" (`use_text=False`): paper 5.3, "we
  remove the related cross-attention layers, retaining only the self-attention layers, with the
  cls token used for the summation": the removed input's projection, absent embedding and branch
  are not built, nor the cross-attention, and x_f = x_v + t_cls (without candidate) or
  x_v + mc_cls (without text). With both removed, x_f = x_v (the video-only row). In the other
  variants the remaining branch's summary is summed the same way (Sum-Fusion: its mean).

No positional embeddings are added to the branches: the encoders' token states are already
contextual (CLIP text, AST), and musicnn's 3 s patch order within a 10 s segment carries little.
Projections apply a LayerNorm before the linear map because the encoders' feature scales differ
widely between profiles (CLIP, EfficientNet, musicnn).

The AST towers themselves (g_mc, g_mt), trained with this module as the paper does, live in
engine/music_towers.py (`TowerRecommender`), which feeds their outputs in here; on cached frozen
features (the lite profile, the app) the towers' outputs are the cached vectors.

Target side (paper 4.1, g_mt): `MusicTower` takes the target's pooled vector (AST's CLS token in
the paper profile) or its tokens (masked mean) -> linear -> 256-d, L2-normalised. A track's vector
is the normalised mean of its segment vectors (`track_vector`, paper section 5: twelve 10 s
segments of a 120 s clip).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from engine.loss import InfoNCELoss

log = logging.getLogger(__name__)

Variant = Literal["mvt", "sum", "self_attn", "cross_attn"]
VARIANTS: tuple[str, ...] = ("mvt", "sum", "self_attn", "cross_attn")

D_MODEL = 256  # paper 4.1: every input is projected to 256-d
N_HEADS = 16  # paper 4.1: the cross-attention has 16 heads
N_LAYERS = 4  # paper 4.1: self-attention layers per branch


@dataclass
class FusionConfig:
    profile: str  # model profile the feature sizes come from: paper | lite | tiny
    video_dim: int  # image-encoder feature size (per frame, averaged per segment)
    text_dim: int  # text-encoder token-state size
    music_dim: int  # candidate-music token size (g_mc)
    target_music_dim: int  # target-music feature size (g_mt)
    d_model: int = D_MODEL
    n_heads: int = N_HEADS  # cross-attention and branch self-attention heads
    n_layers: int = N_LAYERS  # per branch (text, music)
    ff_mult: int = 4  # feed-forward width of the branch layers, x d_model
    dropout: float = 0.1
    variant: Variant = "mvt"
    use_video: bool = True  # False: the paper's "without video" ablation
    use_candidate: bool = True  # False: the paper's "without candidate" ablation (no music branch)
    use_text: bool = True  # False: the "without text" ablation (no text branch)
    p_drop_video: float = 0.0  # modality dropout in training: ours, off as in the paper (module docstring)
    p_drop_text: float = 0.0
    p_drop_candidate: float = 0.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown fusion variant {self.variant!r}; expected one of {VARIANTS}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        for name in ("video_dim", "text_dim", "music_dim", "target_music_dim", "d_model", "n_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("p_drop_video", "p_drop_text", "p_drop_candidate", "dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not (self.use_video or self.use_text or self.use_candidate):
            raise ValueError("a fusion model needs at least one of video, text and candidate")

    @property
    def modality_dropout(self) -> bool:
        """True when any input is dropped in training (ours, not the paper's)."""
        return bool(self.p_drop_video or self.p_drop_text or self.p_drop_candidate)


# the modality dropout the app's checkpoints train with (turn 1, turn 2 and text-only starts)
APP_MODALITY_DROPOUT: dict[str, float] = {"p_drop_video": 0.1, "p_drop_text": 0.3, "p_drop_candidate": 0.5}


def modality_dropout_label(config: FusionConfig) -> str:
    """'off (paper)' or the rates, e.g. 'on (video 0.1, text 0.3, candidate 0.5)', for reports."""
    if not config.modality_dropout:
        return "off (paper)"
    return f"on (video {config.p_drop_video:g}, text {config.p_drop_text:g}, candidate {config.p_drop_candidate:g})"


# ----------------------------------------------------------------------------------------------
# small blocks


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of x (B, T, D) where mask (B, T) is True; rows without a True give 0.  # (B, D)"""
    if mask is None:
        return x.mean(dim=1)
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


class Projection(nn.Module):
    """Feature -> d_model: LayerNorm on the input feature, then a linear map (paper 4.1, "projected")."""

    def __init__(self, in_dim: int, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))  # (..., d_model)


class Branch(nn.Module):
    """A learned CLS token prepended to a token sequence, then n_layers of self-attention (paper 4.1).

    With n_layers == 0 (the Cross-Attn baseline) the sequence passes unchanged and `summary` is the
    masked mean of [CLS; tokens], since a bare CLS token would not depend on the input.
    """

    def __init__(self, d_model: int, n_heads: int, n_layers: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.n_layers = n_layers
        if n_layers > 0:
            layer = nn.TransformerEncoderLayer(
                d_model,
                n_heads,
                dim_feedforward=ff_mult * d_model,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            # nested tensors are off: outputs at padded positions stay defined, and masks do the work
            self.encoder: nn.Module | None = nn.TransformerEncoder(
                layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
            )
        else:
            self.encoder = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d), mask (B, T) True at real tokens -> sequence (B, 1+T, d), mask (B, 1+T)."""
        b = x.shape[0]
        seq = torch.cat([self.cls.expand(b, 1, -1).to(x.dtype), x], dim=1)  # (B, 1+T, d)
        seq_mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)  # (B, 1+T)
        if self.encoder is not None:
            seq = self.encoder(seq, src_key_padding_mask=~seq_mask)  # (B, 1+T, d)
        return seq, seq_mask

    def summary(self, seq: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
        """The branch's CLS output (or the masked mean when there are no layers).  # (B, d)"""
        if self.encoder is not None:
            return seq[:, 0]
        return masked_mean(seq, seq_mask)


class CrossAttention(nn.Module):
    """The single multi-head cross-attention of MVT-Fusion, shared by both directions (paper 4.1)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)

    def forward(self, query: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        """Att(q = query (B, d), k = v = kv (B, S, d)) with kv_mask (B, S) True at real keys.  # (B, d)"""
        out, _ = self.attn(query.unsqueeze(1), kv, kv, key_padding_mask=~kv_mask, need_weights=False)
        return out.squeeze(1)  # (B, d)


# ----------------------------------------------------------------------------------------------
# query side: MVT-Fusion and its baselines


def _flags(flag: torch.Tensor | None, given: bool, b: int, device: torch.device) -> torch.Tensor:
    """Per-sample presence: False everywhere if the input is missing, else `flag` (default all True)."""
    if not given:
        return torch.zeros(b, dtype=torch.bool, device=device)
    if flag is None:
        return torch.ones(b, dtype=torch.bool, device=device)
    flag = flag.to(device=device, dtype=torch.bool)
    if flag.shape != (b,):
        raise ValueError(f"presence flags must have shape ({b},), got {tuple(flag.shape)}")
    return flag


def _mask(mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
    """A boolean key mask (B, T) for tokens (B, T, D): all True if none is given."""
    if mask is None:
        return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not fit tokens {tuple(tokens.shape)}")
    return mask.to(device=tokens.device, dtype=torch.bool)


class QueryFusion(nn.Module):
    """MVT-Fusion (paper 4.1) or one of its Table 1 baselines: (video, prompt, candidate) -> x_f.

    `fuse` returns the unnormalised x_f (B, d); `forward` returns it L2-normalised.
    See the module docstring for the absent-input embeddings and the modality dropout.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = c = config
        d = c.d_model
        self.video_proj = Projection(c.video_dim, d) if c.use_video else None
        # learned substitutes for a missing input, in d-space (none for a removed input: Table 2 ablations)
        self.absent_video = nn.Parameter(torch.randn(d) * 0.02)
        self.text_proj: Projection | None = None
        self.absent_text: nn.Parameter | None = None
        self.text_branch: Branch | None = None
        self.music_proj: Projection | None = None
        self.absent_music: nn.Parameter | None = None
        self.music_branch: Branch | None = None
        n_layers = 0 if c.variant == "cross_attn" else c.n_layers
        if c.use_text:
            self.text_proj = Projection(c.text_dim, d)
            self.absent_text = nn.Parameter(torch.randn(d) * 0.02)
            if c.variant != "sum":
                self.text_branch = Branch(d, c.n_heads, n_layers, c.ff_mult, c.dropout)
        if c.use_candidate:
            self.music_proj = Projection(c.music_dim, d)
            self.absent_music = nn.Parameter(torch.randn(d) * 0.02)
            if c.variant != "sum":
                self.music_branch = Branch(d, c.n_heads, n_layers, c.ff_mult, c.dropout)
        self.cross_attn: CrossAttention | None = None
        if c.variant in ("mvt", "cross_attn") and c.use_text and c.use_candidate:
            # paper 5.3: without candidate or text, the cross-attention is removed
            self.cross_attn = CrossAttention(d, c.n_heads, c.dropout)

    # -- inputs ---------------------------------------------------------------------------------

    def _video(self, video: torch.Tensor | None, video_mask: torch.Tensor | None, present: torch.Tensor) -> torch.Tensor:
        """Projected video x_v, the absent embedding where the sample has none.  # (B, d)"""
        b = present.shape[0]
        absent = self.absent_video.expand(b, -1)
        if video is None or self.video_proj is None:
            return absent
        if video.ndim == 3:  # (B, F, Dv) frame features: average over frames (paper 4.1)
            video = masked_mean(video, video_mask)
        elif video.ndim != 2:
            raise ValueError(f"video features must be (B, Dv) or (B, F, Dv), got {tuple(video.shape)}")
        x_v = self.video_proj(video)  # (B, d)
        return torch.where(present.unsqueeze(-1), x_v, absent.to(x_v.dtype))

    def _tokens(
        self,
        tokens: torch.Tensor | None,
        mask: torch.Tensor | None,
        present: torch.Tensor,
        proj: Projection | None,
        absent: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected tokens (B, T, d) + mask (B, T); absent samples get one absent token."""
        b = present.shape[0]
        if tokens is None or proj is None:
            return absent.expand(b, 1, -1), torch.ones(b, 1, dtype=torch.bool, device=present.device)
        if tokens.ndim != 3:
            raise ValueError(f"token features must be (B, T, D), got {tuple(tokens.shape)}")
        t = tokens.shape[1]
        x = proj(tokens)  # (B, T, d)
        first = torch.arange(t, device=x.device) == 0  # (T,)
        x = torch.where(present[:, None, None], x, absent.to(x.dtype).expand_as(x))
        mask = torch.where(present[:, None], mask, first.expand(b, t))  # (B, T)
        return x, mask

    def presence(
        self,
        b: int,
        device: torch.device,
        *,
        video: torch.Tensor | None,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        candidate: torch.Tensor | None,
        candidate_mask: torch.Tensor | None,
        has_video: torch.Tensor | None,
        has_text: torch.Tensor | None,
        has_candidate: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample present flags (B,) x 3 after the ablation switches and modality dropout."""
        c = self.config
        pv = _flags(has_video, video is not None and c.use_video, b, device)
        pt = _flags(has_text, text is not None and c.use_text, b, device)
        pm = _flags(has_candidate, candidate is not None and c.use_candidate, b, device)
        if text is not None and text_mask is not None:
            pt = pt & text_mask.any(dim=1)  # a prompt without a real token is no prompt
        if candidate is not None and candidate_mask is not None:
            pm = pm & candidate_mask.any(dim=1)
        if self.training and (c.p_drop_video or c.p_drop_text or c.p_drop_candidate):
            dv = pv & (torch.rand(b, device=device) >= c.p_drop_video)
            dt = pt & (torch.rand(b, device=device) >= c.p_drop_text)
            dm = pm & (torch.rand(b, device=device) >= c.p_drop_candidate)
            keep = dv | dt | dm  # a sample left with nothing keeps its original inputs
            pv, pt, pm = torch.where(keep, dv, pv), torch.where(keep, dt, pt), torch.where(keep, dm, pm)
        return pv, pt, pm

    # -- fusion ---------------------------------------------------------------------------------

    def fuse(
        self,
        video: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        candidate: torch.Tensor | None = None,
        *,
        video_mask: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        candidate_mask: torch.Tensor | None = None,
        has_video: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
        has_candidate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unnormalised fused query x_f (B, d).

        video: (B, Dv) segment features or (B, F, Dv) frame features (+ video_mask (B, F));
        text: (B, T, Dt) prompt token states + text_mask (B, T) True at real tokens;
        candidate: (B, P, Dm) candidate-music tokens + candidate_mask (B, P);
        has_*: (B,) bool, False where that sample lacks the input (default: present iff given).
        """
        b, device = self._batch(video, text, candidate, has_video, has_text, has_candidate)
        if text is not None:
            text_mask = _mask(text_mask, text)
        if candidate is not None:
            candidate_mask = _mask(candidate_mask, candidate)
        pv, pt, pm = self.presence(
            b,
            device,
            video=video,
            text=text,
            text_mask=text_mask,
            candidate=candidate,
            candidate_mask=candidate_mask,
            has_video=has_video,
            has_text=has_text,
            has_candidate=has_candidate,
        )
        x_v = self._video(video, video_mask, pv)  # (B, d)
        parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # branch -> projected tokens, mask
        if self.text_proj is not None and self.absent_text is not None:
            parts["text"] = self._tokens(text, text_mask, pt, self.text_proj, self.absent_text)  # (B, T, d)
        if self.music_proj is not None and self.absent_music is not None:
            parts["music"] = self._tokens(candidate, candidate_mask, pm, self.music_proj, self.absent_music)  # (B, P, d)
        if self.config.variant == "sum":  # Sum-Fusion: no attention at all
            return x_v + sum((masked_mean(x, m) for x, m in parts.values()), torch.zeros_like(x_v))
        branches = {"text": self.text_branch, "music": self.music_branch}
        seqs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        summaries: dict[str, torch.Tensor] = {}
        for name, (x, m) in parts.items():
            branch = branches[name]
            assert branch is not None
            seqs[name] = branch(x, m)  # (B, 1+T, d), (B, 1+T)
            summaries[name] = branch.summary(*seqs[name])  # (B, d)
        if self.cross_attn is None:
            # self_attn baseline, or a Table 2 ablation: x_v + the remaining branches' cls tokens
            return x_v + sum(summaries.values(), torch.zeros_like(x_v))
        (s_t, sm_t), (s_m, sm_m) = seqs["text"], seqs["music"]
        t_cls, mc_cls = summaries["text"], summaries["music"]
        # paper 4.1: x_f = x_v + Att(t_cls, x_mc, x_mc) + Att(mc_cls, x_t, x_t)
        return x_v + self.cross_attn(t_cls, s_m, sm_m) + self.cross_attn(mc_cls, s_t, sm_t)

    def forward(self, *args: torch.Tensor | None, **kwargs: torch.Tensor | None) -> torch.Tensor:
        """L2-normalised fused query (B, d); same arguments as `fuse`."""
        return F.normalize(self.fuse(*args, **kwargs), dim=-1)

    @staticmethod
    def _batch(*tensors: torch.Tensor | None) -> tuple[int, torch.device]:
        for t in tensors:
            if t is not None:
                return t.shape[0], t.device
        raise ValueError("a query needs at least one input (video, text, candidate) or presence flags")


# ----------------------------------------------------------------------------------------------
# target side


class MusicTower(nn.Module):
    """g_mt's head (paper 4.1): target-music features -> CLS / pooled -> linear -> 256-d, L2-normalised.

    Give `pooled` (B, Dm), the encoder's clip vector (AST's CLS token in the paper profile), or
    `tokens` (B, P, Dm) + `mask` (B, P), which are mean-pooled over the real tokens.
    """

    def __init__(self, in_dim: int, d_model: int = D_MODEL) -> None:
        super().__init__()
        self.proj = Projection(in_dim, d_model)

    def forward(
        self,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if pooled is None:
            if tokens is None:
                raise ValueError("MusicTower needs tokens or a pooled vector")
            if tokens.ndim != 3:
                raise ValueError(f"music tokens must be (B, P, D), got {tuple(tokens.shape)}")
            pooled = masked_mean(tokens, mask)  # (B, Dm)
        elif pooled.ndim != 2:
            raise ValueError(f"pooled music must be (B, D), got {tuple(pooled.shape)}")
        return F.normalize(self.proj(pooled), dim=-1)  # (B, d)


def track_vector(segment_vectors: torch.Tensor) -> torch.Tensor:
    """Track-level vector: L2-normalised mean of its segment vectors (paper 5: twelve 10 s segments).

    segment_vectors (S, d) -> (d,)
    """
    if segment_vectors.ndim != 2 or segment_vectors.shape[0] == 0:
        raise ValueError(f"expected segment vectors (S >= 1, d), got {tuple(segment_vectors.shape)}")
    return F.normalize(segment_vectors.mean(dim=0), dim=-1)


def rank(query: torch.Tensor, tracks: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine ranking (paper 5): query (B, d), tracks (N, d) -> scores (B, k), indices (B, k), best first."""
    if query.ndim != 2 or tracks.ndim != 2 or query.shape[1] != tracks.shape[1]:
        raise ValueError(f"expected query (B, d) and tracks (N, d), got {tuple(query.shape)}, {tuple(tracks.shape)}")
    sims = F.normalize(query, dim=-1) @ F.normalize(tracks, dim=-1).T  # (B, N)
    k = tracks.shape[0] if k is None else min(k, tracks.shape[0])
    scores, indices = sims.topk(k, dim=-1)  # sorted, largest first
    return scores, indices


# ----------------------------------------------------------------------------------------------
# the whole recommendation module


class MuseChatRecommender(nn.Module):
    """The recommendation module of MuseChat (paper 4.1): query fusion + target-music tower + InfoNCE.

    `encode_query(...)` -> (B, d) query vectors, `encode_music(...)` -> (B, d) music vectors;
    `forward(...)` computes both and the InfoNCE loss (call the model itself under DDP).
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.query = QueryFusion(config)
        self.music = MusicTower(config.target_music_dim, config.d_model)
        self.loss = InfoNCELoss()  # holds the trainable temperature (paper eq. 3)

    def encode_query(
        self,
        video: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        candidate: torch.Tensor | None = None,
        **kwargs: torch.Tensor | None,
    ) -> torch.Tensor:
        """L2-normalised query (B, d); arguments as `QueryFusion.fuse`."""
        return self.query(video, text, candidate, **kwargs)

    def encode_music(
        self,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised target-music vectors (B, d); arguments as `MusicTower.forward`."""
        return self.music(tokens, mask, pooled)

    def forward(
        self,
        video: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        candidate: torch.Tensor | None = None,
        *,
        target_tokens: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        target_pooled: torch.Tensor | None = None,
        **kwargs: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Training step: {"loss": scalar, "query": (B, d), "music": (B, d)}; row i of the target is query i's."""
        q = self.encode_query(video, text, candidate, **kwargs)
        m = self.encode_music(target_tokens, target_mask, target_pooled)
        return {"loss": self.loss(q, m), "query": q, "music": m}

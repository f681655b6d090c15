"""Save and load a MuseChat recommender (engine/fusion.py): safetensors weights + a JSON config.

A checkpoint is a directory:
    model.safetensors   the state dict of `MuseChatRecommender` (fusion, music tower, temperature)
    config.json         {"format_version", "created" (ISO 8601 UTC), "profile", "config": FusionConfig}

The config says which model profile's encoders produced the features the weights were trained on;
loading a checkpoint for another profile or other feature sizes would silently recommend noise, so
it fails with `CheckpointMismatchError`, naming what was expected and what was found. Missing
files and unreadable contents fail with `CheckpointNotFoundError` / `CheckpointCorruptError`.
Both files are written to a temporary name and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.fusion import FusionConfig, MuseChatRecommender

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# fields that fix the architecture or the meaning of the inputs; the rest (dropouts) may differ
STRUCTURAL_FIELDS: tuple[str, ...] = (
    "profile",
    "video_dim",
    "text_dim",
    "music_dim",
    "target_music_dim",
    "d_model",
    "n_heads",
    "n_layers",
    "ff_mult",
    "variant",
    "use_video",
    "use_candidate",
    "use_text",
)


class CheckpointError(Exception):
    """A fusion checkpoint cannot be used."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory or one of its files does not exist."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file exists but cannot be read or does not fit its own config."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was trained for another profile or other feature sizes than expected."""


@dataclass
class CheckpointInfo:
    config: FusionConfig
    format_version: int
    created: str  # ISO 8601, UTC
    path: Path


def _describe(config: FusionConfig) -> str:
    return (
        f"profile={config.profile!r} video_dim={config.video_dim} text_dim={config.text_dim} "
        f"music_dim={config.music_dim} target_music_dim={config.target_music_dim} "
        f"d_model={config.d_model} variant={config.variant!r}"
    )


def check_compatible(expected: FusionConfig, found: FusionConfig, where: Path | str = "checkpoint") -> None:
    """Raise CheckpointMismatchError if `found` differs from `expected` in any structural field."""
    diffs = [
        f"{name}: expected {getattr(expected, name)!r}, found {getattr(found, name)!r}"
        for name in STRUCTURAL_FIELDS
        if getattr(expected, name) != getattr(found, name)
    ]
    if diffs:
        raise CheckpointMismatchError(
            f"fusion checkpoint {where} does not fit this model: {'; '.join(diffs)} "
            f"(expected {_describe(expected)}; found {_describe(found)})"
        )


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(model: MuseChatRecommender, directory: str | Path) -> Path:
    """Write `model` to `directory` (created if needed) as safetensors + config.json; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": model.config.profile,
        "config": asdict(model.config),
    }
    _write_atomic(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    _write_atomic(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    log.info("saved fusion checkpoint %s (%s, %d tensors)", directory, _describe(model.config), len(state))
    return directory


def read_checkpoint_info(directory: str | Path) -> CheckpointInfo:
    """Read and validate config.json of a checkpoint directory (the weights are not touched)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"fusion checkpoint directory {directory} does not exist")
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointNotFoundError(f"fusion checkpoint {directory} has no {CONFIG_FILE}")
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorruptError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointCorruptError(f"{cfg_path} has no 'config' object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointCorruptError(
            f"{cfg_path} has format_version {version!r}; this code reads version {FORMAT_VERSION}"
        )
    known = {f.name for f in fields(FusionConfig)}
    raw = meta["config"]
    unknown = sorted(set(raw) - known)
    if unknown:
        log.warning("fusion checkpoint %s: ignoring unknown config fields %s", directory, unknown)
    try:
        config = FusionConfig(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as e:
        raise CheckpointCorruptError(f"{cfg_path} holds an invalid fusion config: {e}") from e
    return CheckpointInfo(config=config, format_version=version, created=str(meta.get("created", "")), path=directory)


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(f"fusion checkpoint {directory} has no {WEIGHTS_FILE}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointCorruptError(f"{path} cannot be read as safetensors: {e}") from e


def load_into(model: MuseChatRecommender, directory: str | Path) -> CheckpointInfo:
    """Load a checkpoint's weights into an existing model after checking the configs agree."""
    info = read_checkpoint_info(directory)
    check_compatible(model.config, info.config, info.path)
    state = _read_weights(info.path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or bad_shapes:
        raise CheckpointCorruptError(
            f"{info.path / WEIGHTS_FILE} does not match its config: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}, {len(bad_shapes)} wrong shapes {bad_shapes[:5]}"
        )
    model.load_state_dict(state)
    log.info("loaded fusion checkpoint %s (%s, created %s)", info.path, _describe(info.config), info.created)
    return info


def load_checkpoint(
    directory: str | Path,
    *,
    expect: FusionConfig | None = None,
    expect_profile: str | None = None,
    device: str | torch.device = "cpu",
) -> MuseChatRecommender:
    """Build a `MuseChatRecommender` from a checkpoint, in eval mode on `device`.

    `expect`: the config the caller's encoders imply (its profile and dims); `expect_profile`: only
    the profile. Either mismatch raises CheckpointMismatchError before any weight is read.
    """
    info = read_checkpoint_info(directory)
    if expect_profile is not None and info.config.profile != expect_profile:
        raise CheckpointMismatchError(
            f"fusion checkpoint {info.path} was trained for profile {info.config.profile!r}, "
            f"expected profile {expect_profile!r} (found {_describe(info.config)})"
        )
    if expect is not None:
        check_compatible(expect, info.config, info.path)
    model = MuseChatRecommender(info.config)
    load_into(model, info.path)
    return model.to(device).eval()

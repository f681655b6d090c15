"""Save and load a MuseChat recommender (engine/fusion.py) or retriever (engine/retriever.py).

A checkpoint is a directory:
    model.safetensors   the state dict of `MuseChatRecommender` (fusion, music tower, temperature)
                        or of `TwoTowerRetriever` (video and music towers, temperature)
    config.json         {"format_version", "created" (ISO 8601 UTC), "profile", "model", "config"}
"model" is "fusion" (a `FusionConfig`; files without the field are fusion checkpoints) or
"two_tower" (a `RetrieverConfig`, the turn-1 retriever of `data build`). Asking for one kind and
finding the other fails with `CheckpointMismatchError`: the app never loads a retriever as its
recommender.

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
from engine.retriever import MODEL_KIND as RETRIEVER_KIND
from engine.retriever import RetrieverConfig, TwoTowerRetriever

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FUSION_KIND = "fusion"
KINDS: dict[str, type] = {FUSION_KIND: FusionConfig, RETRIEVER_KIND: RetrieverConfig}  # "model" -> its config class

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
RETRIEVER_STRUCTURAL_FIELDS: tuple[str, ...] = (
    "profile",
    "video_dim",
    "music_dim",
    "d_model",
    "n_heads",
    "n_layers",
    "ff_mult",
    "max_segments",
)
Config = FusionConfig | RetrieverConfig
Model = MuseChatRecommender | TwoTowerRetriever


class CheckpointError(Exception):
    """A fusion or retriever checkpoint cannot be used."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory or one of its files does not exist."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file exists but cannot be read or does not fit its own config."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was trained for another profile or other feature sizes than expected."""


@dataclass
class CheckpointInfo:
    config: Config
    format_version: int
    created: str  # ISO 8601, UTC
    path: Path
    kind: str = FUSION_KIND  # "fusion" | "two_tower"


def _kind(config: Config) -> str:
    return RETRIEVER_KIND if isinstance(config, RetrieverConfig) else FUSION_KIND


def _describe(config: Config) -> str:
    if isinstance(config, RetrieverConfig):
        return (
            f"two-tower retriever, profile={config.profile!r} video_dim={config.video_dim} "
            f"music_dim={config.music_dim} d_model={config.d_model} n_layers={config.n_layers}"
        )
    return (
        f"profile={config.profile!r} video_dim={config.video_dim} text_dim={config.text_dim} "
        f"music_dim={config.music_dim} target_music_dim={config.target_music_dim} "
        f"d_model={config.d_model} variant={config.variant!r}"
    )


def check_compatible(expected: Config, found: Config, where: Path | str = "checkpoint") -> None:
    """Raise CheckpointMismatchError if `found` differs from `expected` in kind or any structural field."""
    if _kind(expected) != _kind(found):
        raise CheckpointMismatchError(
            f"checkpoint {where} holds a {_kind(found)} model, expected a {_kind(expected)} one ({_describe(found)})"
        )
    structural = RETRIEVER_STRUCTURAL_FIELDS if isinstance(found, RetrieverConfig) else STRUCTURAL_FIELDS
    diffs = [
        f"{name}: expected {getattr(expected, name)!r}, found {getattr(found, name)!r}"
        for name in structural
        if getattr(expected, name) != getattr(found, name)
    ]
    if diffs:
        raise CheckpointMismatchError(
            f"{_kind(found)} checkpoint {where} does not fit this model: {'; '.join(diffs)} "
            f"(expected {_describe(expected)}; found {_describe(found)})"
        )


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(model: Model, directory: str | Path) -> Path:
    """Write `model` to `directory` (created if needed) as safetensors + config.json; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": model.config.profile,
        "model": _kind(model.config),
        "config": asdict(model.config),
    }
    _write_atomic(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    _write_atomic(directory / CONFIG_FILE, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    log.info("saved %s checkpoint %s (%s, %d tensors)", _kind(model.config), directory, _describe(model.config), len(state))
    return directory


def read_checkpoint_info(directory: str | Path) -> CheckpointInfo:
    """Read and validate config.json of a checkpoint directory (the weights are not touched)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory {directory} does not exist")
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {directory} has no {CONFIG_FILE}")
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
    kind = meta.get("model", FUSION_KIND)
    if kind not in KINDS:
        raise CheckpointCorruptError(f"{cfg_path} names model {kind!r}; this code reads {sorted(KINDS)}")
    cls = KINDS[kind]
    known = {f.name for f in fields(cls)}
    raw = meta["config"]
    unknown = sorted(set(raw) - known)
    if unknown:
        log.warning("%s checkpoint %s: ignoring unknown config fields %s", kind, directory, unknown)
    try:
        config = cls(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as e:
        raise CheckpointCorruptError(f"{cfg_path} holds an invalid {kind} config: {e}") from e
    return CheckpointInfo(config=config, format_version=version, created=str(meta.get("created", "")), path=directory, kind=kind)


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {directory} has no {WEIGHTS_FILE}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointCorruptError(f"{path} cannot be read as safetensors: {e}") from e


def load_into(model: Model, directory: str | Path) -> CheckpointInfo:
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
    log.info("loaded %s checkpoint %s (%s, created %s)", info.kind, info.path, _describe(info.config), info.created)
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
    if info.kind != FUSION_KIND:
        raise CheckpointMismatchError(
            f"{info.path} holds a {info.kind} retriever (the turn-1 retriever of `musechat data build --retriever`), "
            f"not a fusion recommender ({_describe(info.config)})"
        )
    _check_profile(info, expect_profile)
    if expect is not None:
        check_compatible(expect, info.config, info.path)
    assert isinstance(info.config, FusionConfig)
    model = MuseChatRecommender(info.config)
    load_into(model, info.path)
    return model.to(device).eval()


def _check_profile(info: CheckpointInfo, expect_profile: str | None) -> None:
    if expect_profile is not None and info.config.profile != expect_profile:
        raise CheckpointMismatchError(
            f"{info.kind} checkpoint {info.path} was trained for profile {info.config.profile!r}, "
            f"expected profile {expect_profile!r} (found {_describe(info.config)})"
        )


def load_retriever(
    directory: str | Path,
    *,
    expect_profile: str | None = None,
    expect_dims: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
) -> TwoTowerRetriever:
    """Build a `TwoTowerRetriever` from a checkpoint, in eval mode on `device`.

    `expect_dims`: (video_dim, music_dim) of the features it will see. A fusion checkpoint, another
    profile or other sizes raise CheckpointMismatchError before any weight is read.
    """
    info = read_checkpoint_info(directory)
    if info.kind != RETRIEVER_KIND:
        raise CheckpointMismatchError(
            f"{info.path} holds a {info.kind} recommender, not a two-tower retriever "
            f"(train one with `musechat train --variant two_tower`; found {_describe(info.config)})"
        )
    _check_profile(info, expect_profile)
    assert isinstance(info.config, RetrieverConfig)
    found = (info.config.video_dim, info.config.music_dim)
    if expect_dims is not None and found != tuple(expect_dims):
        raise CheckpointMismatchError(
            f"two-tower checkpoint {info.path} takes (video, music) features of sizes {found}; "
            f"these features have {tuple(expect_dims)}"
        )
    model = TwoTowerRetriever(info.config)
    load_into(model, info.path)
    return model.to(device).eval()

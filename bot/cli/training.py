"""`musechat data ...`, `musechat train` and `musechat eval`: build training data, train, evaluate (paper 3-5).

Registered on the main app by `register_training_commands(app)`. Multi-GPU training runs through
torchrun on `python -m training.train_fusion` (same options); `musechat train` is one process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console

log = logging.getLogger(__name__)

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)  # paths stay on one line

EXIT_USER_ERROR = 2  # bad input: a message, never a traceback

data_app = typer.Typer(help="Build MuseChat training data (quartets + cached frozen-encoder features).", no_args_is_help=True)


MUSIC_INPUT_AUTO, MUSIC_INPUT_LOG_MELS, MUSIC_INPUT_FEATURES = "auto", "log-mels", "features"  # data build --music-input
MUSIC_INPUTS = (MUSIC_INPUT_AUTO, MUSIC_INPUT_LOG_MELS, MUSIC_INPUT_FEATURES)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(EXIT_USER_ERROR)


@data_app.command("from-catalog")
def data_from_catalog(
    out_dir: Path = typer.Option(..., "--out", help="Feature cache directory to write (resumable)."),
    features: Path = typer.Option(None, help="Track-analysis cache to read (default: the live catalog's, in MUSECHAT_DATA_DIR)."),
    profile: str = typer.Option(None, help="Model profile (default: MUSECHAT_PROFILE)."),
    seed: int = typer.Option(0, help="Seed of the candidate pools and the turn templates."),
    pool_size: int = typer.Option(2000, help="Size of the random non-overlapping candidate pools (paper 3); a target is never its own candidate."),
    shard_size: int = typer.Option(None, help="Quartets per shard (default: up to 1024)."),
) -> None:
    """Music-only quartets (candidate, feedback from tag differences, target) from the live catalog."""
    from bot.service.catalog_admin import FEATURES_DIR, features_key
    from bot.settings import get_settings
    from engine.profiles import load_encoders
    from engine.tracks import TrackAnalysis
    from training.data import catalog_quartets
    from training.features import FeatureCacheError, FeatureShardWriter, FeatureSpec

    s = get_settings()
    enc = load_encoders(profile or s.profile, overrides=s.backbone_overrides, device=s.device)
    root = features or Path(s.data_dir) / FEATURES_DIR / features_key(enc.profile)
    if not root.is_dir():
        _fail(f"no track analyses at {root}: run `musechat catalog refresh` first (or pass --features)")
    analyses = []
    for path in sorted(root.glob("*/*.npz")):
        try:
            analyses.append(TrackAnalysis.from_bytes(path.read_bytes()))
        except Exception as e:  # noqa: BLE001 - a damaged cache file is skipped, as the catalog does
            log.warning("skipping unreadable analysis %s: %s", path, e)
    analyses = [a for a in analyses if a.profile == enc.profile.name and len(a.segment_vectors)]
    if len(analyses) < 2:
        _fail(f"{root} holds {len(analyses)} usable track analyses for profile {enc.profile.name!r}; need at least 2")
    spec = FeatureSpec(
        profile=enc.profile.name,
        video_dim=int(enc.profile.image_dim),
        text_dim=int(enc.text.dim),
        music_dim=int(analyses[0].segment_vectors.shape[1]),
        target_music_dim=int(analyses[0].segment_vectors.shape[1]),
    )
    try:
        writer = FeatureShardWriter(out_dir, spec, shard_size=shard_size)
    except FeatureCacheError as e:
        _fail(str(e))
    quartets = catalog_quartets(analyses, enc.text, writer, seed=seed, pool_size=pool_size, progress=True)
    writer.close()
    jsonl = out_dir / "quartets.jsonl"
    with jsonl.open("a", encoding="utf-8") as f:
        for q in quartets:
            f.write(json.dumps(q.to_json(), ensure_ascii=False) + "\n")
    out.print(f"{len(writer.done_ids)} music-only quartets in {out_dir} ({len(quartets)} new); quartets: {jsonl}")


@data_app.command("build")
def data_build(
    folder: Path = typer.Argument(..., help="A folder of music videos (their own soundtracks are the targets)."),
    out_dir: Path = typer.Option(..., "--out", help="Feature cache directory to write (resumable)."),
    retriever: Path = typer.Option(
        None, help="Two-tower retriever checkpoint (RUN/model of `musechat train --variant two_tower`) that picks each "
        "candidate (default: train one on this folder's clips, kept in OUT/retriever/)."
    ),
    random_candidates: bool = typer.Option(False, "--random-candidates", help="Pick candidates at random from the pool instead (not the paper's way)."),
    checkpoint: Path = typer.Option(
        None, help="A fusion checkpoint picks the candidates instead (its turn-1 query: video only); one with trained AST "
        "towers ranks by its g_mt on the log-mels (log-mel builds only)."
    ),
    retriever_epochs: int = typer.Option(10, min=1, help="Epochs of the retriever trained here when --retriever is not given."),
    profile: str = typer.Option(None, help="Model profile (default: MUSECHAT_PROFILE)."),
    seed: int = typer.Option(0, help="Seed of the candidate pools, the turn templates and the retriever trained here."),
    pool_size: int = typer.Option(2000, help="Size of the random non-overlapping candidate pools (paper 3); a target is never its own candidate."),
    shard_size: int = typer.Option(None, help="Quartets per shard (default: up to 1024, fewer for log-mels: ~256 MB a shard)."),
    music_input: str = typer.Option(
        MUSIC_INPUT_AUTO, "--music-input",
        help="What the cache keeps of the music: 'log-mels' (AST's 10 s float16 log-mels of each target segment and of one "
        "candidate clip: `train` then fine-tunes the AST towers, paper 4.1), 'features' (the frozen encoder's pooled "
        "vectors), or 'auto': log-mels when the profile's music encoder is AST (paper, tiny), else features (lite).",
    ),
) -> None:
    """Quartets from your own music videos, the paper's way: centre 120 s, own soundtrack as target,
    candidate = a two-tower retriever's turn-1 pick from the target's pool."""
    from bot.settings import get_settings
    from engine.checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint, load_retriever
    from engine.media import MediaLimits
    from engine.music_towers import check_tower_inputs, has_towers, load_tower_checkpoint
    from engine.profiles import load_encoders
    from training.data import RetrieverTraining, build_from_videos
    from training.features import FeatureCacheError, FeatureShardWriter, FeatureSpec

    if not folder.is_dir():
        _fail(f"{folder} is not a folder")
    chosen = [flag for flag, on in (("--retriever", retriever), ("--checkpoint", checkpoint), ("--random-candidates", random_candidates)) if on]
    if len(chosen) > 1:
        _fail(f"{' and '.join(chosen)} each choose the candidates: give one")
    if music_input not in MUSIC_INPUTS:
        _fail(f"--music-input must be one of {', '.join(MUSIC_INPUTS)}, got {music_input!r}")
    s = get_settings()
    enc = load_encoders(profile or s.profile, overrides=s.backbone_overrides, device=s.device)
    has_ast = hasattr(enc.music, "mel_shape")
    if music_input == MUSIC_INPUT_AUTO:
        music_input = MUSIC_INPUT_LOG_MELS if has_ast else MUSIC_INPUT_FEATURES
    if music_input == MUSIC_INPUT_LOG_MELS:
        if not has_ast:
            _fail(f"profile {enc.profile.name!r} has no AST music encoder ({enc.profile.music_family}): "
                  "log-mels train the AST towers; use --music-input features")
        frames, bins = enc.music.mel_shape  # type: ignore[attr-defined]
        spec = FeatureSpec.for_log_mels(enc.profile.name, video_dim=int(enc.image.dim), text_dim=int(enc.text.dim), mel_frames=frames, mel_bins=bins)
    else:
        spec = FeatureSpec(
            profile=enc.profile.name, video_dim=int(enc.image.dim), text_dim=int(enc.text.dim),
            music_dim=int(enc.music.dim), target_music_dim=int(enc.music.dim),
        )
    model = two_tower = None
    try:
        if checkpoint is not None and has_towers(checkpoint):  # trained AST towers: g_mt ranks the candidates' log-mels
            if music_input != MUSIC_INPUT_LOG_MELS:
                _fail(f"fusion checkpoint {checkpoint} has trained AST towers: its turn-1 pick ranks the candidates by g_mt "
                      "on their log-mels; build with --music-input log-mels, or pick with --retriever")
            model = load_tower_checkpoint(checkpoint, expect_profile=enc.profile.name, device=s.device)
            check_tower_inputs(model, enc.music, checkpoint)
        elif checkpoint is not None:  # the frozen encoder's pooled vectors through its music tower
            model = load_checkpoint(checkpoint, expect_profile=enc.profile.name, device=s.device)
            found, want = (model.config.video_dim, model.config.target_music_dim), (spec.video_dim, int(enc.music.dim))
            if found != want:
                raise CheckpointMismatchError(f"fusion checkpoint {checkpoint} takes (video, target music) features of sizes {found}; "
                                              f"the profile's encoders give {want}")
        if retriever is not None:
            two_tower = load_retriever(retriever, expect_profile=enc.profile.name, expect_dims=(spec.video_dim, int(enc.music.dim)), device=s.device)
    except CheckpointError as e:
        _fail(str(e))
    try:
        try:
            writer = FeatureShardWriter(out_dir, spec, shard_size=shard_size)
        except FeatureCacheError as e:
            raise FeatureCacheError(f"{e} (a cache resumes with the profile and --music-input it was built with; or write to another --out)") from None
        limits = MediaLimits(max_seconds=24 * 3600.0, max_bytes=2**34, timeout_s=s.ffmpeg_timeout_s)
        report = build_from_videos(
            folder, writer, enc, retriever=two_tower, retriever_path=retriever, model=model, model_path=checkpoint,
            random_candidates=random_candidates, training=RetrieverTraining(epochs=retriever_epochs, seed=seed, device=s.device),
            seed=seed, pool_size=pool_size, limits=limits, ffmpeg=s.ffmpeg_binary, progress=True, say=console.print,
        )
    except (FeatureCacheError, CheckpointError, ValueError) as e:
        _fail(str(e))
    writer.close()
    jsonl = out_dir / "quartets.jsonl"
    with jsonl.open("a", encoding="utf-8") as f:
        for q in report.quartets:
            f.write(json.dumps(q.to_json(), ensure_ascii=False) + "\n")
    kept = "AST log-mels (trained towers)" if music_input == MUSIC_INPUT_LOG_MELS else "pooled music features"
    out.print(
        f"{len(writer.done_ids)} quartets in {out_dir} ({len(report.quartets)} new, candidates {report.candidates}, {kept}); "
        f"{len(report.failures)} videos skipped"
    )
    for path, why in report.failures.items():
        out.print(f"  skipped {path}: {why}")


def train_command(
    data: Path = typer.Option(..., help="Feature cache (musechat data ...)."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory: state.pt, model/ (the app's checkpoint), metrics.jsonl."),
    epochs: int = typer.Option(10),
    max_steps: int = typer.Option(None),
    batch_size: int = typer.Option(34, help="Per process (paper: 34 per GPU)."),
    lr: float = typer.Option(4e-5, help="Paper: 4e-5."),
    weight_decay: float = typer.Option(5e-4, help="Paper: 5e-4."),
    warmup_steps: int = typer.Option(100),
    seed: int = typer.Option(0),
    holdout: int = typer.Option(0, help="Quartets held out for `musechat eval --holdout`."),
    variant: str = typer.Option(
        "mvt", help="mvt | sum | self_attn | cross_attn (paper Table 1) | two_tower (the turn-1 video -> music retriever of `data build`)."
    ),
    no_video: bool = typer.Option(False, "--no-video", help="The paper's 'without video' ablation."),
    no_candidate: bool = typer.Option(False, "--no-candidate", help="The paper's 'without candidate' ablation."),
    no_text: bool = typer.Option(False, "--no-text", help="The 'without text' ablation."),
    modality_dropout: bool = typer.Option(
        False, "--modality-dropout", help="Drop inputs at random in training (ours, not the paper's); the app's checkpoints use it."
    ),
    freeze_towers: bool = typer.Option(False, "--freeze-towers", help="Log-mel caches: keep the AST towers fixed (a deviation from the paper)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Log-mel caches: checkpoint the AST towers."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    resume: bool = typer.Option(False, help="Continue from OUT/state.pt."),
    save_every: int = typer.Option(500),
    fusion: str = typer.Option("{}", help="JSON FusionConfig overrides, e.g. '{\"d_model\": 128}'."),
) -> None:
    """Train MVT-Fusion (or a baseline, or the two-tower retriever) on cached features; one process (use torchrun for DDP)."""
    from bot.settings import get_settings
    from training.features import FeatureCacheError
    from training.train_fusion import MODEL_DIR, TrainConfig, dropout_label, train

    overrides = {"variant": variant, **json.loads(fusion)}
    if no_video:
        overrides["use_video"] = False
    if no_candidate:
        overrides["use_candidate"] = False
    if no_text:
        overrides["use_text"] = False
    cfg = TrainConfig(
        data=str(data), out=str(out_dir), epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed, holdout=holdout, device=device,
        resume=resume, save_every=save_every, fusion=overrides, modality_dropout=modality_dropout,
        freeze_towers=freeze_towers, gradient_checkpointing=gradient_checkpointing,
        music_backbone=get_settings().backbone_overrides.get("music"),  # log-mel caches: the towers start from it
    )
    try:
        result = train(cfg)
    except (FeatureCacheError, ValueError) as e:
        _fail(str(e))
    out.print(
        f"trained {result.step} steps, last loss {result.last_loss:.4f}, modality dropout "
        f"{dropout_label(result.model.config)}; checkpoint: {out_dir / MODEL_DIR}"
    )
    if variant == "two_tower":
        out.print(f"use it: musechat data build FOLDER --out DIR --retriever {out_dir / MODEL_DIR}")
    else:
        out.print(f"use it: MUSECHAT_FUSION_CHECKPOINT={out_dir / MODEL_DIR}")


def eval_command(
    data: Path = typer.Option(..., help="Feature cache of the test quartets."),
    checkpoint: list[str] = typer.Option([], help="NAME=DIR or DIR; repeat for more rows."),
    holdout: int = typer.Option(0, help="Evaluate the held-out split of this size (as `train --holdout`)."),
    seed: int = typer.Option(0, help="The split's seed (as `train --seed`)."),
    pool_size: int = typer.Option(500, help="Pool size (paper: 500)."),
    pool_seed: int = typer.Option(0, help="Seed of the random non-overlapping pools; metrics are averaged across pools."),
    device: str = typer.Option("cpu"),
    report: Path = typer.Option(Path("eval/results"), help="Writes REPORT.md and REPORT.json."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Add the zero-shot scorer's row (caches from `data build`)."),
) -> None:
    """Evaluate checkpoints with the paper's protocol: pools of 500, turn 1 / turn 2, R@k, MR, SR."""
    from engine.checkpoint import CheckpointError
    from training.evaluate import evaluate_checkpoints, write_report
    from training.features import FeatureCacheError, FeatureDataset

    try:
        ds = FeatureDataset(data)
        if holdout:
            _, ds = ds.split(holdout, seed=seed)
        pairs = [tuple(c.split("=", 1)) if "=" in c else (Path(c).parent.name or c, c) for c in checkpoint]
        results = evaluate_checkpoints(ds, pairs, pool_size=pool_size, pool_seed=pool_seed, device=device)  # type: ignore[arg-type]
        if zero_shot:
            from bot.settings import get_settings
            from engine.profiles import load_encoders
            from training.evaluate import evaluate_zero_shot

            s = get_settings()
            enc = load_encoders(ds.spec.profile, overrides=s.backbone_overrides, device=s.device)
            results.append(evaluate_zero_shot(data, enc.text, pool_size=pool_size, pool_seed=pool_seed, ids=ds.ids))
    except (FeatureCacheError, CheckpointError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    md, js = write_report(results, min(pool_size, len(ds)), report)
    out.print(md.read_text())
    out.print(f"written: {md}, {js}")


def register_training_commands(app: typer.Typer) -> None:
    """Add `data from-catalog`, `train` and `eval` to the `musechat` app."""
    app.add_typer(data_app, name="data")
    app.command("train")(train_command)
    app.command("eval")(eval_command)

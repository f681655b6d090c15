"""`musechat reasoner ...`: build training targets, train, evaluate and try the reasoning module (paper 4.2).

    musechat reasoner targets OUT.jsonl          # lines from the catalog's metadata and tags
    musechat reasoner train DATA.jsonl --out DIR # f_l + LoRA on the profile's LLM
    musechat reasoner eval DATA.jsonl [--checkpoint DIR] [--bertscore-model DIR] [--infolm-model DIR]  # Table 3
    musechat reasoner say TITLE [--tag T ...] [--checkpoint DIR]  # stream one justification

The LLM is the profile's (`ProfileConfig.reasoner`: Vicuna-7B for paper, SmolLM2-135M for lite,
a random tiny Llama for tiny). Music embeddings of training lines come from the catalog's feature
cache (the `track_id` of a line) or from an analysis of its `audio` file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from bot.settings import Settings, get_settings

log = logging.getLogger(__name__)

reasoner_app = typer.Typer(help="The reasoning module (paper 4.2): targets, training, evaluation.", no_args_is_help=True)


def _profile(settings: Settings):
    from engine.profiles import resolve_profile

    return resolve_profile(settings.profile, settings.backbone_overrides)


def _feature_lookup(settings: Settings):
    from bot.service.catalog_admin import FEATURES_DIR, FeatureCache, features_key

    cache = FeatureCache(Path(settings.data_dir) / FEATURES_DIR / features_key(_profile(settings)))

    def music_for_track(sha: str) -> np.ndarray | None:
        analysis = cache.get(sha)
        return None if analysis is None else analysis.music_vector

    return music_for_track


def _audio_lookup(settings: Settings, towers: Path | None = None):
    from engine.profiles import load_encoders
    from engine.tracks import analyse_track

    if towers is not None:  # paper 4.2: the mean of all output tokens of the fine-tuned g_mt
        from engine.media import decode_audio
        from engine.music_towers import load_tower_checkpoint
        from training.train_reasoner import tower_music_vector

        model = load_tower_checkpoint(towers, expect_profile=_profile(settings).name, device=settings.device)

        def music_from_towers(path: Path) -> np.ndarray:
            enc = load_encoders(_profile(settings), device=settings.device)
            audio = decode_audio(path, sample_rate=enc.music.sample_rate, ffmpeg=settings.ffmpeg_binary)
            return tower_music_vector(model, enc.music, audio)

        return music_from_towers

    def music_for_audio(path: Path) -> np.ndarray:
        enc = load_encoders(_profile(settings), device=settings.device)
        return analyse_track(path, enc, ffmpeg=settings.ffmpeg_binary).music_vector

    return music_for_audio


def _reasoner(settings: Settings, checkpoint: Path | None):
    from engine.reasoner import load_reasoner

    p = _profile(settings)
    return load_reasoner(p.reasoner, music_dim=p.music_dim, checkpoint=checkpoint, device=settings.device)


@reasoner_app.command("targets")
def targets(out: Annotated[Path, typer.Argument(help="JSONL file to write")]) -> None:
    """Write training lines built from the catalog's titles, artists, tags and tempo."""
    from storage.catalog import open_catalog
    from training.train_reasoner import build_targets

    settings = get_settings()
    catalog = open_catalog(url=settings.qdrant_url, api_key=settings.qdrant_api_key, path=settings.catalog_dir)
    try:
        lines = build_targets(rec.payload for rec in catalog.scroll_payloads())
    finally:
        catalog.close()
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    typer.echo(f"wrote {len(lines)} training lines to {out}")


@reasoner_app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Argument(help="JSONL: title, target, track_id | audio | music_vector")],
    out: Annotated[Path, typer.Option(help="checkpoint folder (LoRA + f_l)")],
    epochs: int = 3,
    lr: float = 5e-4,
    batch_size: int = 4,
    towers: Annotated[
        Path | None, typer.Option(help="a fusion run's model/ folder with trained AST towers: audio lines use its g_mt (paper 4.2)")
    ] = None,
) -> None:
    """Train f_l and the LoRA on the profile's frozen LLM, and save them for the app."""
    from engine.reasoner import MusicReasoner, ReasonerConfig, load_llm
    from training.train_reasoner import TrainConfig, read_examples, train

    settings = get_settings()
    by_track = None if towers else _feature_lookup(settings)  # cached vectors are not g_mt's
    examples = read_examples(data, music_for_track=by_track, music_for_audio=_audio_lookup(settings, towers))
    p = _profile(settings)
    model, tok = load_llm(p.reasoner, device=settings.device)
    r = MusicReasoner(model, tok, ReasonerConfig(llm=p.reasoner), p.music_dim)
    r.attach_lora()
    res = train(r, examples, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size))
    r.save(out)
    typer.echo(f"trained {res.steps} steps in {res.seconds:.1f} s: loss {res.losses[0]:.3f} -> {res.losses[-1]:.3f}; saved to {out}")


@reasoner_app.command("eval")
def eval_cmd(
    data: Annotated[Path, typer.Argument(help="JSONL with reference justifications")],
    checkpoint: Annotated[Path | None, typer.Option(help="trained LoRA + f_l")] = None,
    max_new_tokens: int = 128,
    bertscore_model: Annotated[
        Path | None, typer.Option(help="local copy of roberta-large (BERTScore's default); else the profile's text encoder, labelled")
    ] = None,
    bertscore_layer: Annotated[int, typer.Option(help="hidden-state layer of --bertscore-model (roberta-large: 17)")] = 17,
    infolm_model: Annotated[
        Path | None,
        typer.Option(help="local masked LM for InfoLM (its default: a copy of bert-base-uncased); else the profile's LLM stands in, labelled SUBSTITUTE"),
    ] = None,
    towers: Annotated[Path | None, typer.Option(help="as `train --towers`: audio lines use the fine-tuned g_mt")] = None,
) -> None:
    """Print the paper's Table 3: BERTScore F1, InfoLM AB divergence / L2 / Fisher-Rao, with the models used."""
    from engine.profiles import load_encoders
    from training.text_metrics import BertScoreConfig
    from training.train_reasoner import TextScorer, evaluate, format_table, read_examples

    settings = get_settings()
    by_track = None if towers else _feature_lookup(settings)
    examples = read_examples(data, music_for_track=by_track, music_for_audio=_audio_lookup(settings, towers))
    base = _reasoner(settings, None)
    tuned = _reasoner(settings, checkpoint) if checkpoint else None
    profile = _profile(settings)
    encoder = None if bertscore_model else load_encoders(profile, device=settings.device).text
    substitute = None
    if infolm_model is None:  # the profile's LLM in float32 (the reasoner's may decode with int8 weights)
        from engine.reasoner import load_llm

        llm, tok = load_llm(profile.reasoner, device=settings.device)
        substitute = (llm, tok, f"{profile.name}: {profile.reasoner}")
    scorer = TextScorer(
        bertscore=BertScoreConfig(model_dir=bertscore_model, num_layers=bertscore_layer),
        encoder=encoder, encoder_name=f"{profile.name}: {profile.text_backbone}", infolm_dir=infolm_model,
        infolm_substitute=substitute,
    )  # fmt: skip
    rows, labels = evaluate(base, tuned, examples, scorer, max_new_tokens=max_new_tokens)
    typer.echo(format_table(rows, labels))


@reasoner_app.command("say")
def say(
    title: str,
    tag: Annotated[list[str] | None, typer.Option(help="a tag of the track (repeatable)")] = None,
    video: str = "",
    feedback: str = "",
    checkpoint: Annotated[Path | None, typer.Option(help="trained LoRA + f_l")] = None,
    max_new_tokens: int = 64,
    grounded: Annotated[bool, typer.Option(help="facts-only prompt, each sentence checked before it is shown")] = True,
) -> None:
    """Stream one justification for a title (and tags) to the terminal; --video is the video's labels, comma-separated."""
    from engine.reasoner import REASON_SOURCE_FACTS, ReasonInput

    r = _reasoner(get_settings(), checkpoint)
    labels = tuple(v.strip() for v in video.split(",") if v.strip())
    inp = ReasonInput.of(title, tags=tuple(tag or ()), video=video, words=feedback, video_labels=labels)
    shown = False
    for piece in r.stream(inp, max_new_tokens=max_new_tokens, grounded=grounded):
        typer.echo(piece, nl=False)
        shown = True
    if grounded and not shown:
        typer.echo("(no sentence passed the fact check)", nl=False)
    source = r.source(inp, grounded=grounded)
    typer.echo(f"\n[{source}{', grounded' if grounded and source != REASON_SOURCE_FACTS else ''}]")


def register_reasoner_commands(app: typer.Typer) -> None:
    """Add `musechat reasoner ...` to the main CLI."""
    app.add_typer(reasoner_app, name="reasoner")

"""Train and evaluate the reasoning module: f_l + LoRA on a frozen LLM (paper 4.2, Table 3).

Data: JSONL, one justification per line:

    {"title": "Night Drive", "target": "A dark synth pulse that ...",
     "track_id": "<sha256>" | "audio": "path/to/file.ogg" | "music_vector": [400 floats],
     "tags": ["synth", "dark"], "feedback": "", "video": ""}

The music embedding (the mean of the track's segment vectors, `TrackAnalysis.music_vector`) comes
from the line itself, else the catalog's feature cache (`track_id`), else an analysis of `audio`
with the profile's music encoder; or, as the paper (4.2), from a fusion run's fine-tuned g_mt
(`tower_music_vector`: the mean of all its output tokens; `musechat reasoner train --towers`).

Recipe (paper 4.2): 3 epochs, AdamW at lr 5e-4 with linear decay to 0, LoRA r=32, sequences cut at
128 tokens; f_l and the LoRA train, the LLM stays frozen. Training uses the paper's training prompt,
without the title (`### Recommender: Music feature: <Music>[music token] </Music >; Generate
Recommendation: `); inference adds `Music title: [title]; `. Evaluation generates up to 128 tokens. CPU with tiny/lite, GPU with paper
(LLM in bf16; f_l and LoRA in fp32). Under torchrun each rank takes every WORLD_SIZE-th example and
the trainable gradients are averaged with all_reduce before each step (plain data parallelism
without DDP's module wrapper: the loss is not the module's forward).

`build_targets` writes training lines from catalog titles and tags (templated sentences that state
only those facts: a stand-in for human-written justifications, said so in each line's "origin").

`evaluate` gives the paper's Table 3: BERTScore F1 and InfoLM's AB divergence, L2 and Fisher-Rao
(training/text_metrics.py: the published algorithms through torchmetrics, with local copies of the
default models or a labelled substitute) of the generated justifications against the references,
plus the references' perplexity, for three rows as the paper's: the base LLM on the title alone,
the trained model on the music embedding alone (its training prompt: "Vicuna w/ Music"), and the
trained model on title + embedding (MuseChat).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.reasoner import MusicReasoner, ReasonInput
from training.text_metrics import (
    INFOLM_DEFAULT,
    BertScore,
    BertScoreConfig,
    InfoLMScore,
    bertscore,
    infolm_scores,
    infolm_scores_causal,
)

log = logging.getLogger(__name__)

ORIGIN_TEMPLATE = "template from catalog metadata and tags"
EVAL_MAX_NEW_TOKENS = 128  # paper 4.2: max length 128; evaluation generates up to 128 tokens


@dataclass(frozen=True)
class ReasonExample:
    inp: ReasonInput
    target: str


@dataclass
class TrainConfig:
    epochs: int = 3  # paper 4.2
    lr: float = 5e-4  # paper 4.2, linear decay to 0
    batch_size: int = 4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10  # steps


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # per step (this rank's batch)
    seconds: float = 0.0
    steps: int = 0


# =================================================================================================
# data
# =================================================================================================


def read_examples(
    path: str | Path,
    *,
    music_for_track: Callable[[str], np.ndarray | None] | None = None,
    music_for_audio: Callable[[Path], np.ndarray] | None = None,
) -> list[ReasonExample]:
    """Parse the JSONL (module docstring); a line whose music cannot be found raises ValueError."""
    out = []
    path = Path(path)
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        d = json.loads(line)
        if not d.get("title") or not d.get("target"):
            raise ValueError(f"{path}:{n}: a line needs a title and a target")
        vec: np.ndarray | None = None
        if d.get("music_vector") is not None:
            vec = np.asarray(d["music_vector"], dtype=np.float32)
        elif d.get("track_id") and music_for_track is not None:
            vec = music_for_track(str(d["track_id"]))
        elif d.get("audio") and music_for_audio is not None:
            audio = Path(d["audio"])
            vec = music_for_audio(audio if audio.is_absolute() else path.parent / audio)
        if vec is None:
            raise ValueError(f"{path}:{n}: no music embedding for {d['title']!r} (music_vector, track_id or audio)")
        inp = ReasonInput.of(
            str(d["title"]), music_vector=vec, tags=tuple(d.get("tags") or ()),
            words=str(d.get("feedback") or ""), video=str(d.get("video") or ""),
        )  # fmt: skip
        out.append(ReasonExample(inp, str(d["target"])))
    return out


@torch.no_grad()
def tower_music_vector(towers: Any, encoder: Any, audio: np.ndarray) -> np.ndarray:
    """x̄_mt of paper 4.2: the mean of ALL output tokens of the fine-tuned g_mt (`TowerRecommender`),
    averaged over the track's 10 s windows; `encoder` (the profile's AstMusicEncoder) cuts the
    audio and computes the log-mels.  # (D,)"""
    mels = torch.from_numpy(np.stack([encoder.log_mels(w) for w in encoder.split(audio)]))  # (W, frames, mel)
    return towers.mean_tokens(mels.to(next(towers.g_mt.parameters()).device)).mean(dim=0).float().cpu().numpy()


def build_targets(tracks: Iterable[Any], *, max_tags: int = 4) -> list[dict[str, Any]]:
    """Training lines from catalog payloads (storage TrackPayload-like: title, tags, content_hash).

    Each target says only what the reasoner's prompt holds (build_prompt: the title and the tags),
    so a reasoner trained on them learns to state facts, not to invent an artist or a tempo the
    prompt never gave it; every target passes engine/grounding.py's check against those facts.
    """
    lines = []
    for t in tracks:
        tags = [str(x) for x in dict.fromkeys(t.tags)][:max_tags]
        if not t.title or not tags:
            continue
        listed = ", ".join(tags[:-1]) + f" and {tags[-1]}" if len(tags) > 1 else tags[0]
        target = f'"{t.title}" is {listed} music. Its {tags[0]} sound is what suits the video.'
        lines.append({"track_id": t.content_hash, "title": t.title, "tags": tags, "target": target, "origin": ORIGIN_TEMPLATE})
    return lines


# =================================================================================================
# training
# =================================================================================================


def _dist() -> tuple[int, int]:
    """(rank, world size): torchrun's environment, (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and torch.distributed.is_available() and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def train(reasoner: MusicReasoner, examples: Sequence[ReasonExample], cfg: TrainConfig | None = None) -> TrainResult:
    """Train f_l + LoRA (module docstring). `reasoner` must have `attach_lora()` applied."""
    cfg = cfg or TrainConfig()
    if not reasoner.trained or reasoner.projector is None:
        raise ValueError("call reasoner.attach_lora() before training")
    if not examples:
        raise ValueError("no training examples")
    rank, world = _dist()
    mine = list(examples)[rank::world]
    params = reasoner.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(mine) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))  # linear decay to 0
    rng = random.Random(cfg.seed)
    result = TrainResult()
    t0 = time.perf_counter()
    reasoner.train()
    for epoch in range(cfg.epochs):
        order = list(range(len(mine)))
        rng.shuffle(order)
        for b in range(0, len(order), cfg.batch_size):
            batch = [(mine[i].inp, mine[i].target) for i in order[b : b + cfg.batch_size]]
            loss = reasoner.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                for p in params:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= world
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            result.losses.append(float(loss.detach()))
            result.steps += 1
            if rank == 0 and result.steps % cfg.log_every == 0:
                log.info("epoch %d step %d/%d: loss %.4f", epoch + 1, result.steps, total, result.losses[-1])
    reasoner.eval()
    result.seconds = time.perf_counter() - t0
    return result


# =================================================================================================
# evaluation (paper Table 3)
# =================================================================================================

VARIANT_BASE = "LLM, title only (untrained)"  # the paper's "Vicuna-7B" row
VARIANT_MUSIC = "w/ Music: embeddings only (trained, training prompt)"  # the paper's "Vicuna w/ Music" row
VARIANT_TUNED = "MuseChat: title + embeddings (trained)"  # the paper's "MuseChat" row

# paper Table 3: BERTScore F1, AB divergence, L2, Fisher-Rao
PAPER_TABLE3: dict[str, tuple[float, float, float, float]] = {
    "Vicuna-7B (paper)": (0.9453, 3.93, 0.382, 2.11),
    "Vicuna w/ Music (paper)": (0.9526, 2.68, 0.279, 2.02),
    "MuseChat (paper)": (0.9676, 1.51, 0.208, 1.47),
}


@dataclass(frozen=True)
class EvalRow:
    variant: str
    bertscore_f1: float
    ab_divergence: float | None  # None: InfoLM not computed (no masked LM given)
    l2_distance: float | None
    fisher_rao_distance: float | None
    perplexity: float  # of the references under the variant's prompt
    n: int


@dataclass(frozen=True)
class TextScorer:
    """How Table 3's metrics are computed (training/text_metrics.py); the labels go into the report."""

    bertscore: BertScoreConfig = field(default_factory=BertScoreConfig)
    encoder: Any = None  # the profile's TextEncoder: BERTScore's substitute when bertscore.model_dir is None
    encoder_name: str = ""
    infolm_dir: str | Path | None = None  # a local masked LM (InfoLM's default: bert-base-uncased)
    infolm_substitute: tuple[Any, Any, str] | None = None  # (causal LM, tokenizer, name): InfoLM without a masked LM

    def score(self, preds: list[str], refs: list[str]) -> tuple[BertScore, InfoLMScore | None]:
        bs = bertscore(preds, refs, config=self.bertscore if self.bertscore.model_dir is not None else None,
                       encoder=self.encoder, encoder_name=self.encoder_name)
        if self.infolm_dir is not None:
            il = infolm_scores(preds, refs, self.infolm_dir)
        elif self.infolm_substitute is not None:
            il = infolm_scores_causal(preds, refs, *self.infolm_substitute)
        else:
            il = None
        return bs, il

    def labels(self, bs: BertScore, il: InfoLMScore | None) -> list[str]:
        return [bs.label, il.label if il is not None else f"InfoLM: not computed (give a local masked LM, e.g. a copy of {INFOLM_DEFAULT})"]


@torch.no_grad()
def perplexity(reasoner: MusicReasoner, examples: Sequence[ReasonExample], *, training_prompt: bool = False) -> float:
    """exp(mean loss) of the references under the inference prompt (or the training prompt)."""
    losses = [float(reasoner.loss([(e.inp, e.target)], training_prompt=training_prompt)) for e in examples]
    return float(math.exp(np.mean(losses)))


@torch.no_grad()
def generate_from_training_prompt(reasoner: MusicReasoner, inp: ReasonInput, *, max_new_tokens: int = EVAL_MAX_NEW_TOKENS) -> str:
    """Sample a reason from the paper's training prompt (music token only), as `generate` samples (temperature 0.1)."""
    embeds = reasoner.prompt_embeds(inp, prefill=False, training=True)  # (1, T, H)
    ids = reasoner.llm.generate(
        inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
        max_new_tokens=max_new_tokens, do_sample=True, temperature=reasoner.cfg.temperature, top_p=1.0, top_k=0,
    )  # fmt: skip
    return reasoner.tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def evaluate(
    base: MusicReasoner,
    tuned: MusicReasoner | None,
    examples: Sequence[ReasonExample],
    scorer: TextScorer,
    *,
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
    seed: int = 0,
) -> tuple[list[EvalRow], list[str]]:
    """Table 3's rows and the metric labels: the base LLM on the title alone; the trained model on
    the music embedding alone (the training prompt, the paper's "Vicuna w/ Music"); the trained
    model on title + embedding (the inference prompt, no tags, video or feedback: the paper's).
    Generation: up to `max_new_tokens` (128), temperature 0.1."""
    refs = [e.target for e in examples]
    labels: list[str] = []

    def row(name: str, texts: list[str], ppl: float) -> EvalRow:
        bs, il = scorer.score([t or "" for t in texts], refs)
        labels[:] = scorer.labels(bs, il)
        log.info("table 3 row %r: BERTScore F1 %.4f", name, bs.f1)
        return EvalRow(
            name, bs.f1, il.ab_divergence if il else None, il.l2_distance if il else None,
            il.fisher_rao_distance if il else None, ppl, len(examples),
        )  # fmt: skip

    title_only = [ReasonInput.of(e.inp.facts.title) for e in examples]
    torch.manual_seed(seed)
    texts = [base.generate(i, max_new_tokens=max_new_tokens).text or "" for i in title_only]
    rows = [row(VARIANT_BASE, texts, perplexity(base, [ReasonExample(i, e.target) for i, e in zip(title_only, examples)]))]
    if tuned is not None:
        music_only = [ReasonInput.of(e.inp.facts.title, music_vector=e.inp.music_vector) for e in examples]  # the title is not read
        torch.manual_seed(seed)
        texts = [generate_from_training_prompt(tuned, i, max_new_tokens=max_new_tokens) for i in music_only]
        rows.append(row(VARIANT_MUSIC, texts, perplexity(tuned, [ReasonExample(i, e.target) for i, e in zip(music_only, examples)], training_prompt=True)))
        torch.manual_seed(seed)
        texts = [tuned.generate(i, max_new_tokens=max_new_tokens).text or "" for i in music_only]
        rows.append(row(VARIANT_TUNED, texts, perplexity(tuned, [ReasonExample(i, e.target) for i, e in zip(music_only, examples)])))
    return rows, labels


def _f(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(rows: Sequence[EvalRow], labels: Sequence[str] = (), *, paper_rows: bool = True) -> str:
    """Markdown in the layout of the paper's Table 3, the metric labels under it."""
    lines = [
        "| variant | BERTScore F1 ↑ | AB div ↓ | L2 ↓ | Fisher-Rao ↓ | perplexity (ref) | n |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.variant} | {r.bertscore_f1:.4f} | {_f(r.ab_divergence, 2)} | {_f(r.l2_distance, 3)} | {_f(r.fisher_rao_distance, 2)} "
        f"| {r.perplexity:.2f} | {r.n} |"
        for r in rows
    ]
    if paper_rows:
        lines += [f"| {name} | {a:.4f} | {b:.2f} | {c:.3f} | {d:.2f} | - | - |" for name, (a, b, c, d) in PAPER_TABLE3.items()]
    lines += [f"\n{label}" for label in labels]
    return "\n".join(lines)

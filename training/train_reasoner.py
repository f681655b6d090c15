"""Train and evaluate the reasoning module: f_l + LoRA on a frozen LLM (paper 4.2, Table 3).

Data: JSONL, one justification per line:

    {"title": "Night Drive", "target": "A dark synth pulse that ...",
     "track_id": "<sha256>" | "audio": "path/to/file.ogg" | "music_vector": [400 floats],
     "tags": ["synth", "dark"], "feedback": "", "video": ""}

The music embedding (the mean of the track's segment vectors, `TrackAnalysis.music_vector`) comes
from the line itself, else the catalog's feature cache (`track_id`), else an analysis of `audio`
with the profile's music encoder.

Recipe (paper 4.2): 3 epochs, AdamW at lr 5e-4 with linear decay to 0, LoRA r=32, sequences cut at
128 tokens; f_l and the LoRA train, the LLM stays frozen. CPU with tiny/lite, GPU with paper
(LLM in bf16; f_l and LoRA in fp32). Under torchrun each rank takes every WORLD_SIZE-th example and
the trainable gradients are averaged with all_reduce before each step (plain data parallelism
without DDP's module wrapper: the loss is not the module's forward).

`build_targets` writes training lines from catalog titles and tags (templated sentences that state
only those facts: a stand-in for human-written justifications, said so in each line's "origin").

`evaluate` reports, per variant, the mean cosine similarity between generated and reference
justifications under all-MiniLM-L6-v2 sentence embeddings (an offline encoder: NOT BERTScore, whose
RoBERTa-large weights are not available offline) and the perplexity of the references, in the
layout of the paper's Table 3: base LLM title only / LLM + music token (f_l on, LoRA off) /
fine-tuned (f_l + LoRA).
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

log = logging.getLogger(__name__)

ORIGIN_TEMPLATE = "template from catalog metadata and tags"


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
        inp = ReasonInput(
            title=str(d["title"]), music_vector=vec, tags=tuple(d.get("tags") or ()),
            feedback=str(d.get("feedback") or ""), video=str(d.get("video") or ""),
        )  # fmt: skip
        out.append(ReasonExample(inp, str(d["target"])))
    return out


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
# evaluation (paper Table 3 layout)
# =================================================================================================

VARIANT_BASE = "base LLM (title only)"
VARIANT_MUSIC = "LLM + music token (LoRA off)"
VARIANT_TUNED = "fine-tuned (f_l + LoRA)"


@dataclass(frozen=True)
class EvalRow:
    variant: str
    similarity: float  # mean MiniLM cosine, generated vs reference
    perplexity: float  # of the references under the variant
    n: int


@torch.no_grad()
def perplexity(reasoner: MusicReasoner, examples: Sequence[ReasonExample]) -> float:
    losses = [float(reasoner.loss([(e.inp, e.target)])) for e in examples]
    return float(math.exp(np.mean(losses)))


def evaluate(
    base: MusicReasoner,
    tuned: MusicReasoner | None,
    examples: Sequence[ReasonExample],
    embed: Callable[[list[str]], np.ndarray],
    *,
    max_new_tokens: int | None = None,
    seed: int = 0,
) -> list[EvalRow]:
    """One row per variant; `embed` maps sentences to (N, D) L2-normalised vectors (MiniLM)."""
    refs = embed([e.target for e in examples])  # (N, D)

    def row(name: str, model: MusicReasoner, inputs: Sequence[ReasonInput]) -> EvalRow:
        torch.manual_seed(seed)
        texts = [model.generate(i, max_new_tokens=max_new_tokens).text or "" for i in inputs]
        sims = np.sum(embed(texts) * refs, axis=1)  # (N,)
        ppl = perplexity(model, [ReasonExample(i, e.target) for i, e in zip(inputs, examples)])
        return EvalRow(name, float(sims.mean()), ppl, len(examples))

    title_only = [ReasonInput(e.inp.title) for e in examples]  # the paper's baseline: the title alone
    rows = [row(VARIANT_BASE, base, title_only)]
    if tuned is not None:
        inputs = [e.inp for e in examples]
        with tuned.llm.disable_adapter():
            rows.append(row(VARIANT_MUSIC, tuned, inputs))
        rows.append(row(VARIANT_TUNED, tuned, inputs))
    return rows


def format_table(rows: Sequence[EvalRow]) -> str:
    """Markdown table in the layout of the paper's Table 3."""
    lines = [
        "| variant | MiniLM cosine (gen vs ref) | perplexity (ref) | n |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.variant} | {r.similarity:.4f} | {r.perplexity:.2f} | {r.n} |" for r in rows]
    return "\n".join(lines)

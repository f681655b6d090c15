"""Train the MuseChat recommendation module (MVT-Fusion + target tower) on cached features (paper 4.1).

The same loop trains the dataset's turn-1 retriever (engine/retriever.py, the MVPt-style two-tower
video -> music model of paper 3): `--variant two_tower`, on whole clips of (video, own soundtrack)
with a symmetric InfoNCE; its checkpoint is a "two_tower" checkpoint (`data build --retriever`).

Paper 4.1: InfoNCE between the fused query and the target-music vector, trainable temperature
initialised at 0.1, AdamW lr 4e-5, weight decay 5e-4, batch 34 per GPU (16 x V100).

    torchrun --nproc_per_node=8 -m training.train_fusion --data FEATURES --out RUN
    python -m training.train_fusion --data FEATURES --out RUN         # one process (CPU or GPU)

- DDP: under torchrun (WORLD_SIZE > 1) the process group uses NCCL on GPU, gloo on CPU. Batches:
  each step takes a global batch of batch_size x world_size quartets from a permutation seeded by
  (seed, epoch); rank r takes every world_size-th of them, so the quartets a step sees do not
  depend on the number of ranks. `gather_negatives` all-gathers the music vectors (with gradient)
  so each query is contrasted with the whole global batch; with it, N ranks compute the same
  gradient as one process with the global batch (tested).
- Each quartet contributes one 10 s segment per epoch (video segment j with target segment j),
  drawn from (seed, epoch) alone (`FeatureDataset.segment_choice`).
- Weight decay: not on the temperature (`logit_scale`), biases, norms or the learned CLS/absent
  embeddings (open_clip's rule: only matrices decay).
- Schedule (ours, the paper gives none): linear warm-up over `warmup_steps`, then cosine to 0.
- Mixed precision: bfloat16 autocast on CUDA (no loss scaler needed); fp32 on CPU.
- Trained AST towers (paper 4.1): a log-mel cache (`FeatureSpec.music_input == "log_mels"`) trains
  g_mc and g_mt (engine/music_towers.py, from the profile's AST) with the fusion module on 10 s
  samples; `freeze_towers` keeps them fixed (a deviation), `gradient_checkpointing` trades compute
  for memory. `RUN/model/` then also holds the towers (`towers.safetensors`).
- Checkpoints: `RUN/state.pt` (model, optimizer, scheduler, step, every rank's RNG states, the
  configs) every `save_every` steps and at the end, written atomically; `resume=True` continues
  from it exactly: on CPU a resumed run is bit-identical to an uninterrupted one (tested).
  `RUN/model/` is the engine checkpoint the app loads (engine/checkpoint.py;
  MUSECHAT_FUSION_CHECKPOINT=RUN/model).
- Two-tower runs: each step takes whole clips (`FeatureDataset.clip_batch`: every segment the video
  and its soundtrack share) instead of one segment per quartet; the quartets' candidate and prompt
  are not used; gathered negatives contrast both directions with every rank's batch. On a log-mel
  cache the retriever reads its build's pooled vectors (`training.pooled.pooled_clips`, `media/`).
- Log: `RUN/metrics.jsonl`, one JSON object per `log_every` steps (step, epoch, loss, lr,
  temperature, samples/s); a tqdm bar on rank 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from engine.checkpoint import save_checkpoint
from engine.fusion import APP_MODALITY_DROPOUT, FusionConfig, MuseChatRecommender, modality_dropout_label
from engine.music_towers import TowerRecommender, load_towers, save_towers
from engine.retriever import MODEL_KIND as TWO_TOWER
from engine.retriever import RetrieverConfig, TwoTowerRetriever
from training.features import MUSIC_LOG_MELS, FeatureDataset, FeatureSpec
from training.pooled import pooled_clips

log = logging.getLogger(__name__)

PAPER_LR = 4e-5  # paper 4.1
PAPER_WEIGHT_DECAY = 5e-4  # paper 4.1
PAPER_BATCH_PER_GPU = 34  # paper 4.1
STATE_FILE = "state.pt"
MODEL_DIR = "model"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainConfig:
    data: str  # feature cache directory (training/features.py)
    out: str  # run directory: state.pt, model/, metrics.jsonl
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps in all (None: run all epochs)
    batch_size: int = PAPER_BATCH_PER_GPU  # per process
    lr: float = PAPER_LR
    weight_decay: float = PAPER_WEIGHT_DECAY
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    grad_clip: float | None = 1.0  # max gradient norm (None: off)
    seed: int = 0
    gather_negatives: bool = False  # contrast with the music of every rank's batch
    amp: bool = True  # bfloat16 autocast, CUDA only
    device: str = "auto"  # auto | cpu | cuda
    save_every: int = 500  # steps between state checkpoints
    log_every: int = 10  # steps between metrics-log lines
    resume: bool = False
    stop_at_step: int | None = None  # leave after this step, as if interrupted (the schedule stays the whole run's)
    progress: bool = True  # tqdm bar on rank 0
    holdout: int = 0  # quartets held out of training (the first of a seeded split; evaluate uses the same split)
    fusion: dict[str, Any] = field(default_factory=dict)  # FusionConfig overrides: variant, use_video, d_model, ...
    # (variant "two_tower": the retriever, and the other keys are RetrieverConfig overrides: d_model, n_layers, ...)
    modality_dropout: bool = False  # ours, not the paper's: the app's rates (APP_MODALITY_DROPOUT) unless `fusion` sets them
    # log-mel caches only (FeatureSpec.music_input == "log_mels"): the trained AST towers g_mc, g_mt
    music_backbone: str | None = None  # the towers' starting AST (default: the profile's)
    freeze_towers: bool = False  # keep g_mc and g_mt fixed: a deviation from the paper
    gradient_checkpointing: bool = False  # in the towers: less memory, more compute


def fusion_config_for(spec: FeatureSpec, overrides: dict[str, Any] | None = None, *, modality_dropout: bool = False) -> FusionConfig:
    """The FusionConfig that fits a feature cache's sizes, with overrides (variant, ablations, dims).

    `modality_dropout`: start from the app's rates (APP_MODALITY_DROPOUT); explicit p_drop_*
    overrides still win. Off (the paper) by default.
    """
    known = {f.name for f in fields(FusionConfig)}
    bad = sorted(set(overrides or {}) - known)
    if bad:
        raise ValueError(f"unknown fusion config fields {bad}")
    base = dict(APP_MODALITY_DROPOUT) if modality_dropout else {}
    return FusionConfig(
        profile=spec.profile,
        video_dim=spec.video_dim,
        text_dim=spec.text_dim,
        music_dim=spec.music_dim,
        target_music_dim=spec.target_music_dim,
        **{**base, **(overrides or {})},
    )


def retriever_config_for(spec: FeatureSpec, overrides: dict[str, Any] | None = None) -> RetrieverConfig:
    """The RetrieverConfig that fits a feature cache's sizes (video, target music), with overrides."""
    overrides = {k: v for k, v in (overrides or {}).items() if k != "variant"}
    known = {f.name for f in fields(RetrieverConfig)} - {"profile", "video_dim", "music_dim"}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"the two-tower retriever has no {bad}: it takes video only (no prompt, no candidate, no ablations); "
                         f"its settings are {sorted(known)}")
    if spec.music_input == MUSIC_LOG_MELS:
        raise ValueError("the two-tower retriever trains on cached music features; this is a log-mel cache")
    return RetrieverConfig(profile=spec.profile, video_dim=spec.video_dim, music_dim=spec.target_music_dim,
                           **{"max_segments": spec.max_segments, **overrides})


def is_two_tower(cfg: TrainConfig) -> bool:
    return cfg.fusion.get("variant") == TWO_TOWER


def dropout_label(config: FusionConfig | RetrieverConfig) -> str:
    """What a report says about modality dropout: the fusion model's, or that a retriever has none."""
    if isinstance(config, RetrieverConfig):
        return "n/a (two-tower retriever, video only)"
    return modality_dropout_label(config)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay; logit_scale, biases, norms, CLS/absent embeddings do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith("logit_scale"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup_steps: int, total_steps: int):  # noqa: ANN201 - a LambdaLR factor
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the summed gradients (open_clip)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        world = dist.get_world_size()
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)  # (W, B, d)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def _ddp_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _atomic_torch_save(obj: Any, path: Path) -> None:  # noqa: ANN401
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class TrainResult:
    step: int
    epoch: int
    last_loss: float
    model: MuseChatRecommender | TowerRecommender | TwoTowerRetriever  # unwrapped, on the training device
    run_dir: Path


def train(cfg: TrainConfig, dataset: FeatureDataset | None = None) -> TrainResult:
    """Run (or resume) training; returns the final state. Call from every rank under torchrun."""
    rank, world, local_rank = _ddp_env()
    device = _device(cfg, local_rank)
    own_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    try:
        return _train(cfg, dataset, rank, world, device)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, dataset: FeatureDataset | None, rank: int, world: int, device: torch.device) -> TrainResult:
    run = Path(cfg.out)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
    data = dataset if dataset is not None else FeatureDataset(cfg.data)
    if is_two_tower(cfg):  # the retriever reads pooled features (a log-mel cache: its build's, `pooled_clips`)
        data = pooled_clips(data)
    if cfg.holdout:
        data, _ = data.split(cfg.holdout, seed=cfg.seed)
    global_batch = cfg.batch_size * world
    steps_per_epoch = len(data) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data)} quartets do not fill one global batch of {global_batch}")
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)

    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = _build_model(cfg, data.spec).to(device)
    if isinstance(model, TwoTowerRetriever):
        missing = int((data.clip_lengths() == 0).sum())
        if missing:
            raise ValueError(f"{missing} of the {len(data)} quartets have no video: the two-tower retriever trains on "
                             "(video, own soundtrack) pairs (a `data build` cache, not `data from-catalog`)")
    if rank == 0 and isinstance(model, TwoTowerRetriever):
        log.info("training the two-tower retriever (d_model=%d, %d layers per tower) on whole clips",
                 model.config.d_model, model.config.n_layers)
    elif rank == 0:
        log.info("training %s (use_video=%s use_text=%s use_candidate=%s), modality dropout %s",
                 model.config.variant, model.config.use_video, model.config.use_text, model.config.use_candidate,
                 modality_dropout_label(model.config))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, total))
    step = 0
    state_path = run / STATE_FILE
    if cfg.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        rngs = state["rng"]
        if len(rngs) != world:
            log.warning("resuming %d-rank state with %d ranks: RNG streams restart from the seed", len(rngs), world)
            seed_everything(cfg.seed + 1000 * rank + step)
        else:
            set_rng_state(rngs[rank])
        log.info("rank %d resumed %s at step %d", rank, state_path, step)
    else:
        seed_everything(cfg.seed + rank)  # dropout streams differ per rank
    ddp_model: nn.Module = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    use_amp = cfg.amp and device.type == "cuda"

    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc="train two-tower" if isinstance(model, TwoTowerRetriever) else "train fusion", unit="step")
    log_file = open(run / METRICS_FILE, "a") if rank == 0 else None  # noqa: SIM115 - closed below
    last_loss = float("nan")
    t_log, n_log = time.perf_counter(), 0
    try:
        model.train()
        while step < total:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
            segments = data.segment_choice(cfg.seed * 100_003 + epoch + 7)
            glob = perm[in_epoch * global_batch : (in_epoch + 1) * global_batch]
            idx = glob[rank::world]
            batch = data.clip_batch(idx, device) if isinstance(model, TwoTowerRetriever) else data.batch(idx, segments, device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                if cfg.gather_negatives and world > 1:
                    loss = _gathered_loss(ddp_model, model, batch)
                else:
                    loss = ddp_model(**batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n_log += len(idx) * world
            last_loss = float(loss.detach())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", epoch=epoch)
            if log_file is not None and (step % cfg.log_every == 0 or step == total):
                now = time.perf_counter()
                row = {
                    "step": step,
                    "epoch": epoch,
                    "loss": last_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "temperature": model.loss.temperature,
                    "samples_per_s": n_log / max(now - t_log, 1e-9),
                    "modality_dropout": dropout_label(model.config),
                }
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                t_log, n_log = now, 0
            stopping = cfg.stop_at_step is not None and step >= cfg.stop_at_step
            if step % cfg.save_every == 0 or step == total or stopping:
                _save_state(cfg, run, model, optimizer, scheduler, step, rank, world)
            if stopping:
                break
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    if rank == 0:
        if isinstance(model, TowerRecommender):
            save_checkpoint(model.recommender, run / MODEL_DIR)
            save_towers(model, run / MODEL_DIR)
        else:
            save_checkpoint(model, run / MODEL_DIR)
    if world > 1:
        dist.barrier()
    return TrainResult(step=step, epoch=step // steps_per_epoch, last_loss=last_loss, model=model, run_dir=run)


def _build_model(cfg: TrainConfig, spec: FeatureSpec) -> MuseChatRecommender | TowerRecommender | TwoTowerRetriever:
    """MVT-Fusion on cached features, or inside the two trained AST towers for a log-mel cache; or the retriever."""
    if is_two_tower(cfg):
        if cfg.modality_dropout:
            raise ValueError("--modality-dropout is a fusion option: the two-tower retriever takes video only")
        return TwoTowerRetriever(retriever_config_for(spec, cfg.fusion))
    if spec.music_input != MUSIC_LOG_MELS:
        return MuseChatRecommender(fusion_config_for(spec, cfg.fusion, modality_dropout=cfg.modality_dropout))
    g_mc, g_mt = load_towers(spec.profile, cfg.music_backbone, gradient_checkpointing=cfg.gradient_checkpointing)
    frames, bins = int(g_mc.ast.config.max_length), int(g_mc.ast.config.num_mel_bins)
    if (frames, bins) != (spec.mel_frames, spec.mel_bins):
        raise ValueError(f"the towers' AST takes {frames} x {bins} log-mels, the cache holds {spec.mel_frames} x {spec.mel_bins}")
    dims = dataclasses.replace(spec, music_dim=g_mc.dim, target_music_dim=g_mt.dim, music_input="features", mel_frames=0, mel_bins=0,
                               max_candidate_segments=spec.max_candidate_segments)
    recommender = MuseChatRecommender(fusion_config_for(dims, cfg.fusion, modality_dropout=cfg.modality_dropout))
    return TowerRecommender(recommender, g_mc, g_mt, freeze_towers=cfg.freeze_towers)


def _gathered_loss(ddp_model: nn.Module, model: MuseChatRecommender | TowerRecommender | TwoTowerRetriever, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """InfoNCE against every rank's music vectors: own batch first (the positives), the rest after.

    A symmetric loss (the two-tower retriever) adds this rank's music against every rank's queries.
    """
    out = ddp_model(**batch)
    q, m = out["query"], out["music"]
    r = dist.get_rank()

    def columns(x: torch.Tensor) -> torch.Tensor:
        everyone = GatherWithGrad.apply(x)  # (W, B, d)
        return torch.cat([everyone[r], *(everyone[i] for i in range(everyone.shape[0]) if i != r)])

    if model.loss.symmetric:
        return 0.5 * (model.loss.one_way(q, columns(m)) + model.loss.one_way(m, columns(q)))
    return model.loss(q, columns(m))


def _save_state(cfg: TrainConfig, run: Path, model: MuseChatRecommender | TowerRecommender | TwoTowerRetriever, optimizer: torch.optim.Optimizer, scheduler: Any, step: int, rank: int, world: int) -> None:  # noqa: ANN401
    rng = rng_state()
    if world > 1:
        rngs: list[Any] = [None] * world
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if rank == 0:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "rng": rngs,
            "train_config": asdict(cfg),
            "fusion_config": asdict(model.config),
        }
        _atomic_torch_save(state, run / STATE_FILE)
        log.info("saved training state %s at step %d", run / STATE_FILE, step)
    if world > 1:
        dist.barrier()


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=PAPER_BATCH_PER_GPU)
    p.add_argument("--lr", type=float, default=PAPER_LR)
    p.add_argument("--weight-decay", type=float, default=PAPER_WEIGHT_DECAY)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gather-negatives", action="store_true")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--holdout", type=int, default=0)
    p.add_argument("--variant", default="mvt", choices=["mvt", "sum", "self_attn", "cross_attn", TWO_TOWER],
                   help="MVT-Fusion, a Table 1 baseline, or two_tower: the dataset's turn-1 video -> music retriever")
    p.add_argument("--no-video", action="store_true", help="the paper's 'without video' ablation")
    p.add_argument("--no-candidate", action="store_true", help="the paper's 'without candidate' ablation")
    p.add_argument("--no-text", action="store_true", help="the 'without text' ablation")
    p.add_argument("--freeze-towers", action="store_true", help="log-mel caches: keep the AST towers fixed (a deviation)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="log-mel caches: checkpoint the AST towers")
    p.add_argument("--music-backbone", default=None, help="log-mel caches: the towers' starting AST (default: the profile's)")
    p.add_argument("--modality-dropout", action="store_true",
                   help="drop inputs at random in training (ours, not the paper's; the app's checkpoints use it)")
    p.add_argument("--fusion", default="{}", help="JSON FusionConfig overrides, e.g. '{\"d_model\": 128}'")
    a = p.parse_args(argv)
    fusion = {"variant": a.variant, **json.loads(a.fusion)}
    if a.no_video:
        fusion["use_video"] = False
    if a.no_candidate:
        fusion["use_candidate"] = False
    if a.no_text:
        fusion["use_text"] = False
    return TrainConfig(
        data=a.data, out=a.out, epochs=a.epochs, max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr,
        weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, seed=a.seed, gather_negatives=a.gather_negatives,
        amp=not a.no_amp, device=a.device, save_every=a.save_every, log_every=a.log_every, resume=a.resume,
        holdout=a.holdout, fusion=fusion, modality_dropout=a.modality_dropout, freeze_towers=a.freeze_towers,
        gradient_checkpointing=a.gradient_checkpointing, music_backbone=a.music_backbone,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train(parse_args(argv))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"step": result.step, "loss": result.last_loss, "checkpoint": str(result.run_dir / MODEL_DIR),
                          "modality_dropout": dropout_label(result.model.config)}))


if __name__ == "__main__":
    main()

"""Benchmark MVT-Fusion training throughput on cached features (training/train_fusion.py).

Features are synthetic (training.features.write_synthetic_features) with the sizes of a profile,
written to a feature cache and loaded as training loads it; `training.train_fusion.train` itself
runs, so the measurement covers a real step: index the cached tensors, forward (fusion + target
tower + InfoNCE), backward, gradient clipping, AdamW, the scheduler and the metrics log line.
Two settings:
  - tiny:  the tiny profile's feature sizes (32/32/32) and a small fusion model (d 64, 4 heads, 1 layer);
  - lite:  the lite profile's sizes (EfficientNet-Lite0 1280, MiniLM 384, musicnn 400) and the
           paper's fusion model (d 256, 16 heads, 4 layers per branch);
both with 12 segments, 12 candidate tokens and 77 prompt tokens per quartet.
With trained AST towers (engine/music_towers.py; a log-mel cache of random 10 s samples, float16):
  - towers-tiny:  the tiny AST (64 frames x 16 mel bins) as g_mc and g_mt, the tiny fusion model;
  - towers-paper: the paper's AST architecture (12 layers, 768-d, 1024 frames x 128 bins, random
                  weights of the same shape as MIT/ast-finetuned-audioset-10-10-0.4593), CLIP's
                  sizes (512, 77 tokens) and the paper's fusion model: for `--device cuda`
                  (bfloat16 autocast); far too slow for a CPU.
Reported: samples/s (median over timed steps after warm-up), with the batch size (the paper's batch
is 34 per GPU), and peak memory: CUDA's peak allocated bytes, or on CPU the process's peak RSS
(which includes the interpreter and the cache).

Usage: .venv/bin/python benchmarks/bench_training.py [--settings tiny,lite,towers-tiny] [--batch-size 34]
       [--steps 20] [--device cpu|cuda] [--gradient-checkpointing] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from training.features import FeatureItem, FeatureShardWriter, FeatureSpec, write_synthetic_features
from training.features import FeatureDataset
from training.train_fusion import METRICS_FILE, TrainConfig, train

SETTINGS: dict[str, tuple[FeatureSpec, dict]] = {
    "tiny": (
        FeatureSpec(profile="tiny", video_dim=32, text_dim=32, music_dim=32, target_music_dim=32),
        {"d_model": 64, "n_heads": 4, "n_layers": 1},
    ),
    "lite": (
        FeatureSpec(profile="lite", video_dim=1280, text_dim=384, music_dim=400, target_music_dim=400),
        {},  # the paper's sizes: d 256, 16 heads, 4 layers
    ),
}
# trained towers: (profile, video dim, text dim, prompt tokens, AST frames, mel bins, fusion overrides)
TOWER_SETTINGS: dict[str, tuple[str, int, int, int, int, int, dict]] = {
    "towers-tiny": ("tiny", 32, 32, 32, 64, 16, {"d_model": 64, "n_heads": 4, "n_layers": 1}),
    "towers-paper": ("paper", 512, 512, 77, 1024, 128, {}),
}
WARMUP_STEPS = 3


def _log_mel_cache(root: Path, n: int, name: str) -> tuple[FeatureDataset, str | None]:
    """Random log-mel samples at a towers setting's sizes, and the AST folder the towers start from."""
    profile, dv, dt, n_text, frames, bins, _ = TOWER_SETTINGS[name]
    spec = FeatureSpec.for_log_mels(profile, dv, dt, frames, bins, max_segments=12, max_text_tokens=n_text)
    g = np.random.default_rng(0)
    writer = FeatureShardWriter(root / "cache", spec, shard_size=64)
    for i in range(n):
        writer.add(FeatureItem(
            id=f"q{i}", target=g.standard_normal((12, frames * bins), dtype=np.float32),
            candidate=g.standard_normal((1, frames * bins), dtype=np.float32),
            video=g.standard_normal((12, dv), dtype=np.float32), text=g.standard_normal((n_text, dt), dtype=np.float32),
        ))  # fmt: skip
    writer.close()
    backbone = None
    if profile == "paper":  # the paper's AST architecture with random weights: no hub download here
        from transformers import ASTConfig, ASTForAudioClassification

        backbone = str(root / "ast")
        ASTForAudioClassification(ASTConfig(num_labels=527)).save_pretrained(backbone)
    return FeatureDataset(root / "cache"), backbone


def bench(name: str, batch_size: int, steps: int, device: str, n_quartets: int, gradient_checkpointing: bool = False) -> dict:
    """Run `train` itself for WARMUP_STEPS + steps and read its per-step samples/s from metrics.jsonl."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        if name in TOWER_SETTINGS:
            data, backbone = _log_mel_cache(Path(tmp), n_quartets, name)
            fusion = TOWER_SETTINGS[name][-1]
        else:
            spec, fusion = SETTINGS[name]
            backbone = None
            data = write_synthetic_features(Path(tmp) / "cache", n_quartets, spec, seed=0, n_text_tokens=spec.max_text_tokens)
        cfg = TrainConfig(
            data="", out=str(Path(tmp) / "run"), epochs=10_000, max_steps=WARMUP_STEPS + steps, batch_size=batch_size,
            device=device, log_every=1, save_every=10**9, progress=False, fusion=fusion, music_backbone=backbone,
            gradient_checkpointing=gradient_checkpointing,
        )
        result = train(cfg, data)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / METRICS_FILE).read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows[WARMUP_STEPS:]]
    if device.startswith("cuda"):
        peak, kind = torch.cuda.max_memory_allocated(), "cuda allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"  # ru_maxrss: KiB on Linux
    sps = statistics.median(rates)
    return {
        "setting": name,
        "device": device,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "step_ms_p50": round(1000 * batch_size / sps, 2),
        "samples_per_s": float(f"{sps:.3g}"),
        "peak_memory_mib": round(peak / 2**20, 1),
        "peak_memory_kind": kind,
        "gradient_checkpointing": gradient_checkpointing,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=34)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quartets", type=int, default=512, help="synthetic quartets in the cache")
    p.add_argument("--settings", default="tiny,lite")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="towers settings: checkpoint the AST towers")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = [bench(s, a.batch_size, a.steps, a.device, a.quartets, a.gradient_checkpointing) for s in a.settings.split(",")]
    print("| setting | device | batch | threads | parameters | step ms (p50) | samples/s | peak memory MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['device']} | {r['batch_size']} | {r['threads']} | {r['parameters']:,} | {r['step_ms_p50']} "
              f"| {r['samples_per_s']} | {r['peak_memory_mib']} ({r['peak_memory_kind']}) |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

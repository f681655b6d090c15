"""Benchmark MVT-Fusion training throughput on cached features (training/train_fusion.py).

Features are synthetic (training.features.write_synthetic_features) with the sizes of a profile,
written to a feature cache and loaded as training loads it; `training.train_fusion.train` itself
runs, so the measurement covers a real step: index the cached tensors, forward (fusion + target
tower + InfoNCE), backward, gradient clipping, AdamW, the scheduler and the metrics log line.
Two settings:
  - tiny:  the tiny profile's feature sizes (32/32/32) and a small fusion model (d 64, 4 heads, 1 layer);
  - lite:  the lite profile's sizes (EfficientNet-Lite0 1280, MiniLM 384, musicnn 400) and the
           paper's fusion model (d 256, 16 heads, 4 layers per branch);
both with 12 segments, 12 candidate tokens and 32 prompt tokens per quartet.
Reported: samples/s (median over timed steps after warm-up), with the batch size; the paper's
batch is 34 per GPU. `--device cuda` runs the same on a GPU (bfloat16 autocast), not run here.

Usage: .venv/bin/python benchmarks/bench_training.py [--batch-size 34] [--steps 20] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from training.features import FeatureSpec, write_synthetic_features
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
WARMUP_STEPS = 3


def bench(name: str, batch_size: int, steps: int, device: str, n_quartets: int) -> dict:
    """Run `train` itself for WARMUP_STEPS + steps and read its per-step samples/s from metrics.jsonl."""
    spec, fusion = SETTINGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_features(Path(tmp) / "cache", n_quartets, spec, seed=0, n_text_tokens=spec.max_text_tokens)
        cfg = TrainConfig(
            data="", out=str(Path(tmp) / "run"), epochs=10_000, max_steps=WARMUP_STEPS + steps, batch_size=batch_size,
            device=device, log_every=1, save_every=10**9, progress=False, fusion=fusion,
        )
        result = train(cfg, data)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / METRICS_FILE).read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows[WARMUP_STEPS:]]
    sps = statistics.median(rates)
    return {
        "setting": name,
        "device": device,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "step_ms_p50": round(1000 * batch_size / sps, 2),
        "samples_per_s": round(sps, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=34)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quartets", type=int, default=512, help="synthetic quartets in the cache")
    p.add_argument("--settings", default="tiny,lite")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = [bench(s, a.batch_size, a.steps, a.device, a.quartets) for s in a.settings.split(",")]
    print("| setting | device | batch | threads | parameters | step ms (p50) | samples/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['device']} | {r['batch_size']} | {r['threads']} | {r['parameters']:,} | {r['step_ms_p50']} | {r['samples_per_s']} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

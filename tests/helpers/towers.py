"""A tiny fusion checkpoint whose AST towers were trained (training/train_fusion.py on a log-mel cache).

The tiny profile's sizes: CLIP image and text states 32-d, AST log-mels 64 frames x 16 bins. Two
optimiser steps on random samples: the towers' weights move away from the profile's AST (the test
of that is tests/training/test_train_fusion.py); what the app tests need is a real run's model/
folder (config.json, model.safetensors, towers.json, towers.safetensors) with towers that differ
from the frozen encoder's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_MEL_FRAMES, TINY_MEL_BINS = 64, 16  # engine/encoders/hf.py TinyConfig
TINY_DIM = 32  # the tiny image and text encoders' width


def train_tiny_towers(root: Path, *, seed: int = 0, steps: int = 2) -> Path:
    """Train MVT-Fusion and both AST towers for `steps` steps; the run's model/ folder."""
    from training.features import FeatureDataset, FeatureItem, FeatureShardWriter, FeatureSpec
    from training.train_fusion import MODEL_DIR, TrainConfig, train

    spec = FeatureSpec.for_log_mels("tiny", video_dim=TINY_DIM, text_dim=TINY_DIM, mel_frames=TINY_MEL_FRAMES, mel_bins=TINY_MEL_BINS,
                                    max_segments=2, max_text_tokens=4)  # fmt: skip
    g = np.random.default_rng(seed)
    writer = FeatureShardWriter(root / "cache", spec, shard_size=16)
    width = TINY_MEL_FRAMES * TINY_MEL_BINS
    for i in range(16):
        writer.add(FeatureItem(id=f"q{i:03d}", target=g.standard_normal((2, width)), candidate=g.standard_normal((1, width)),
                               video=g.standard_normal((2, TINY_DIM)), text=g.standard_normal((3, TINY_DIM))))  # fmt: skip
    writer.close()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(data="", out=str(root / "run"), batch_size=8, lr=2e-3, warmup_steps=1, progress=False, log_every=1,
                          fusion={"n_layers": 1}, max_steps=steps, seed=seed)  # fmt: skip
        train(cfg, FeatureDataset(root / "cache"))
    finally:
        torch.set_num_threads(threads)
    return root / "run" / MODEL_DIR

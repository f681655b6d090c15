"""Benchmark the memory of a log-mel feature cache (training/features.py): writing it, then an epoch.

The trained AST towers read 10 s float16 log-mels (engine/music_towers.py): at the paper's sizes
(1024 frames x 128 bins, twelve target segments and one candidate clip per quartet) a quartet is
3.5 MB, the paper's 88k quartets ~290 GB, so a cache must be written a shard at a time and read
memory-mapped. This script measures both on N synthetic quartets (random log-mels; the values do
not matter to memory), each phase in a fresh process:
  - write: `FeatureShardWriter` with its default shard size, N quartets added one by one;
  - epoch: `FeatureDataset(root)` then one epoch of training batches (`segment_choice`, `batch`,
           the paper's batch of 34, every row read once), and `--eval` every target segment too.
Reported per phase: wall seconds, the peak of the process's anonymous memory (RssAnon: the heap,
what the cache costs in RAM) and of its file-backed resident pages (RssFile: mapped pages of the
cache, which the kernel can drop and read again), sampled every 5 ms from /proc/self/status.

`--code DIR` imports `training`, `engine` and `storage` from DIR first: run it on a snapshot of
an older commit (`git archive COMMIT training engine storage | tar -x -C DIR`) for a before/after.
`--no-mmap` reads the cache with `FeatureDataset(root, mmap=False)` (everything loaded into memory).

Usage: .venv/bin/python benchmarks/bench_feature_cache.py [--n 300] [--frames 1024] [--bins 128]
       [--code DIR] [--no-mmap] [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # this checkout (the venv's editable install may point elsewhere)
BATCH = 34  # the paper's batch per GPU
SAMPLE_S = 0.005  # seconds between memory samples


class PeakMemory:
    """Peak RssAnon and RssFile of this process (kB in /proc/self/status), sampled in a thread."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peak:
                self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(SAMPLE_S)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def phase_write(root: Path, n: int, frames: int, bins: int) -> dict:
    import numpy as np

    from training.features import FeatureItem, FeatureShardWriter, FeatureSpec

    spec = FeatureSpec.for_log_mels("paper", video_dim=512, text_dim=512, mel_frames=frames, mel_bins=bins)
    g = np.random.default_rng(0)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        writer = FeatureShardWriter(root, spec)
        for i in range(n):  # a build hands over one quartet at a time (training/data.py)
            writer.add(FeatureItem(
                id=f"q{i:05d}",
                target=g.standard_normal((12, frames * bins), dtype=np.float32).astype(np.float16),
                candidate=g.standard_normal((1, frames * bins), dtype=np.float32).astype(np.float16),
                video=g.standard_normal((12, 512), dtype=np.float32),
                text=g.standard_normal((20, 512), dtype=np.float32),
            ))
        writer.close()
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "shard_size": writer.shard_size, **mem.peak}


def phase_epoch(root: Path, mmap: bool, evaluate: bool) -> dict:
    import torch

    from training.features import FeatureDataset

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        data = FeatureDataset(root, mmap=False) if not mmap else FeatureDataset(root)
        t_open = time.perf_counter() - t0
        segments = data.segment_choice(1)
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        checksum = 0.0
        for start in range(0, len(data), BATCH):
            batch = data.batch(perm[start : start + BATCH], segments)
            checksum += float(batch["target_mels"].float().sum() + batch["candidate_mels"].float().sum())
        if evaluate:  # what evaluation reads: every target segment of every quartet
            for start in range(0, len(data), BATCH):
                checksum += float(data.tensors["target"][torch.arange(start, min(start + BATCH, len(data)))].float().sum())
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "open_seconds": t_open, "quartets": len(data), "checksum": checksum, **mem.peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="synthetic quartets to write")
    p.add_argument("--frames", type=int, default=1024, help="log-mel frames per 10 s sample (paper AST: 1024)")
    p.add_argument("--bins", type=int, default=128, help="mel bins (paper AST: 128)")
    p.add_argument("--code", type=Path, default=None, help="import training/engine/storage from this folder first")
    p.add_argument("--no-mmap", action="store_true", help="load the cache into memory (FeatureDataset(mmap=False))")
    p.add_argument("--eval", action="store_true", help="also read every target segment, as evaluation does")
    p.add_argument("--keep", type=Path, default=None, help="write the cache here (kept) instead of a temporary folder")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--phase", choices=("write", "epoch"), help=argparse.SUPPRESS)  # one phase, in a child process
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    sys.path.insert(0, str((a.code or ROOT).resolve()))
    if a.phase == "write":
        print(json.dumps(phase_write(a.root, a.n, a.frames, a.bins)))
        return
    if a.phase == "epoch":
        print(json.dumps(phase_epoch(a.root, not a.no_mmap, a.eval)))
        return

    def child(phase: str, root: Path, *extra: str) -> dict:
        cmd = [sys.executable, __file__, "--phase", phase, "--root", str(root), "--n", str(a.n), "--frames", str(a.frames), "--bins", str(a.bins), *extra]
        if a.code is not None:
            cmd += ["--code", str(a.code)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp) / "cache"
        results = {"n": a.n, "frames": a.frames, "bins": a.bins, "code": str(a.code or "this checkout"), "mmap": not a.no_mmap}
        results["write"] = child("write", root)
        results["epoch"] = child("epoch", root, *(["--no-mmap"] if a.no_mmap else []), *(["--eval"] if a.eval else []))
        results["cache_bytes"] = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    mb = 2**20
    print(f"{a.n} quartets of {a.frames} x {a.bins} log-mels, cache {results['cache_bytes'] / mb:.0f} MB ({results['code']})")
    for phase in ("write", "epoch"):
        r = results[phase]
        print(f"  {phase:5s}: {r['seconds']:6.1f} s, peak RssAnon {r['RssAnon'] / mb:7.0f} MB, peak RssFile {r['RssFile'] / mb:7.0f} MB")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

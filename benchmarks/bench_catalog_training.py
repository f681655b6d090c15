"""From-catalog training vs zero-shot steering on real music (DESIGN.md, "the zero-shot recommender";
paper sections 3 and 4.1, the "without video" ablation).

On a catalog of real tracks (an evenly spaced selection of the .ogg files of the Debian game-music
packages in ~/.cache/musechat/music), analysed with the lite profile as the catalog admin does
(`engine.tracks.analyse_track`: 10 s segment music vectors, musicnn tag probabilities, rhythm;
cached in ~/.cache/musechat/bench/catalog_training/):

  1. the tracks are split into training tracks and held-out start tracks (seeded);
  2. music-only quartets (candidate, feedback words from tag differences, target) are built from
     the training tracks only with `training.data.catalog_quartets`, once per seed for several
     seeds (different candidate pools and templates), so a small catalog gives more quartets;
  3. the "without video" MVT-Fusion variant (`use_video=False`) is trained on CPU for a bounded
     number of steps (`training.train_fusion.train`);
  4. on the same held-out (start track, feedback phrase) pairs of bench_steering's PHRASES, every
     pair where some other track moves the right way on the phrase's tag / rhythm axis, the
     right-way rate of the next pick (the argmax over every other track of the catalog) for:
       - zero-shot steering: `steer` alone (bench_steering's section 1, default drift penalty);
       - zero-shot engine: `Engine` without a checkpoint, the phrase as the user's words;
       - fusion alone: `Engine` with the trained model, fusion_steering_weight 0 (the paper's
         model: query = f(candidate music, feedback tokens), cosine to the tracks' fusion vectors);
       - fusion + steering: the same with the default fusion_steering_weight;
     and, for scale, the expected rate of a uniformly random next pick.

Usage: .venv/bin/python benchmarks/bench_catalog_training.py [--json out.json] [--tracks 40]
       [--holdout 10] [--steps 150] [--batch-size 32] [--seeds 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_steering import PHRASES, Arrays, _rate, checked_values  # noqa: E402

from engine.engine import FUSION_STEERING_WEIGHT, CandidateRow, Engine, EngineConfig, TrackContext  # noqa: E402
from engine.fusion import MuseChatRecommender, track_vector  # noqa: E402
from engine.media import MediaError  # noqa: E402
from engine.profiles import Encoders, load_encoders  # noqa: E402
from engine.steering import steer  # noqa: E402
from engine.tracks import TrackAnalysis, analyse_track  # noqa: E402
from training.data import catalog_quartets  # noqa: E402
from training.features import FeatureDataset, FeatureShardWriter, FeatureSpec  # noqa: E402
from training.train_fusion import TrainConfig, train  # noqa: E402

log = logging.getLogger(__name__)

MUSIC_DIR = Path(os.environ.get("MUSECHAT_MUSIC_DIR", Path.home() / ".cache" / "musechat" / "music"))
CACHE_DIR = Path.home() / ".cache" / "musechat" / "bench" / "catalog_training"
PROFILE = "lite"
DEFAULT_TRACKS = 40  # catalog size
DEFAULT_HOLDOUT = 10  # start tracks never seen in training
DEFAULT_SEEDS = 8  # catalog_quartets passes over the training tracks (one quartet per target each)
DEFAULT_POOL = 8  # candidate pool per quartet (small: the catalog is small; paper: 2000)
DEFAULT_STEPS = 150  # optimizer steps
DEFAULT_BATCH = 32  # quartets per step (paper: 34 per GPU)
DEFAULT_LR = 5e-4  # higher than the paper's 4e-5: a few hundred steps, not 100 epochs
WARMUP_STEPS = 15
SPLIT_SEED = 0


def select_files(n: int) -> list[Path]:
    """`n` evenly spaced files of the sorted .ogg list (every package represented)."""
    files = sorted(MUSIC_DIR.glob("*/*.ogg"))
    if len(files) < n:
        raise SystemExit(f"{MUSIC_DIR} holds {len(files)} .ogg files; need {n}")
    idx = np.unique(np.linspace(0, len(files) - 1, n).round().astype(int))
    return [files[i] for i in idx]


def analyse(files: list[Path], encoders: Encoders) -> tuple[list[Path], list[TrackAnalysis]]:
    """Lite-profile analyses of the files, cached by path, size and mtime."""
    cache = CACHE_DIR / PROFILE
    cache.mkdir(parents=True, exist_ok=True)
    kept, out = [], []
    for f in files:
        rel = str(f.relative_to(MUSIC_DIR))
        key = re.sub(r"[^A-Za-z0-9._-]", "_", f"{rel}-{f.stat().st_size}-{int(f.stat().st_mtime)}")
        p = cache / f"{key}.npz"
        if p.is_file():
            a = TrackAnalysis.from_bytes(p.read_bytes())
        else:
            t0 = time.perf_counter()
            try:
                a = analyse_track(f, encoders, title=f.stem.replace("_", " ").replace("-", " ").title(), artist=f.parent.name)
            except MediaError as e:
                print(f"  skipped {rel}: {e}")
                continue
            p.write_bytes(a.to_bytes())
            print(f"  analysed {rel} in {time.perf_counter() - t0:.1f}s", flush=True)
        if len(a.segment_vectors):
            kept.append(f)
            out.append(a)
    return kept, out


def build_dataset(analyses: list[TrackAnalysis], encoders: Encoders, root: Path, seeds: int, pool: int) -> FeatureDataset:
    """Music-only quartets of the training tracks, one catalog_quartets pass per seed, concatenated."""
    spec = FeatureSpec(
        profile=encoders.profile.name,
        video_dim=int(encoders.profile.image_dim),
        text_dim=int(encoders.text.dim),
        music_dim=int(analyses[0].segment_vectors.shape[1]),
        target_music_dim=int(analyses[0].segment_vectors.shape[1]),
    )
    parts: list[FeatureDataset] = []
    for seed in range(seeds):
        writer = FeatureShardWriter(root / f"seed{seed}", spec)
        catalog_quartets(analyses, encoders.text, writer, seed=seed, pool_size=pool)
        writer.close()
        parts.append(FeatureDataset(root / f"seed{seed}"))
    ids = [f"{i}:{q}" for i, p in enumerate(parts) for q in p.ids]
    tensors = {k: torch.cat([p.tensors[k][:] for p in parts]) for k in parts[0].tensors}  # [:] reads a memory-mapped array
    return FeatureDataset.from_tensors(spec, ids, tensors)


def context(i: int, a: TrackAnalysis) -> TrackContext:
    return TrackContext(
        track_id=str(i), text=a.text_vector, tag_probs=a.tag_probs,
        rhythm=(a.tempo_bpm, a.loudness_db, a.onset_rate), segment_music=a.segment_vectors,
    )


def evaluate(
    analyses: list[TrackAnalysis], starts: list[int], encoders: Encoders, model: MuseChatRecommender
) -> dict[str, dict[str, tuple[float, int]]]:
    """Per method and phrase kind: (right, eligible) over the held-out (start, phrase) pairs; the
    "random pick (expected)" row's `right` is the expected count of a uniformly random next pick."""
    model = model.eval()
    zs = Engine(EngineConfig(profile=PROFILE), encoders=encoders)
    vocab = zs.scorer.vocabulary
    arr = Arrays(
        tags=vocab.matrix([a.tag_probs for a in analyses]),
        rhythm=np.asarray([a.rhythm_array for a in analyses], dtype=np.float32),
        text=None,
    )
    engines = {
        "fusion alone": Engine(EngineConfig(profile=PROFILE, fusion_steering_weight=0.0), encoders=encoders, fusion_model=model),
        "fusion + steering": Engine(EngineConfig(profile=PROFILE, fusion_steering_weight=FUSION_STEERING_WEIGHT), encoders=encoders, fusion_model=model),
    }
    with torch.inference_mode():
        fv = torch.stack([track_vector(model.encode_music(pooled=torch.from_numpy(np.ascontiguousarray(a.segment_vectors)))) for a in analyses])
    fusion_vecs = fv.float().numpy()  # (N, 256) the catalog's "fusion" vectors
    rows = [
        CandidateRow(track_id=str(i), text=a.text_vector, tag_probs=a.tag_probs, rhythm=(a.tempo_bpm, a.loudness_db, a.onset_rate))
        for i, a in enumerate(analyses)
    ]
    n = len(analyses)
    out: dict[str, dict[str, list[float]]] = {m: {} for m in ("random pick (expected)", "zero-shot steering", "zero-shot engine", *engines)}
    for kind, items in PHRASES.items():
        for phrase, check in items:
            vals = checked_values(check, arr, vocab)  # (N,)
            sign = check[2]
            pref = zs.scorer.parser.parse(phrase)
            for i in starts:
                others = np.delete(np.arange(n), i)
                if not np.any(sign * (vals[others] - vals[i]) > 0):
                    continue
                picks: dict[str, int] = {}
                s = steer(pref, arr.tags[i], arr.tags[others], previous_rhythm=arr.rhythm[i], candidate_rhythm=arr.rhythm[others])
                picks["zero-shot steering"] = int(others[int(np.argmax(s))])
                cand_rows = [rows[j] for j in others]
                q = zs.query(text=phrase, candidate=context(i, analyses[i]))
                picks["zero-shot engine"] = int(others[int(q.rerank(cand_rows).order[0])])
                for name, eng in engines.items():
                    q = eng.query(text=phrase, candidate=context(i, analyses[i]))
                    qv = q.vector / max(float(np.linalg.norm(q.vector)), 1e-12)
                    cos = fusion_vecs[others] @ qv  # (N-1,)
                    scored = [CandidateRow(r.track_id, r.text, r.tag_probs, r.rhythm, float(c)) for r, c in zip(cand_rows, cos, strict=True)]
                    picks[name] = int(others[int(q.rerank(scored).order[0])])
                chance = out["random pick (expected)"].setdefault(kind, [0.0, 0])
                chance[0] += float(np.mean(sign * (vals[others] - vals[i]) > 0))  # a uniformly random other track
                chance[1] += 1
                for name, pick in picks.items():
                    r = out[name].setdefault(kind, [0, 0])
                    r[0] += int(sign * (vals[pick] - vals[i]) > 0)
                    r[1] += 1
    return {m: {k: (v[0], int(v[1])) for k, v in res.items()} for m, res in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--tracks", type=int, default=DEFAULT_TRACKS)
    ap.add_argument("--holdout", type=int, default=DEFAULT_HOLDOUT)
    ap.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    ap.add_argument("--pool", type=int, default=DEFAULT_POOL)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t_all = time.perf_counter()
    encoders = load_encoders(PROFILE)
    t0 = time.perf_counter()
    files, analyses = analyse(select_files(args.tracks), encoders)
    t_analyse = time.perf_counter() - t0
    print(f"catalog: {len(analyses)} tracks from {len({f.parent.name for f in files})} packages ({t_analyse:.0f}s)")
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(analyses))
    starts = sorted(perm[: args.holdout].tolist())
    train_idx = sorted(perm[args.holdout :].tolist())

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = build_dataset([analyses[i] for i in train_idx], encoders, Path(tmp) / "features", args.seeds, args.pool)
        t_data = time.perf_counter() - t0
        print(f"quartets: {len(data)} from {len(train_idx)} training tracks ({args.seeds} seeds, pool {args.pool}; {t_data:.0f}s)")
        epochs = -(-args.steps // max(1, len(data) // args.batch_size))  # enough epochs for args.steps (last partial batch dropped)
        cfg = TrainConfig(
            data=str(Path(tmp) / "features"), out=str(Path(tmp) / "run"), epochs=epochs, max_steps=args.steps,
            batch_size=args.batch_size, lr=args.lr, warmup_steps=WARMUP_STEPS, device="cpu", progress=False,
            save_every=10**9, fusion={"use_video": False},
        )
        t0 = time.perf_counter()
        result = train(cfg, data)
        t_train = time.perf_counter() - t0
        print(f"trained 'without video' fusion: {result.step} steps x batch {args.batch_size} on CPU in {t_train:.0f}s, last loss {result.last_loss:.3f}")

    t0 = time.perf_counter()
    res = evaluate(analyses, starts, encoders, result.model)
    t_eval = time.perf_counter() - t0
    kinds = list(PHRASES)
    eligible = {k: e for k, (_, e) in res["zero-shot steering"].items()}
    print(f"\nright-way rate of the next pick, {len(starts)} held-out start tracks x {sum(len(v) for v in PHRASES.values())} phrases "
          f"(eligible pairs per kind: {eligible})")
    print(f"  {'method':<20}" + "".join(f"{k:>13}" for k in [*kinds, "all"]))
    rates = {}
    for method, r in res.items():
        rates[method] = _rate(r)
        print(f"  {method:<20}" + "".join(f"{rates[method].get(k, float('nan')):>13.1%}" for k in [*kinds, "all"]))
    report = {
        "profile": PROFILE,
        "tracks": len(analyses),
        "train_tracks": len(train_idx),
        "heldout_start_tracks": len(starts),
        "quartets": len(data),
        "seeds": args.seeds,
        "pool": args.pool,
        "steps": result.step,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "last_loss": result.last_loss,
        "fusion_steering_weight": FUSION_STEERING_WEIGHT,
        "eligible": eligible,
        "counts": {m: {k: list(v) for k, v in r.items()} for m, r in res.items()},
        "rates": rates,
        "seconds": {"analyse": t_analyse, "quartets": t_data, "train": t_train, "evaluate": t_eval, "total": time.perf_counter() - t_all},
    }
    print(f"\ntimes: analyse {t_analyse:.0f}s, quartets {t_data:.0f}s, train {t_train:.0f}s, evaluate {t_eval:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()

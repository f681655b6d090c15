"""Benchmark of the embedded music catalog (storage/catalog/edge.py) against numpy brute force.

Run: .venv/bin/python benchmarks/bench_catalog.py            (about 3 minutes on 2 cores)
     .venv/bin/python benchmarks/bench_catalog.py --quick    (smaller, for a smoke run)

What it measures, in one run over the same vectors:
- search latency p50 through `EdgeCatalog.search` (top-10, payloads decoded into dataclasses),
  without and with a 20-id exclusion filter (the tracks already shown in a conversation), and
  recall@10 against exact numpy cosine ranking;
- the same for a numpy brute-force matmul (q @ X.T, argpartition, sort) over the same vectors;
- indexing throughput: upserts (points/s) and the commit (segment merge + HNSW build);
- the exact/HNSW threshold (exact scan vs HNSW at growing sizes) and the recall/latency of
  `hnsw_ef` values, from which EdgeTuning's defaults are chosen.

Targets (DESIGN.md, "Storage"): <= 2x brute force at 20k tracks, faster than brute force at
100k, recall@10 >= 0.95. Vectors are clustered like real track vectors (a few hundred genre-like
centres + noise, cosine ~0.5 inside a cluster); uniform random 256-d vectors, the worst case for
HNSW, are reported once for reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.catalog import CatalogSchema, Hit, TrackPayload, TrackPoint, VectorSpec  # noqa: E402
from storage.catalog.edge import EdgeCatalog, EdgeTuning  # noqa: E402

DIM = 256  # fusion vector, paper section 4.1
TOP_K = 10
N_EXCLUDED = 20  # tracks already shown in a conversation
WARMUP_QUERIES = 20
SCHEMA = CatalogSchema((VectorSpec("fusion", DIM),))
TAGS = ("rock", "pop", "jazz", "ambient", "epic", "electronic", "piano", "drums")


@dataclasses.dataclass(frozen=True)
class Data:
    vectors: np.ndarray  # (N, DIM) float32, unit norm
    queries: np.ndarray  # (Q, DIM) float32, unit norm
    excluded: np.ndarray  # (Q, N_EXCLUDED) int row indices: 10 nearest + 10 random per query


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, n_queries: int, clusters: int, noise: float, seed: int) -> Data:
    """Track-like vectors: `clusters` centres + isotropic noise (noise 1.0: cosine ~0.5 in a cluster)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)  # (C, DIM)
    x = unit(centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, DIM)).astype(np.float32))
    q = unit(centres[rng.integers(0, clusters, n_queries)] + noise * rng.standard_normal((n_queries, DIM)))
    return Data(x, q, exclusions(x, q, rng))


def uniform(n: int, n_queries: int, seed: int) -> Data:
    rng = np.random.default_rng(seed)
    x = unit(rng.standard_normal((n, DIM)))
    q = unit(rng.standard_normal((n_queries, DIM)))
    return Data(x, q, exclusions(x, q, rng))


def exclusions(x: np.ndarray, q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per query: its 10 true nearest (shown in earlier turns) + 10 random tracks."""
    nearest = np.argsort(-(q @ x.T), axis=1)[:, : N_EXCLUDED // 2]  # (Q, 10)
    rows = []
    for near in nearest:
        others = rng.choice(len(x), N_EXCLUDED, replace=False)
        rows.append(np.concatenate([near, [i for i in others if i not in near][: N_EXCLUDED - len(near)]]))
    return np.stack(rows)


def truth(data: Data, exclude: bool) -> list[set[int]]:
    scores = data.queries @ data.vectors.T  # (Q, N)
    if exclude:
        np.put_along_axis(scores, data.excluded, -np.inf, axis=1)
    return [set(row.tolist()) for row in np.argsort(-scores, axis=1)[:, :TOP_K]]


def brute_force_top(x: np.ndarray, q: np.ndarray, excluded: np.ndarray | None) -> list[int]:
    """The baseline: numpy matmul over every vector, exclusion by -inf, partial sort."""
    scores = x @ q  # (N,)
    if excluded is not None:
        scores[excluded] = -np.inf
    top = np.argpartition(-scores, TOP_K)[:TOP_K]
    return top[np.argsort(-scores[top])].tolist()


def points(data: Data) -> list[TrackPoint]:
    return [
        TrackPoint(
            str(i),
            {"fusion": v},
            TrackPayload(
                title=f"Track {i}",
                artist=f"Artist {i % 500}",
                tags=(TAGS[i % len(TAGS)], TAGS[(i // 8) % len(TAGS)]),
                duration_s=60.0 + i % 240,
                licence="CC-BY-4.0",
                content_hash=f"{i:064x}",
            ),
        )
        for i, v in enumerate(data.vectors)
    ]


def build(path: Path, data: Data, tuning: EdgeTuning) -> tuple[EdgeCatalog, dict[str, float]]:
    cat = EdgeCatalog(path, SCHEMA, tuning=tuning)
    pts = points(data)
    writer = cat.begin_version()
    t0 = time.perf_counter()
    writer.upsert(pts)
    t1 = time.perf_counter()
    writer.commit()
    t2 = time.perf_counter()
    n = len(pts)
    return cat, {
        "upsert_points_per_s": n / (t1 - t0),
        "commit_s": t2 - t1,
        "indexing_points_per_s": n / (t2 - t0),
    }


def measure(cat: EdgeCatalog, data: Data, truths: dict[bool, list[set[int]]], passes: int) -> dict[str, float]:
    """p50 latency and recall@10 of the catalog and of numpy brute force, timed in pairs.

    Each query runs through both back to back (alternating which goes first), so load from
    other processes on the machine weighs on both sides alike.
    """
    x = np.ascontiguousarray(data.vectors)
    out: dict[str, float] = {}
    for exclude in (False, True):
        key = "excl" if exclude else "plain"
        excluded_ids = [[str(j) for j in row] for row in data.excluded]
        edge_times, numpy_times, recalls = [], [], []
        n_q = len(data.queries)
        for rep in range(WARMUP_QUERIES + passes * n_q):
            i = rep % n_q
            q = data.queries[i]
            shown = excluded_ids[i] if exclude else ()
            first_edge = rep % 2 == 0
            t0 = time.perf_counter()
            if first_edge:
                hits = cat.search("fusion", q, limit=TOP_K, exclude_ids=shown)
            t1 = time.perf_counter()
            brute_force_top(x, q, data.excluded[i] if exclude else None)
            t2 = time.perf_counter()
            if not first_edge:
                hits = cat.search("fusion", q, limit=TOP_K, exclude_ids=shown)
            t3 = time.perf_counter()
            if rep < WARMUP_QUERIES:
                continue
            edge_times.append((t1 - t0) if first_edge else (t3 - t2))
            numpy_times.append(t2 - t1)
            if rep < WARMUP_QUERIES + n_q:
                recalls.append(len({int(h.track_id) for h in hits} & truths[exclude][i]) / TOP_K)
        out[f"p50_ms_{key}"] = float(np.median(edge_times) * 1e3)
        out[f"numpy_p50_ms_{key}"] = float(np.median(numpy_times) * 1e3)
        out[f"recall_{key}"] = float(np.mean(recalls))
    return out


def line(label: str, m: dict[str, float]) -> str:
    return (
        f"{label:<18s} p50 {m['p50_ms_plain']:7.3f} ms (numpy {m['numpy_p50_ms_plain']:6.3f}, "
        f"{m['p50_ms_plain'] / m['numpy_p50_ms_plain']:4.2f}x)   "
        f"excl-20 {m['p50_ms_excl']:7.3f} ms (numpy {m['numpy_p50_ms_excl']:6.3f}, "
        f"{m['p50_ms_excl'] / m['numpy_p50_ms_excl']:4.2f}x)   "
        f"recall@10 {m['recall_plain']:.3f} / {m['recall_excl']:.3f}"
    )


def run_size(n: int, args: argparse.Namespace, root: Path, report: dict) -> None:
    data = clustered(n, args.queries, args.clusters, args.noise, seed=n)
    truths = {False: truth(data, False), True: truth(data, True)}
    x = np.ascontiguousarray(data.vectors)
    assert all(set(brute_force_top(x, q, None)) == t for q, t in zip(data.queries, truths[False]))
    print(f"\n== {n} tracks, clustered ({args.clusters} centres, noise {args.noise}), "
          f"{args.queries} queries x {args.passes} passes ==")
    row: dict = {"n": n}

    exact, stats = build(root / f"exact-{n}", data, EdgeTuning(hnsw_min_points=n + 1))
    row["exact"] = {**measure(exact, data, truths, args.passes), **stats}
    exact.close()
    print(line("edge exact", row["exact"]))
    print(f"{'':18s} indexing: upsert {stats['upsert_points_per_s']:,.0f} pts/s, commit {stats['commit_s']:.1f} s")

    # The production tuning, except that the graph is built whatever the size.
    hnsw, stats = build(root / f"hnsw-{n}", data, EdgeTuning(hnsw_min_points=1, hnsw_ef=args.ef))
    assert hnsw.search_mode == "hnsw"
    row["hnsw"] = {**stats}
    for ef in args.efs:
        hnsw.tuning = dataclasses.replace(hnsw.tuning, hnsw_ef=ef)
        row["hnsw"][f"ef{ef}"] = measure(hnsw, data, truths, args.passes)
        print(line(f"edge HNSW ef={ef}", row["hnsw"][f"ef{ef}"]))
    hnsw.close()
    print(f"{'':18s} indexing: upsert {stats['upsert_points_per_s']:,.0f} pts/s, commit (HNSW build) "
          f"{stats['commit_s']:.1f} s, overall {stats['indexing_points_per_s']:,.0f} pts/s")
    report["sizes"].append(row)


def run_threshold(args: argparse.Namespace, root: Path, report: dict) -> None:
    print(f"\n== exact scan vs HNSW (ef={args.ef}) by catalog size, clustered ==")
    for n in args.threshold_sizes:
        data = clustered(n, args.queries, args.clusters, args.noise, seed=n)
        truths = {False: truth(data, False), True: truth(data, True)}
        exact, _ = build(root / f"t-exact-{n}", data, EdgeTuning(hnsw_min_points=n + 1))
        e = measure(exact, data, truths, args.passes)
        exact.close()
        # filtered_full_scan_points=1: search the graph even where Qdrant's planner would scan.
        forced = EdgeTuning(hnsw_min_points=1, hnsw_ef=args.ef, filtered_full_scan_points=1)
        hnsw, stats = build(root / f"t-hnsw-{n}", data, forced)
        h = measure(hnsw, data, truths, args.passes)
        hnsw.close()
        report["threshold"].append({"n": n, "exact": e, "hnsw": h, "hnsw_commit_s": stats["commit_s"]})
        print(line(f"{n:>7d} exact", e))
        print(line(f"{n:>7d} HNSW", h) + f"   build {stats['commit_s']:.2f} s")


def run_uniform(args: argparse.Namespace, root: Path, report: dict) -> None:
    n = args.uniform_size
    data = uniform(n, args.queries, seed=1)
    truths = {False: truth(data, False), True: truth(data, True)}
    hnsw, _ = build(root / f"u-hnsw-{n}", data, EdgeTuning(hnsw_min_points=1, filtered_full_scan_points=1))
    print(f"\n== {n} tracks, uniform random 256-d (HNSW worst case) ==")
    report["uniform"] = {"n": n}
    for ef in args.efs:
        hnsw.tuning = dataclasses.replace(hnsw.tuning, hnsw_ef=ef)
        m = measure(hnsw, data, truths, passes=1)
        report["uniform"][f"ef{ef}"] = m
        print(line(f"edge HNSW ef={ef}", m))
    hnsw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--threshold-sizes", type=int, nargs="+", default=[1_000, 2_000, 5_000, 10_000])
    parser.add_argument("--uniform-size", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the queries")
    parser.add_argument("--clusters", type=int, default=300)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--efs", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--ef", type=int, default=EdgeTuning().hnsw_ef, help="the ef the targets are judged at")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.threshold_sizes, args.uniform_size, args.queries, args.passes = [5_000], [1_000], 5_000, 50, 1
    logging.basicConfig(level=logging.WARNING)

    report: dict = {"config": {k: str(v) for k, v in vars(args).items()}, "sizes": [], "threshold": []}
    root = Path(tempfile.mkdtemp(prefix="bench_catalog-"))
    try:
        for n in args.sizes:
            run_size(n, args, root, report)
        run_threshold(args, root, report)
        run_uniform(args, root, report)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

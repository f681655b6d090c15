"""Benchmark of the embedded music catalog (storage/catalog/edge.py) against numpy brute force.

Run: .venv/bin/python benchmarks/bench_catalog.py            (about 3 minutes on 2 cores)
     .venv/bin/python benchmarks/bench_catalog.py --quick    (smaller, for a smoke run)

What it measures, in one run over the same vectors:
- search latency p50 through `EdgeCatalog.search` (top-10, payloads decoded into dataclasses),
  without and with a 20-id exclusion filter (the tracks already shown in a conversation), and
  recall@10 against exact numpy cosine ranking;
- the same for a numpy brute-force matmul (X @ q, argpartition, sort) over the same vectors,
  timed in blocks alternating with the catalog's; the baseline is the faster of numpy's
  default BLAS threading and a single BLAS thread;
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
import contextlib
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # then only numpy's default threading is timed
    threadpool_limits = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.catalog import CatalogSchema, TrackPayload, TrackPoint, VectorSpec  # noqa: E402
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


def single_blas_thread() -> contextlib.AbstractContextManager[object]:
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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
    """p50 latency and recall@10 of the catalog and of numpy brute force over the same queries.

    The three contestants run in alternating blocks of all queries, pass after pass, so load
    from other processes weighs on each alike; not query by query, because OpenBLAS threads
    keep spinning for a while after a call and would slow whatever runs right after them.
    """
    x = np.ascontiguousarray(data.vectors)
    n_q = len(data.queries)
    out: dict[str, float] = {}
    for exclude in (False, True):
        key = "excl" if exclude else "plain"
        shown = [[str(j) for j in row] if exclude else [] for row in data.excluded]
        hits: list[list] = [[] for _ in range(n_q)]
        times: dict[str, list[float]] = {"edge": [], "numpy_1thread": [], "numpy_threads": []}

        def edge(i: int) -> None:
            hits[i] = cat.search("fusion", data.queries[i], limit=TOP_K, exclude_ids=shown[i])

        def numpy(i: int) -> None:
            brute_force_top(x, data.queries[i], data.excluded[i] if exclude else None)

        for _ in range(passes):
            for name, fn, ctx in (
                ("edge", edge, contextlib.nullcontext),
                ("numpy_1thread", numpy, single_blas_thread),
                ("numpy_threads", numpy, contextlib.nullcontext),
            ):
                with ctx():
                    for i in range(WARMUP_QUERIES):
                        fn(i % n_q)
                    for i in range(n_q):
                        t0 = time.perf_counter()
                        fn(i)
                        times[name].append(time.perf_counter() - t0)
        out[f"p50_ms_{key}"] = float(np.median(times["edge"]) * 1e3)
        out[f"p90_ms_{key}"] = float(np.percentile(times["edge"], 90) * 1e3)
        # The baseline is the faster of numpy's default BLAS threading and one thread: on a
        # loaded 2-core machine OpenBLAS threads can spin against each other.
        out[f"numpy_threads_p50_ms_{key}"] = float(np.median(times["numpy_threads"]) * 1e3)
        out[f"numpy_1thread_p50_ms_{key}"] = float(np.median(times["numpy_1thread"]) * 1e3)
        out[f"numpy_p50_ms_{key}"] = min(out[f"numpy_threads_p50_ms_{key}"], out[f"numpy_1thread_p50_ms_{key}"])
        recall = [len({int(h.track_id) for h in got} & want) / TOP_K for got, want in zip(hits, truths[exclude])]
        out[f"recall_{key}"] = float(np.mean(recall))
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
    summarize(args, report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def summarize(args: argparse.Namespace, report: dict) -> None:
    """Check the targets at the chosen ef: <= 2x brute force at 20k, faster at 100k, recall >= 0.95."""
    print(f"\n== targets at ef={args.ef} ==")
    for row in report["sizes"]:
        m = row["hnsw"][f"ef{args.ef}"]
        bound = 2.0 if row["n"] <= 20_000 else 1.0
        for key in ("plain", "excl"):
            ratio = m[f"p50_ms_{key}"] / m[f"numpy_p50_ms_{key}"]
            ok = ratio <= bound and m[f"recall_{key}"] >= 0.95
            print(f"{row['n']:>7d} tracks {key:<5s}: {m[f'p50_ms_{key}']:.3f} ms vs numpy "
                  f"{m[f'numpy_p50_ms_{key}']:.3f} ms = {ratio:.2f}x (target <= {bound:g}x), "
                  f"recall@10 {m[f'recall_{key}']:.3f} (target >= 0.95): {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()

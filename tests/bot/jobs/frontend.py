"""A scripted front-end process: N conversations of T turns at once through one `App` (bot/app.py).

Used by the worker-process tests and by benchmarks/bench_workers.py as "a bot front-end": it
opens the application from the environment's settings (MUSECHAT_*; `--schema`: a PostgreSQL
schema), runs the conversations concurrently and prints one JSON line per turn (what the user saw:
the track, its reason, the latency, or the chat sentence of an error), then a last line
`{"done": ...}`.

Usage: python -m tests.bot.jobs.frontend --prefix fe1 --conversations 50 --turns 3 [--video V | --video-dir D] [--schema S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from bot.app import App
from bot.service.errors import ConversationError
from bot.settings import Settings
from engine.media import MediaError

FEEDBACK = ("more drums, less sad", "another", "calmer, with piano", "more upbeat")
OPENINGS = ("calm piano for a wedding video", "epic orchestral battle", "happy upbeat pop", "dark ambient drones")


async def conversation(svc, i: int, args: argparse.Namespace, emit) -> None:
    """One conversation: a start (the video, or words), then feedback turns; each turn emitted."""
    cid = None
    for turn in range(1, args.turns + 1):
        t0 = time.perf_counter()
        line: dict = {"conv": f"{args.prefix}-{i}", "turn": turn}
        try:
            if turn == 1:
                video = None
                if args.video_dir is not None:  # every conversation its own video (its own features job)
                    clips = sorted(args.video_dir.glob("*.mp4"))
                    video = clips[i % len(clips)]
                elif args.video and i % args.video_every == 0:
                    video = args.video
                text = "" if video else OPENINGS[i % len(OPENINGS)]
                r = await svc.start(video=video, text=text, channel_id=f"{args.prefix}-{i}", user_id=f"u{i}")
                cid = r.conversation_id
            else:
                words = FEEDBACK[(i + turn) % len(FEEDBACK)]
                r = await (svc.another(cid) if words == "another" else svc.message(cid, words))
            line |= {"id": r.conversation_id, "index": r.turn_index, "kind": r.kind.value,
                     "track": r.track.track_id if r.track else None, "reason": r.track.reason if r.track else None}  # fmt: skip
        except (ConversationError, MediaError) as exc:
            line |= {"error": type(exc).__name__, "message": exc.user_message}
        except Exception as exc:
            logging.getLogger(__name__).exception("conversation %s turn %d", line["conv"], turn)
            line |= {"error": type(exc).__name__, "message": str(exc)}
        line["latency_s"] = time.perf_counter() - t0
        emit(line)
        if "error" in line:
            return


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prefix", required=True)
    p.add_argument("--conversations", type=int, default=1)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--video", type=Path)
    p.add_argument("--video-dir", type=Path, help="conversation i starts with the i-th video of this folder")
    p.add_argument("--video-every", type=int, default=1, help="every k-th conversation starts with the video (else words)")
    p.add_argument("--schema", help="PostgreSQL schema (MUSECHAT_DATABASE_URL)")
    p.add_argument("--go-file", type=Path, help="wait until this file exists before starting (several front-ends at once)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    app = await App.open(settings, sql_schema=args.schema)

    def emit(line: dict) -> None:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    try:
        svc = await app.service()
        emit({"ready": True})
        while args.go_file is not None and not args.go_file.exists():
            await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await asyncio.gather(*(conversation(svc, i, args, emit) for i in range(args.conversations)))
        emit({"done": True, "elapsed_s": time.perf_counter() - t0})
    finally:
        await app.close()


if __name__ == "__main__":
    asyncio.run(main())

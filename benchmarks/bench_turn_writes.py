"""Benchmark turn writes on PostgreSQL with concurrent conversations (DESIGN.md, "Scale").

Each of N conversations (20 by default) runs as its own task and stores T turns one after the
other, the way the conversation service does it, in two modes:

  1. ``locked``: the bot's whole persistence cycle of a turn: take the conversation lock
     (pg_advisory_lock on its own connection), read the tracks already shown, store the turn with
     its K recommendations (one transaction), release the lock;
  2. ``write``: ``ConversationStore.add_turn`` alone (one transaction: bump the turn counter,
     insert the turn, insert K recommendations).

Reports turns per second over the whole run and the per-turn latency (p50, p95, max) of each mode,
and checks afterwards that every conversation holds turns 1..T with no gap. The tables live in a
fresh schema of the target database, dropped at the end.

Usage: .venv/bin/python benchmarks/bench_turn_writes.py [--url URL] [--conversations 20]
       [--turns 50] [--recommendations 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.conversation_store import ConversationStore, Recommendation
from storage.db import make_engine, safe_url, upgrade
from storage.locks import conversation_lock

DEFAULT_URL = os.environ.get("MUSECHAT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
WARMUP_TURNS = 2  # per conversation, not timed: connections opened, statements prepared


@dataclass(frozen=True)
class Result:
    mode: str
    conversations: int
    turns: int  # timed turns in all
    wall_s: float
    turns_per_s: float
    p50_ms: float
    p95_ms: float
    max_ms: float


async def _run_mode(
    mode: str, engine: AsyncEngine, store: ConversationStore, cids: list[int], turns: int, recs: int
) -> Result:
    latencies: list[float] = []

    async def one_turn(cid: int, k: int) -> float:
        picks = [
            Recommendation(rank=r + 1, track_id=f"{cid:08d}{k:04d}{r:02d}", score=0.9 - 0.1 * r, reason="bench")
            for r in range(recs)
        ]
        turn = {"mode": "zero-shot", "user_text": "more drums", "video_sha256": "a" * 64,
                "timings": {"search_s": 0.001}, "recommendations": picks}  # fmt: skip
        started = time.perf_counter()
        if mode == "locked":
            async with conversation_lock(engine, cid):
                await store.shown_track_ids(conversation_id=cid)
                await store.add_turn(conversation_id=cid, **turn)  # type: ignore[arg-type]
        else:
            await store.add_turn(conversation_id=cid, **turn)  # type: ignore[arg-type]
        return time.perf_counter() - started

    async def talk(cid: int) -> None:
        for k in range(WARMUP_TURNS):
            await one_turn(cid, -1 - k)
        await warmed.wait()
        for k in range(turns):
            latencies.append(await one_turn(cid, k))

    warmed = asyncio.Barrier(len(cids) + 1)  # timing starts when every conversation is warm
    tasks = [asyncio.create_task(talk(cid)) for cid in cids]
    await warmed.wait()
    began = time.perf_counter()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    ms = sorted(x * 1000 for x in latencies)
    return Result(
        mode=mode,
        conversations=len(cids),
        turns=len(ms),
        wall_s=round(wall, 3),
        turns_per_s=round(len(ms) / wall, 1),
        p50_ms=round(statistics.median(ms), 2),
        p95_ms=round(ms[int(0.95 * (len(ms) - 1))], 2),
        max_ms=round(ms[-1], 2),
    )


async def main(args: argparse.Namespace) -> list[Result]:
    url = make_url(args.url).set(drivername="postgresql")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url.render_as_string(hide_password=False), timeout=5)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    results: list[Result] = []
    try:
        await upgrade(args.url, schema=schema)
        engine = make_engine(args.url, schema=schema)
        store = ConversationStore(engine)
        try:
            for mode in ("locked", "write"):
                cids = [
                    (await store.get_or_create_conversation(
                        platform="discord", channel_id=f"{mode}-{i}", platform_user_id=f"u{i}", profile="lite"
                    )).id
                    for i in range(args.conversations)
                ]  # fmt: skip
                results.append(await _run_mode(mode, engine, store, cids, args.turns, args.recommendations))
                for cid in cids:  # every conversation holds turns 1..T with no gap
                    indexes = [t.index for t in await store.list_turns(conversation_id=cid)]
                    assert indexes == list(range(1, args.turns + WARMUP_TURNS + 1)), (cid, indexes)
        finally:
            await engine.dispose()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
    return results


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL URL (a schema is created and dropped)")
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--turns", type=int, default=50, help="timed turns per conversation")
    parser.add_argument("--recommendations", type=int, default=5, help="recommendations stored per turn")
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    results = asyncio.run(main(args))
    print(f"turn writes on {safe_url(args.url)}: {args.conversations} concurrent conversations, "
          f"{args.turns} turns each, {args.recommendations} recommendations per turn")  # fmt: skip
    print(f"{'mode':<8} {'turns':>6} {'wall s':>8} {'turns/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for r in results:
        print(f"{r.mode:<8} {r.turns:>6} {r.wall_s:>8.2f} {r.turns_per_s:>9.1f} "
              f"{r.p50_ms:>8.2f} {r.p95_ms:>8.2f} {r.max_ms:>8.2f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)

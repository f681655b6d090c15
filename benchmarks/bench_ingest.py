"""Catalog ingestion of a real library the project has never used (issue 15, the "Catalog" target).

Target: every real audio file in the held-out packages is indexed or skipped with a stated reason.

1. fetches Debian game packages not used by the demo (`apt-get download`, `dpkg-deb -x`, as
   scripts/fetch_music.sh does; cached in ~/.cache/musechat/heldout/): their music *and* their
   sound effects, as an admin would point the bot at a game's data folder;
2. registers each package's `usr/share/games/<game>` folder and runs one real refresh through the
   application (bot/app.py: the catalog admin, the lite profile by default, the default minimum
   length and content checks), then reads `status()` as `musechat catalog status` does;
3. accounts for every audio file independently of the indexer: the judge walks the extracted
   packages and recognises audio by its **content** (file signatures: RIFF/WAVE, OggS, fLaC, ID3 /
   MPEG sync, Impulse Tracker, Scream Tracker 3, FastTracker 2, ProTracker), not by the extension
   list the indexer scans. Each such file must be a track of the live catalog, a skipped file with
   a non-empty reason, or a reported duplicate of one; anything else is "unaccounted" (target: 0).

Prints the counts per package and per reason, and the indexing speed (a loaded 2-core machine is
slow: the speed is for information, not a target).

Usage: .venv/bin/python benchmarks/bench_ingest.py [--json out.json] [--profile lite] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import App  # noqa: E402
from bot.service.catalog_admin import reason_counts  # noqa: E402
from bot.settings import Settings  # noqa: E402

CACHE = Path.home() / ".cache" / "musechat" / "heldout"
# packages of other styles than the demo's (wesnoth, supertux, hedgewars, extremetuxracer)
PACKAGES = ("chromium-bsu-data", "frozen-bubble-data", "lincity-ng-data", "pingus-data", "warzone2100-music")


def fetch(pkg: str) -> Path:
    """The package's extracted tree (downloaded once)."""
    root = CACHE / "x" / pkg
    if (root / ".complete").exists():
        return root
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{pkg}_*.deb")):
        print(f"[ingest] downloading {pkg} from Debian", file=sys.stderr)
        if subprocess.run(["apt-get", "download", pkg], cwd=debs).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(next(debs.glob(f"{pkg}_*.deb"))), str(root)], check=True)
    (root / ".complete").touch()
    return root


def is_audio(path: Path) -> bool:
    """Audio by content (module docstring, 3): the judge, independent of the indexer's extensions."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return (
        (head[:4] == b"RIFF" and head[8:12] == b"WAVE")
        or head[:4] in (b"OggS", b"fLaC", b"IMPM")
        or head[:3] == b"ID3"
        or _mpeg_frame(head)
        or head[:17] == b"Extended Module: "
        or head[44:48] == b"SCRM"
        or _protracker(path)
    )


def _mpeg_frame(head: bytes) -> bool:
    """An MPEG audio frame header: sync, no reserved version / layer / bitrate / rate (a UTF-16 BOM is not one)."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer, bitrate, rate = (head[1] >> 3) & 3, (head[1] >> 1) & 3, head[2] >> 4, (head[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate != 0xF and rate != 3


def _protracker(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(1080)
            return f.read(4) in (b"M.K.", b"M!K!", b"FLT4", b"4CHN", b"6CHN", b"8CHN")
    except OSError:
        return False


async def refresh(folders: list[Path], data: Path, profile: str):
    settings = Settings(_env_file=None, data_dir=data, profile=profile, allow_random_weights=profile == "tiny")
    app = await App.open(settings)
    try:
        admin = app.admin()
        for folder in folders:
            await admin.add_folder(folder)
        t0 = time.perf_counter()
        report = await admin.refresh(trigger="bench")
        seconds = time.perf_counter() - t0
        status = await admin.status()
        live = await admin.versions.live()
        tracks = await admin.tracks.list_tracks(catalog_version_id=live.id) if live else []
        return report, status, tracks, seconds
    finally:
        await app.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--profile", default="lite")
    ap.add_argument("--keep", type=Path, help="data directory to keep (default: a temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    roots = {pkg: fetch(pkg) for pkg in PACKAGES}
    folders = [g for root in roots.values() for g in sorted((root / "usr" / "share" / "games").iterdir())]
    audio = {pkg: sorted(p.resolve() for p in root.rglob("*") if p.is_file() and is_audio(p)) for pkg, root in roots.items()}

    with tempfile.TemporaryDirectory() as tmp:
        data = args.keep or Path(tmp) / "data"
        report, status, tracks, seconds = asyncio.run(refresh(folders, data, args.profile))

    indexed = {Path(t.source_path).resolve() for t in tracks}
    skipped = {Path(f.path).resolve(): f.reason for f in status.failures if f.stage == "analyse" and f.reason}
    copies = {Path(a).resolve(): Path(b).resolve() for a, b in status.duplicates}
    per_package, unaccounted = {}, []
    for pkg, files in audio.items():
        c = Counter()
        for p in files:
            if p in indexed:
                c["indexed"] += 1
            elif p in skipped:
                c["skipped"] += 1
            elif p in copies and (copies[p] in indexed or copies[p] in skipped):
                c["duplicate"] += 1
            else:
                c["unaccounted"] += 1
                unaccounted.append(str(p))
        per_package[pkg] = {"audio files": len(files), **c}
    result = {
        "profile": args.profile,
        "packages": per_package,
        "audio_files": sum(len(v) for v in audio.values()),
        "indexed": len(indexed),
        "skipped": len(skipped),
        "duplicates": len(copies),
        "unaccounted": unaccounted,
        "skipped_reasons": reason_counts(status.failures),
        "excerpts_missing": [f.path for f in status.failures if f.stage == "excerpt"],
        "decoders": dict(Counter(t.attributes.get("decoder", "ffmpeg") for t in tracks)),
        "title_sources": dict(Counter(t.attributes.get("title_source", "?") for t in tracks)),
        "refresh_s": round(seconds, 1),
        "tracks_per_minute": round(report.tracks_per_minute, 2),
        "x_realtime": round(report.x_realtime, 1),
        "target_met": not unaccounted,
    }
    for pkg, c in per_package.items():
        print(f"{pkg:22s} " + ", ".join(f"{k} {v}" for k, v in c.items()))
    print(f"audio files (by content) {result['audio_files']}: indexed {result['indexed']}, skipped {result['skipped']} "
          f"{result['skipped_reasons']}, duplicates {result['duplicates']}, unaccounted {len(unaccounted)}")  # fmt: skip
    print(f"decoders {result['decoders']}, titles from {result['title_sources']}")
    print(f"refresh {seconds:.0f} s, {result['tracks_per_minute']} tracks/min, {result['x_realtime']}x real time (loaded machine)")
    print("TARGET MET" if result["target_met"] else f"TARGET MISSED: {unaccounted[:10]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

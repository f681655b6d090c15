"""Catalog administration: music folders, incremental refreshes, status (DESIGN.md, "Who uses it").

Admins register music folders (`add_folder`, persisted in SQL `catalog_sources`) and refresh the
catalog, now (`musechat catalog refresh`) or on a schedule (bot/service/scheduler.py). A refresh:

1. scans every registered folder for audio files and hashes them (sha256; a hash index under the
   data directory, keyed by path, size and mtime, spares re-reading unchanged files); the same
   audio found twice is one track, described by the first path (the others are reported);
2. reads each file's tags (mutagen: title, artist, genre, licence), the folder's admin manifest
   (CSV or JSON: file name -> title, artist, licence, tags) and the licence and title rules below;
3. analyses only new or changed audio (`engine.tracks.analyse_tracks`: the paper's centre 120 s
   in twelve 10 s segments, musicnn top-5 MTT + top-5 MSD tags, rhythm, excerpt window, sentence
   vector). Results go to a feature cache keyed by content hash (`<data_dir>/features/<profile
   key>/ab/<sha256>.npz`), written file by file, so unchanged files are never decoded again and a
   refresh that crashed or was interrupted resumes where it stopped. Only the sentence vector is
   recomputed when a track's metadata changed but its audio did not;
4. cuts each track's listening excerpt into the media store at indexing time (so no audio is
   decoded during a conversation) and remembers its hash beside the features;
5. builds a new catalog version from every current track (SQL `CatalogVersionStore.start` ->
   `catalog.begin_version` -> upsert all points -> `commit` -> `finish`), which goes live in one
   atomic switch; files that were deleted are simply not in it. Any failure before the switch
   aborts the build: the previous version keeps serving. Points are built and upserted
   WRITE_BATCH tracks at a time from the feature cache, so memory does not grow with the catalog.

What is not a music track is skipped with a reason (`skip_reason`, listed in the refresh's report
and in `status()`): a file ffmpeg cannot open that libsndfile cannot read either ("not audio"; one
libsndfile reads is analysed from its decode, engine/sndfile.py, and its excerpt cut from a WAV
of the window), one shorter than `min_duration_s` ("too short (1.0 s < 10 s)", from the header,
before any decoding), silence and constant tones ("silence", "constant tone", on the decoded
window: engine/screening.py), and damaged files ("decode failed: ..."). The rest are indexed; but
a refresh in which every file failed, or a registered folder that has vanished (an unmounted
disk), fails instead of publishing an emptied catalog. Every run is recorded in the `jobs` table,
with its counts and failures (`status()` shows them). Skipped files are probed again by the next
refresh (a file may have been replaced): a too-short one costs a probe, a silent one a decode.

Title of a track, first found: the file's own TITLE tag; the manifest's entry; the file name
("battle-epic_2.ogg" -> "Battle Epic 2"), or, when the file name is generic (song, track, audio,
untitled, a bare number: `engine.tracks.generic_name`), its folder's name ("Rainy Days/song.ogg"
-> "Rainy Days", "album/track25.opus" -> "Album 25"). Where it came from is kept in the track's
SQL attributes (`title_source`). The artist is the manifest's, else the file's.

Licence of a track, first found: the manifest's entry; the folder's `licence` (`--licence`);
the file's own LICENSE tag; "see copyright" when a Debian `copyright` file lies in the file's
folder or above it inside the registered folder (its path is kept in the track's SQL attributes).

Catalog points: vectors "text" (sentence vector) and "music" (mean music embedding) always,
"fusion" (paper 4.1 and 5: the MVT-Fusion target-music tower `encode_music` on each 10 s segment
vector, then `track_vector`, their L2-normalised mean: 256-d) only when a fusion checkpoint is
given: the schema
(`catalog_schema`) depends on that. A checkpoint with trained AST towers (engine/music_towers.py)
makes that vector from g_mt instead: every track's analysed 10 s segments are decoded again (once
per checkpoint), turned into AST log-mels and run through g_mt and the tower head
(`engine.music_towers.tower_track`, as training/evaluate.py); the candidate clip g_mc will read at
turn k >= 2 (the segment the listening excerpt centres on) is kept with the vector, in a cache of
that checkpoint (`catalog_layout.TowerCache`, `features/<profile key>/towers-<fusion_id>/`). Each
point's payload records the checkpoint's `fusion_id` (also for checkpoints without towers), so the
conversation service refuses a catalog built with other weights (bot/service/conversation.py).
Point ids: the catalog takes integers or UUIDs, so a track's id is the UUID made of the first 128 bits of its sha256 (`track_id_for`), deterministic across
refreshes and processes; the full hash is in the payload (`content_hash`) and keys the SQL
`tracks` row, whose `attributes` hold the excerpt reference (`TrackPayload` has no free fields).
Payload tags are lower-case display names (metadata + manifest + musicnn), so `CatalogFilter
.tags_any` should be given lower-case tags; `tag_probs` keeps the tagger's 100 prefixed names
("mtt:guitar") for feedback steering.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.service.catalog_layout import (  # noqa: F401 - re-exported
    FEATURES_DIR,
    FeatureCache,
    TowerCache,
    TrackAnalysisCodec,
    catalog_schema,
    features_key,
)
from bot.service.pool import CATALOG, ModelPool
from engine.media import (
    MediaError,
    MediaLimits,
    MediaTimeoutError,
    NoAudioStreamError,
    NotMediaError,
    TooLargeError,
    TooLongError,
)
from engine.profiles import Encoders, ProfileConfig
from engine.render import EXCERPT_FADE_S, ExcerptFormat, cut_excerpt
from engine.screening import MIN_TRACK_S, NotMusicError
from engine.sndfile import DECODER as SNDFILE_DECODER
from engine.sndfile import sndfile_to_wav
from engine.tracks import (
    TrackAnalysis,
    TrackJob,
    analyse_tracks,
    decode_track,
    display_tag,
    sentence_vectors,
    title_from_path,
    title_source,
    track_text,
)
from storage.catalog import (
    DEFAULT_KEEP_VERSIONS,
    FUSION_VECTOR,
    MUSIC_VECTOR,
    TEXT_VECTOR,
    MusicCatalog,
    TrackPayload,
    TrackPoint,
)
from storage.catalog.ids import track_id_for
from storage.feature_cache import HashIndex
from storage.job_store import JobRun, JobSchedule, JobStore
from storage.media_store import MediaStore
from storage.models import CatalogStatus as VersionStatus
from storage.models import JobStatus
from storage.source_store import CatalogSource, SourceStore
from storage.track_store import (
    CatalogVersion,
    CatalogVersionStore,
    TrackInfo,
    TrackStore,
)

log = logging.getLogger(__name__)

REFRESH_JOB = "catalog_refresh"  # jobs.kind of a refresh run
AUDIO_EXTENSIONS = frozenset({
    ".ogg", ".oga", ".opus", ".mp3", ".flac", ".wav", ".m4a", ".aac", ".wma", ".aif", ".aiff", ".aifc", ".mka", ".wv",
    ".caf", ".au", ".w64",
    ".it", ".xm", ".s3m", ".mod",  # tracker modules (game music): ffmpeg renders them with libopenmpt
})  # fmt: skip
COPYRIGHT_FILE = "copyright"  # Debian's per-package licence file
SEE_COPYRIGHT = "see copyright"  # the licence recorded for tracks covered by such a file
MANIFEST_FILE_COLUMNS = ("file", "filename", "path", "name")
MANIFEST_TAG_SEPARATORS = re.compile(r"[;|,]")
GENRE_SEPARATORS = re.compile(r"[;/,]")
FFMPEG_LOG_TAG = re.compile(r"\[[^\]\[]* @ 0x[0-9a-f]+\]\s*")  # the "[component @ address]" of ffmpeg's log lines
MAX_LICENCE_LEN = 128  # characters, the SQL column's size
MAX_REPORTED_FAILURES = 200  # failures kept in a job's detail (the log has them all)
CATALOG_LIMITS = MediaLimits(max_seconds=6 * 3600.0, max_bytes=2**31, timeout_s=120.0)  # music files: long mixes allowed
HASH_INDEX_FILE = "hashes.json"
WRITE_BATCH = 256  # tracks read back, embedded (sentences) and upserted together while writing a version

ProgressCallback = Callable[["RefreshProgress"], None]


# =================================================================================================
# errors and results
# =================================================================================================


class CatalogAdminError(Exception):
    """Something an admin must fix (a missing folder, a broken manifest); `str(e)` says what."""


class ManifestError(CatalogAdminError, ValueError):
    """The admin manifest cannot be read."""


class RefreshInProgressError(CatalogAdminError):
    """A refresh is already running in this process."""


@dataclass(frozen=True)
class FileFailure:
    path: str
    stage: str  # "analyse" (the track was skipped) | "excerpt" (indexed without an excerpt)
    error: str  # the error's type and message, for the admin
    reason: str = ""  # the short reason (`skip_reason`): "too short (1.0 s < 10 s)", "silence", "not audio", ...

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "stage": self.stage, "reason": self.reason or self.error, "error": self.error}

    @classmethod
    def of(cls, path: str | Path, stage: str, exc: BaseException) -> FileFailure:
        return cls(str(path), stage, f"{type(exc).__name__}: {exc}", skip_reason(exc, path))


def skip_reason(exc: BaseException, path: str | Path | None = None) -> str:
    """The short reason an admin reads for a file a refresh skipped (or indexed without an excerpt).

    "too short (1.0 s < 10 s)", "silence", "constant tone" (engine/screening.py), "not audio",
    "too long", "too large", "decode timed out", "decode failed: <what ffmpeg said>", "unreadable: ...".
    """
    if isinstance(exc, NotMusicError):
        return exc.reason
    if isinstance(exc, (NotMediaError, NoAudioStreamError)):
        return "not audio"
    if isinstance(exc, TooLongError):
        return "too long"
    if isinstance(exc, TooLargeError):
        return "too large"
    if isinstance(exc, MediaTimeoutError):
        return "decode timed out"
    detail = FFMPEG_LOG_TAG.sub("", str(exc))  # "[in#0 @ 0x55...] ": an address, different each run
    if path is not None:
        detail = detail.removeprefix(f"{path}: ")
    if isinstance(exc, MediaError):
        return f"decode failed: {detail}"
    if isinstance(exc, OSError):
        return f"unreadable: {exc.strerror or detail}"
    return f"{type(exc).__name__}: {detail}"


def reason_counts(failures: list[FileFailure]) -> dict[str, int]:
    """Skipped files per kind of reason ("too short": 3, "silence": 1), most frequent first."""
    counts: dict[str, int] = {}
    for f in failures:
        if f.stage == "analyse":
            kind = re.split(r" \(|:", f.reason or f.error, maxsplit=1)[0]
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


@dataclass(frozen=True)
class RefreshProgress:
    """One step of a refresh, for a progress bar: `done` of `total` in `stage`."""

    stage: str  # "scan" | "analyse" | "towers" | "excerpt" | "write"
    done: int
    total: int
    path: str = ""
    outcome: str = ""  # analyse: "analysed" | "failed"


@dataclass
class RefreshReport:
    """What a refresh did (also stored, as JSON, in the job's detail)."""

    job_id: int
    catalog_version_id: int | None = None  # SQL catalog_versions.id of the version built
    version_name: str = ""  # the catalog's version (edge shard / server collection)
    files: int = 0  # audio files found
    tracks: int = 0  # tracks in the new version (distinct content)
    analysed: int = 0  # tracks decoded and embedded in this run
    reused: int = 0  # tracks whose features came from the cache
    text_updated: int = 0  # cached tracks whose sentence vector was recomputed (metadata changed)
    tower_tracks: int = 0  # tracks whose trained-towers vector and candidate clip were computed in this run
    excerpts_cut: int = 0
    added: int = 0  # content not in the previous live version
    changed: int = 0  # paths whose content differs from the previous live version
    removed: int = 0  # content of the previous live version that is gone
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (skipped path, kept path): same audio
    failures: list[FileFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. manifest entries that match no file
    seconds: float = 0.0
    analysed_audio_s: float = 0.0  # seconds of audio embedded in this run
    analyse_s: float = 0.0  # wall-clock seconds spent analysing

    @property
    def x_realtime(self) -> float:
        """Seconds of audio analysed per second of analysis (0 when nothing was analysed)."""
        return self.analysed_audio_s / self.analyse_s if self.analyse_s > 0 else 0.0

    @property
    def tracks_per_minute(self) -> float:
        return 60.0 * self.analysed / self.analyse_s if self.analyse_s > 0 else 0.0

    def to_detail(self) -> dict[str, Any]:
        return {
            "catalog_version_id": self.catalog_version_id,
            "version_name": self.version_name,
            "files": self.files,
            "tracks": self.tracks,
            "analysed": self.analysed,
            "reused": self.reused,
            "text_updated": self.text_updated,
            "tower_tracks": self.tower_tracks,
            "excerpts_cut": self.excerpts_cut,
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "duplicates": [list(d) for d in self.duplicates[:MAX_REPORTED_FAILURES]],
            "failed": len(self.failures),
            "failures": [f.to_json() for f in self.failures[:MAX_REPORTED_FAILURES]],
            "notes": self.notes[:MAX_REPORTED_FAILURES],
            "seconds": round(self.seconds, 3),
            "analysed_audio_s": round(self.analysed_audio_s, 3),
            "analyse_s": round(self.analyse_s, 3),
        }


@dataclass(frozen=True)
class CatalogStatus:
    """What `musechat catalog status` shows."""

    live: CatalogVersion | None  # the SQL record of the live version
    live_points: int  # points in the live catalog version (what searches see)
    live_version_name: str | None  # the catalog's live version (edge shard / server collection)
    folders: list[CatalogSource]
    last_runs: list[JobRun]  # newest first
    failures: list[FileFailure]  # of the newest finished run
    duplicates: list[tuple[str, str]]  # of the newest finished run: (skipped path, path of the same audio kept)
    running: JobRun | None  # a refresh in progress (this or another process)
    schedule: JobSchedule | None
    schema: dict[str, int]  # vector name -> dimension the refresh builds


# =================================================================================================
# small pure helpers
# =================================================================================================


def _split_tags(value: Any, pattern: re.Pattern[str]) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        out += [t.strip().lower() for t in pattern.split(str(item)) if t.strip()]
    return list(dict.fromkeys(out))


def _clean_licence(value: Any) -> str:
    return str(value or "").strip()[:MAX_LICENCE_LEN]


@dataclass(frozen=True)
class FileTags:
    """What a file's own metadata says (mutagen)."""

    title: str = ""
    artist: str = ""
    genres: tuple[str, ...] = ()
    licence: str = ""


def read_file_tags(path: Path) -> FileTags:
    """Title, artist, genre(s) and licence from the file's tags; empty for untagged or unreadable files."""
    import mutagen

    try:
        f = mutagen.File(path, easy=True)
    except Exception as exc:  # noqa: BLE001 - mutagen raises many types on odd files; probe judges the audio
        log.debug("no readable tags in %s: %s", path, exc)
        return FileTags()
    if f is None or not f.tags:
        return FileTags()
    tags = f.tags

    def first(*keys: str) -> str:
        for key in keys:
            try:
                values = tags.get(key)
            except (KeyError, ValueError):
                continue
            if values:
                return str(values[0] if isinstance(values, list) else values).strip()
        return ""

    genres: list[str] = []
    try:
        genres = _split_tags(tags.get("genre"), GENRE_SEPARATORS)
    except (KeyError, ValueError):
        pass
    return FileTags(
        title=first("title"),
        artist=first("artist", "albumartist", "performer", "composer"),
        genres=tuple(genres),
        licence=_clean_licence(first("license", "licence")),
    )


@dataclass(frozen=True)
class ManifestEntry:
    title: str = ""
    artist: str = ""
    licence: str = ""
    tags: tuple[str, ...] = ()


def load_manifest(path: Path) -> dict[str, ManifestEntry]:
    """Read an admin manifest: file name (relative to the folder) -> ManifestEntry.

    CSV: a header row with a file column ("file", "filename", "path" or "name") and any of
    "title", "artist", "licence"/"license", "tags" (tags separated by ";", "|" or ",").
    JSON: a list of objects with "file", or {"tracks": [...]}, or {file name: {...}}; "tags" a list
    or a separated string. Raises ManifestError with the line or entry at fault.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc}") from exc
    rows: list[tuple[str, Mapping[str, Any]]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest {path} is not valid JSON: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("tracks"), list):
            data = data["tracks"]
        if isinstance(data, dict):
            items = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, list):
            items = []
            for i, obj in enumerate(data):
                name = _manifest_file(obj) if isinstance(obj, Mapping) else None
                if not name:
                    raise ManifestError(f"manifest {path}: entry {i} has no \"file\"")
                items.append((name, obj))
        else:
            raise ManifestError(f"manifest {path}: expected a list of tracks or an object")
        for name, obj in items:
            if not isinstance(obj, Mapping):
                raise ManifestError(f"manifest {path}: the entry of {name!r} is not an object")
            rows.append((name, obj))
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = {c.strip().lower() for c in reader.fieldnames or []}
        if not columns & set(MANIFEST_FILE_COLUMNS):
            raise ManifestError(f"manifest {path}: the header needs a file column ({', '.join(MANIFEST_FILE_COLUMNS)})")
        for line, raw in enumerate(reader, start=2):
            obj = {str(k).strip().lower(): v for k, v in raw.items() if k is not None}
            name = _manifest_file(obj)
            if not name:
                raise ManifestError(f"manifest {path}, line {line}: no file name")
            rows.append((name, obj))
    else:
        raise ManifestError(f"manifest {path}: use a .csv or .json file")
    entries: dict[str, ManifestEntry] = {}
    for name, obj in rows:
        entries[Path(name.strip()).as_posix()] = ManifestEntry(
            title=str(obj.get("title") or "").strip(),
            artist=str(obj.get("artist") or "").strip(),
            licence=_clean_licence(obj.get("licence") or obj.get("license")),
            tags=tuple(_split_tags(obj.get("tags"), MANIFEST_TAG_SEPARATORS)),
        )
    return entries


def _manifest_file(obj: Mapping[str, Any]) -> str | None:
    for key in MANIFEST_FILE_COLUMNS:
        value = obj.get(key)
        if value and str(value).strip():
            return str(value).strip()
    return None


def _manifest_lookup(manifest: Mapping[str, ManifestEntry], rel: str) -> tuple[str | None, ManifestEntry | None]:
    """The manifest entry of a file: by its path relative to the folder, else by its bare name."""
    if rel in manifest:
        return rel, manifest[rel]
    name = rel.rsplit("/", 1)[-1]
    if name in manifest:
        return name, manifest[name]
    return None, None


def find_copyright(path: Path, root: Path) -> Path | None:
    """A Debian `copyright` file in the file's folder or a parent, up to the registered folder."""
    folder = path.parent
    while True:
        candidate = folder / COPYRIGHT_FILE
        if candidate.is_file():
            return candidate
        if folder == root or root not in folder.parents:
            return None
        folder = folder.parent


def scan_folder(root: Path) -> Iterator[Path]:
    """Audio files under `root` (by extension), sorted, hidden files and folders skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                yield Path(dirpath) / name


# =================================================================================================
# persistence: registered folders (SQL) and the feature cache (files)
# =================================================================================================


# =================================================================================================
# the service
# =================================================================================================


@dataclass
class _Track:
    """One distinct audio content found by a scan, with its metadata."""

    path: Path
    sha: str
    source: CatalogSource
    title: str
    artist: str
    tags: tuple[str, ...]  # metadata genres + manifest tags, lower-case
    licence: str
    attributes: dict[str, Any]  # tag sources, licence source, ...
    analysis: TrackAnalysis | None = None
    excerpt: dict[str, Any] | None = None
    tower: Any = None  # engine.music_towers.TowerTrack, while a batch is written (trained towers only)


class CatalogAdmin:
    """Registered folders, incremental refreshes and status (module docstring).

    `encoders`: an `Encoders`, or a function returning one, called only when a refresh has
    something to embed (status, add and a refresh with nothing new load no model). `fusion`: a
    loaded MVT-Fusion model (`load_fusion`: a `MuseChatRecommender`, or a `TowerRecommender` when
    the checkpoint trained the AST towers) when a checkpoint is configured; the catalog must then
    have been opened with `catalog_schema(profile, fusion=True)`. `fusion_id`: the checkpoint's
    fingerprint (`engine.music_towers.fusion_id`), recorded in every point; required with towers.
    """

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        catalog: MusicCatalog,
        media_store: MediaStore,
        data_dir: Path,
        encoders: Encoders | Callable[[], Encoders],
        profile: ProfileConfig | None = None,
        fusion: Any | None = None,
        fusion_id: str = "",
        limits: MediaLimits = CATALOG_LIMITS,
        ffmpeg: str | None = None,
        excerpt_format: ExcerptFormat = "ogg",
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
        pool: ModelPool | None = None,
        min_duration_s: float = MIN_TRACK_S,
        check_content: bool = True,
    ) -> None:
        if isinstance(encoders, Encoders):
            profile = encoders.profile
        elif profile is None:
            raise ValueError("give the profile (engine.profiles.resolve_profile) when encoders are loaded lazily")
        self.profile: ProfileConfig = profile
        self.catalog = catalog
        self.media_store = media_store
        self.fusion = fusion
        self.fusion_id = fusion_id if fusion is not None else ""
        from engine.music_towers import TowerRecommender

        self.towers: TowerCache | None = None  # the trained towers' per-track vectors and candidate clips
        if isinstance(fusion, TowerRecommender):
            if not fusion_id:
                raise ValueError("a fusion model with trained AST towers needs its checkpoint's fusion_id (engine.music_towers.fusion_id)")
            self.towers = TowerCache(Path(data_dir), profile, fusion_id)
        self.limits = limits
        self.ffmpeg = ffmpeg
        self.excerpt_format = excerpt_format
        self.keep_versions = keep_versions
        self.min_duration_s = min_duration_s  # shorter files are skipped ("too short")
        self.check_content = check_content  # silence and constant tones are skipped (engine/screening.py)
        self.sources = SourceStore(engine)
        self.tracks = TrackStore(engine)
        self.versions = CatalogVersionStore(engine)
        self.jobs = JobStore(engine)
        self.features = FeatureCache(Path(data_dir) / FEATURES_DIR / features_key(profile))
        self._hash_index_path = Path(data_dir) / FEATURES_DIR / HASH_INDEX_FILE
        self._encoders = encoders
        self._lock = asyncio.Lock()
        self.pool = pool  # shared with the conversation service in `serve`: refresh work takes the catalog lane

    async def _model_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One model call of a refresh: on the shared pool's catalog lane (users' turns first), else a thread."""
        if self.pool is not None:
            return await self.pool.run(fn, *args, lane=CATALOG)
        return await asyncio.to_thread(fn, *args)

    # --- folders ------------------------------------------------------------------------------

    async def add_folder(self, folder: str | Path, *, manifest: str | Path | None = None, licence: str | None = None) -> CatalogSource:
        """Register a music folder (again: replaces its manifest and licence). Indexed by the next refresh."""
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise CatalogAdminError(f"{path} is not a folder")
        manifest_path = None
        if manifest is not None:
            manifest_path = Path(manifest).expanduser().resolve()
            if not manifest_path.is_file():
                raise CatalogAdminError(f"manifest {manifest_path} does not exist")
            await asyncio.to_thread(load_manifest, manifest_path)  # refuse a broken manifest now, not at refresh
        if licence is not None and len(licence.strip()) > MAX_LICENCE_LEN:
            raise CatalogAdminError(f"a licence is at most {MAX_LICENCE_LEN} characters")
        source = await self.sources.upsert(path=path, manifest_path=manifest_path, licence=_clean_licence(licence))
        log.info("catalog folder %s registered (manifest %s, licence %r)", path, manifest_path, source.licence)
        return source

    async def remove_folder(self, folder: str | Path) -> bool:
        """Forget a folder; its tracks leave the catalog at the next refresh. False if it was not registered."""
        path = Path(folder).expanduser().resolve()
        removed = await self.sources.delete(path=path)
        if not removed and path != Path(folder):
            removed = await self.sources.delete(path=Path(folder))
        if removed:
            log.info("catalog folder %s removed; its tracks leave at the next refresh", path)
        return removed

    async def list_folders(self) -> list[CatalogSource]:
        return await self.sources.list()

    # --- status -------------------------------------------------------------------------------

    async def status(self) -> CatalogStatus:
        """The live version, what searches see, folders, recent runs and the newest run's failures."""
        live = await self.versions.live()
        runs = await self.jobs.list_runs(kind=REFRESH_JOB, limit=10)
        finished = next((r for r in runs if r.status is not JobStatus.RUNNING), None)
        failures = [FileFailure(**f) for f in (finished.detail.get("failures", []) if finished else [])]
        duplicates = [(str(a), str(b)) for a, b in (finished.detail.get("duplicates", []) if finished else [])]
        # a server catalog answers over the network: off the event loop
        catalog_live = await asyncio.to_thread(self.catalog.live_version)
        points = await asyncio.to_thread(self.catalog.count)
        return CatalogStatus(
            live=live,
            live_points=points,
            live_version_name=catalog_live.name if catalog_live else None,
            folders=await self.sources.list(),
            last_runs=runs,
            failures=failures,
            duplicates=duplicates,
            running=next((r for r in runs if r.status is JobStatus.RUNNING), None),
            schedule=await self.jobs.get_schedule(kind=REFRESH_JOB),
            schema=self.catalog.schema.to_json(),
        )

    # --- refresh ------------------------------------------------------------------------------

    def _get_encoders(self) -> Encoders:
        if not isinstance(self._encoders, Encoders):
            self._encoders = self._encoders()
        return self._encoders

    def _check_schema(self) -> None:
        names = set(self.catalog.schema.names)
        if TEXT_VECTOR not in names or MUSIC_VECTOR not in names:
            raise CatalogAdminError(f"the catalog schema {self.catalog.schema.to_json()} lacks the text and music vectors")
        if (FUSION_VECTOR in names) != (self.fusion is not None):
            wanted = "with" if self.fusion is not None else "without"
            raise CatalogAdminError(
                f"the catalog was opened with vectors {sorted(names)} but the refresh runs {wanted} a fusion "
                f"checkpoint: open it with catalog_schema(profile, fusion={self.fusion is not None})"
            )

    async def refresh(self, *, progress: ProgressCallback | None = None, trigger: str = "manual") -> RefreshReport:
        """Bring the catalog up to date with the registered folders (module docstring). One at a time.

        Raises RefreshInProgressError if one is running here; CatalogAdminError for a vanished folder,
        a broken manifest, a schema mismatch or a run where every file failed; any exception (or
        cancellation) leaves the previous version live, recorded as a failed job and version.
        """
        if self._lock.locked():
            raise RefreshInProgressError("a catalog refresh is already running")
        async with self._lock:
            return await self._refresh(progress or (lambda _: None), trigger)

    async def _refresh(self, progress: ProgressCallback, trigger: str) -> RefreshReport:
        t0 = time.perf_counter()
        job = await self.jobs.start_run(kind=REFRESH_JOB, detail={"trigger": trigger, "profile": self.profile.name})
        report = RefreshReport(job_id=job.id)
        writer = None
        version = None
        hashes = HashIndex(self._hash_index_path)
        try:
            self._check_schema()
            tracks = await self._scan(report, hashes, progress)
            previous = await self._previous_live()
            tracks = await self._analyse(tracks, report, progress)
            tracks = await self._tower_pass(tracks, report, progress)
            if report.files and not tracks:
                raise CatalogAdminError(f"every one of the {report.files} audio files failed; the live catalog is unchanged")
            self._compare(tracks, previous, report)

            writer = await asyncio.to_thread(self.catalog.begin_version)
            version = await self.versions.start(collection=writer.name)
            report.catalog_version_id, report.version_name = version.id, writer.name
            infos = await self._write(tracks, writer, report, progress)
            await self.tracks.upsert(infos, catalog_version_id=version.id)
            await asyncio.to_thread(writer.commit)  # <- the new version is live from here
            report.tracks = len(infos)
            await self.versions.finish(version_id=version.id, track_count=len(infos), failed_count=len(report.failures))
            try:
                await asyncio.to_thread(self.catalog.drop_old_versions, self.keep_versions)
            except Exception:  # noqa: BLE001 - housekeeping; the refresh itself succeeded
                log.exception("dropping old catalog versions failed")
            report.seconds = time.perf_counter() - t0
            await self.jobs.finish_run(job_id=job.id, status=JobStatus.SUCCEEDED, detail=report.to_detail())
            log.info(
                "catalog refresh %d: version %s live with %d tracks (%d analysed, %d reused, %d failed) in %.1fs",
                job.id, writer.name, report.tracks, report.analysed, report.reused, len(report.failures), report.seconds,
            )  # fmt: skip
            return report
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if writer is not None and not writer.finished:
                writer.abort()
            report.seconds = time.perf_counter() - t0
            await asyncio.shield(self._record_failure(job.id, version, report, error))
            log.error("catalog refresh %d failed, the live catalog is unchanged: %s", job.id, error)
            raise
        finally:
            try:
                await asyncio.to_thread(hashes.save)
            except OSError:
                log.exception("saving the hash index failed")

    async def _record_failure(self, job_id: int, version: CatalogVersion | None, report: RefreshReport, error: str) -> None:
        if version is not None:
            current = await self.versions.get(version_id=version.id)
            if current is not None and current.status is VersionStatus.BUILDING:
                await self.versions.fail(version_id=version.id, error=error, failed_count=len(report.failures))
        await self.jobs.finish_run(job_id=job_id, status=JobStatus.FAILED, detail=report.to_detail(), error=error)

    async def _previous_live(self) -> dict[str, str]:
        """source path -> content hash of the tracks of the live SQL version."""
        live = await self.versions.live()
        if live is None:
            return {}
        return {t.source_path: t.content_hash for t in await self.tracks.list_tracks(catalog_version_id=live.id)}

    async def _scan(self, report: RefreshReport, hashes: HashIndex, progress: ProgressCallback) -> list[_Track]:
        sources = await self.sources.list()
        missing = [str(s.path) for s in sources if not s.path.is_dir()]
        if missing:
            raise CatalogAdminError(
                f"registered folder(s) {', '.join(missing)} are missing (unmounted?); fix or remove them "
                "(musechat catalog remove) before refreshing"
            )
        files = await asyncio.to_thread(lambda: [(s, p) for s in sources for p in scan_folder(s.path)])
        report.files = len(files)
        manifests = {}
        for s in sources:
            if s.manifest_path is not None:
                manifests[s.id] = await asyncio.to_thread(load_manifest, s.manifest_path)
        used_entries: dict[int, set[str]] = {s.id: set() for s in sources}
        by_sha: dict[str, _Track] = {}
        for i, (source, path) in enumerate(files):
            progress(RefreshProgress("scan", i, len(files), str(path)))
            try:
                sha = await asyncio.to_thread(hashes.sha256, path)
                file_tags = await asyncio.to_thread(read_file_tags, path)
            except OSError as exc:
                report.failures.append(FileFailure.of(path, "analyse", exc))
                continue
            if sha in by_sha:
                report.duplicates.append((str(path), str(by_sha[sha].path)))
                continue
            rel = path.relative_to(source.path).as_posix()
            key, entry = _manifest_lookup(manifests.get(source.id, {}), rel)
            if key is not None:
                used_entries[source.id].add(key)
            by_sha[sha] = await asyncio.to_thread(self._describe, path, sha, source, file_tags, entry)  # stats files
        progress(RefreshProgress("scan", len(files), len(files)))
        for source_id, manifest in manifests.items():
            unused = sorted(set(manifest) - used_entries[source_id])
            if unused:
                report.notes.append(f"manifest entries matching no file: {', '.join(unused[:20])}" + (" ..." if len(unused) > 20 else ""))
        return list(by_sha.values())

    @staticmethod
    def _describe(path: Path, sha: str, source: CatalogSource, file_tags: FileTags, entry: ManifestEntry | None) -> _Track:
        entry = entry or ManifestEntry()
        copyright_file = find_copyright(path, source.path)
        for licence, licence_source in (
            (entry.licence, "manifest"),
            (source.licence, "folder"),
            (file_tags.licence, "file"),
            (SEE_COPYRIGHT if copyright_file else "", "copyright"),
        ):
            if licence:
                break
        else:
            licence_source = ""
        for title, title_from in ((file_tags.title, "tags"), (entry.title, "manifest")):
            if title:
                break
        else:
            title, title_from = title_from_path(path), title_source(path)
        attributes: dict[str, Any] = {
            "tag_sources": {"metadata": list(file_tags.genres), "manifest": list(entry.tags)},
            "licence_source": licence_source,
            "title_source": title_from,
            "source_folder": str(source.path),
        }
        if copyright_file is not None:
            attributes["licence_file"] = str(copyright_file)
        return _Track(
            path=path,
            sha=sha,
            source=source,
            title=title,
            artist=entry.artist or file_tags.artist,
            tags=tuple(dict.fromkeys([*entry.tags, *file_tags.genres])),
            licence=licence,
            attributes=attributes,
        )

    async def _analyse(self, tracks: list[_Track], report: RefreshReport, progress: ProgressCallback) -> list[_Track]:
        """Make sure every track has features in the cache, analysing the ones that have none.

        Returns the tracks that have features (the failures are in the report). Analyses are written
        to the cache file by file and not kept: the write pass reads them back a batch at a time,
        so a refresh of a large catalog holds a batch of analyses in memory, not all of them.
        """
        todo: list[_Track] = []
        for t in tracks:
            if await asyncio.to_thread(self.features.get, t.sha) is None:
                todo.append(t)
            else:
                report.reused += 1
        if not todo:
            return tracks
        encoders = await asyncio.to_thread(self._get_encoders)
        jobs = [TrackJob(t.path, title=t.title, artist=t.artist, tags=t.tags, content_hash=t.sha) for t in todo]
        results = analyse_tracks(
            jobs, encoders, limits=self.limits, ffmpeg=self.ffmpeg, min_duration_s=self.min_duration_s, check_content=self.check_content
        )
        failed: set[Path] = set()
        t0 = time.perf_counter()
        done = 0
        progress(RefreshProgress("analyse", 0, len(todo)))
        try:
            while True:
                item = await self._model_call(next, results, None)  # one track: decode wait + embed
                if item is None:
                    break
                job, result = item
                done += 1
                if isinstance(result, TrackAnalysis):
                    await asyncio.to_thread(self.features.put, result)
                    report.analysed += 1
                    report.analysed_audio_s += sum(s.duration_s for s in result.segments)
                    outcome = "analysed"
                else:
                    failed.add(job.path)
                    report.failures.append(FileFailure.of(job.path, "analyse", result))
                    log.warning("catalog refresh: skipping %s: %s", job.path, result)
                    outcome = "failed"
                report.analyse_s = time.perf_counter() - t0
                progress(RefreshProgress("analyse", done, len(todo), str(job.path), outcome))
        finally:
            report.analyse_s = time.perf_counter() - t0
            try:
                results.close()
            except ValueError:  # still running in its worker thread (cancelled): it ends with that file
                pass
        return [t for t in tracks if t.path not in failed]

    async def _tower_pass(self, tracks: list[_Track], report: RefreshReport, progress: ProgressCallback) -> list[_Track]:
        """With trained AST towers: every track's g_mt vector and candidate clip in this checkpoint's cache.

        Tracks without an entry are decoded again (their analysed window, as `analyse_tracks` did)
        and run through g_mt (`engine.music_towers.tower_track`); entries are written one by one, so
        an interrupted refresh resumes. Returns the tracks that have one (failures are reported)."""
        if self.towers is None:
            return tracks
        from engine.music_towers import check_tower_inputs

        todo = [t for t in tracks if await asyncio.to_thread(self.towers.get, t.sha) is None]
        if not todo:
            return tracks
        encoders = await asyncio.to_thread(self._get_encoders)
        check_tower_inputs(self.fusion, encoders.music, f"fusion_id {self.fusion_id}")
        failed: set[Path] = set()
        progress(RefreshProgress("towers", 0, len(todo)))
        for done, t in enumerate(todo, start=1):
            outcome = "analysed"
            try:
                analysis = await asyncio.to_thread(self.features.get, t.sha)
                if analysis is None:
                    raise MediaError(f"{t.path}: its cached analysis could not be read back")
                decoded = await asyncio.to_thread(
                    decode_track, t.path, sample_rate=encoders.music.sample_rate, limits=self.limits, ffmpeg=self.ffmpeg, content_hash=t.sha
                )  # fmt: skip
                entry = await self._model_call(self._tower_track, decoded, analysis, encoders.music)
                await asyncio.to_thread(self.towers.put, entry)
                report.tower_tracks += 1
            except MediaError as exc:
                failed.add(t.path)
                report.failures.append(FileFailure.of(t.path, "analyse", exc))
                log.warning("catalog refresh: skipping %s (trained towers): %s", t.path, exc)
                outcome = "failed"
            progress(RefreshProgress("towers", done, len(todo), str(t.path), outcome))
        return [t for t in tracks if t.path not in failed]

    def _tower_track(self, decoded: Any, analysis: TrackAnalysis, encoder: Any) -> Any:
        """g_mt over one decoded track's segments (model work: the pool's catalog lane)."""
        from engine.music_towers import tower_track

        segments, clips = decoded.segment_audio()
        if not segments:
            raise MediaError(f"{decoded.path}: no segment decoded to 1 s of audio")
        return tower_track(
            decoded.content_hash, clips, [(s.start_s, s.end_s) for s in segments], encoder, self.fusion,
            excerpt_start_s=analysis.excerpt_start_s, excerpt_duration_s=analysis.excerpt_duration_s, fusion_id=self.fusion_id,
        )  # fmt: skip

    async def _write(self, tracks: list[_Track], writer: Any, report: RefreshReport, progress: ProgressCallback) -> list[TrackInfo]:
        """Upsert every track into the version being built, WRITE_BATCH at a time; returns the SQL rows.

        Per batch: read the features back, recompute the sentence vectors whose metadata changed
        (one text-encoder call), cut the missing excerpts, build the points.
        """
        infos: list[TrackInfo] = []
        progress(RefreshProgress("write", 0, len(tracks)))
        for start in range(0, len(tracks), WRITE_BATCH):
            batch = []
            for t in tracks[start : start + WRITE_BATCH]:
                t.analysis = await asyncio.to_thread(self.features.get, t.sha)
                if t.analysis is None:  # removed or damaged since the analysis pass
                    report.failures.append(FileFailure(str(t.path), "analyse", "its cached features could not be read back", "decode failed: its cached features could not be read back"))
                    continue
                if self.towers is not None:
                    t.tower = await asyncio.to_thread(self.towers.get, t.sha)
                    if t.tower is None:  # removed or damaged since the towers pass
                        report.failures.append(FileFailure(str(t.path), "analyse", "its trained-towers vector could not be read back", "decode failed: its trained-towers vector could not be read back"))
                        continue
                batch.append(t)
            await self._update_text(batch, report)
            await self._cut_excerpts(batch, report, progress, offset=start, total=len(tracks))
            points = await self._model_call(lambda b=batch: [self._point(t) for t in b])  # the music tower runs here
            await asyncio.to_thread(writer.upsert, points)
            for t in batch:
                infos.append(self._info(t))
                t.analysis = t.tower = None  # the batch is written: let it go
            progress(RefreshProgress("write", min(start + WRITE_BATCH, len(tracks)), len(tracks)))
        return infos

    async def _update_text(self, tracks: list[_Track], report: RefreshReport) -> None:
        """Recompute the sentence vector of cached tracks whose metadata changed (title, artist, tags)."""
        stale = []
        for t in tracks:
            assert t.analysis is not None
            sentence = track_text(t.title, t.artist, t.tags, t.analysis.auto_tags)
            if sentence != t.analysis.sentence or t.analysis.text_vector is None:
                stale.append((t, sentence))
        if not stale:
            return
        encoders = await asyncio.to_thread(self._get_encoders)
        vectors = await self._model_call(sentence_vectors, encoders.text, [s for _, s in stale])
        for (t, sentence), vector in zip(stale, vectors, strict=True):
            assert t.analysis is not None
            t.analysis = t.analysis.with_text(sentence, vector)
            await asyncio.to_thread(self.features.put, t.analysis)
        report.text_updated += len(stale)

    async def _cut_excerpts(
        self, tracks: list[_Track], report: RefreshReport, progress: ProgressCallback, *, offset: int = 0, total: int = 0
    ) -> None:
        """Each track's listening excerpt in the media store (cut again if its file was cleaned up)."""
        for i, t in enumerate(tracks, start=offset):
            assert t.analysis is not None
            wanted = {
                "start_s": t.analysis.excerpt_start_s,
                "duration_s": t.analysis.excerpt_duration_s,
                "format": self.excerpt_format,
            }
            ref = await asyncio.to_thread(self.features.get_excerpt, t.sha)
            if ref and {k: ref.get(k) for k in wanted} == wanted and self.media_store.exists(ref["sha256"]):
                t.excerpt = ref
                continue
            progress(RefreshProgress("excerpt", i, total or len(tracks), str(t.path)))
            out = self.media_store.tmp_dir / f"excerpt-{t.sha}-{os.getpid()}.{self.excerpt_format}"
            wav = self.media_store.tmp_dir / f"excerpt-{t.sha}-{os.getpid()}.wav"
            try:
                src, offset = t.path, 0.0
                if t.analysis.decoder == SNDFILE_DECODER:  # ffmpeg cannot read the file: it cuts a WAV of the window
                    src = await asyncio.to_thread(
                        sndfile_to_wav, t.path, wav, start_s=wanted["start_s"], duration_s=wanted["duration_s"], limits=self.limits
                    )
                    offset = wanted["start_s"]
                excerpt = await asyncio.to_thread(
                    cut_excerpt, src, out, start_s=wanted["start_s"] - offset, duration_s=wanted["duration_s"],
                    fade_s=EXCERPT_FADE_S, fmt=self.excerpt_format, limits=self.limits, ffmpeg=self.ffmpeg,
                )  # fmt: skip
                stored = await asyncio.to_thread(self.media_store.put_file, excerpt.path, move=True)
            except (MediaError, OSError) as exc:
                report.failures.append(FileFailure.of(t.path, "excerpt", exc))
                log.warning("catalog refresh: no excerpt for %s: %s", t.path, exc)
                continue
            finally:
                out.unlink(missing_ok=True)
                wav.unlink(missing_ok=True)
            # the window asked for (compared on the next refresh), and what cut_excerpt made of it
            t.excerpt = {**wanted, "cut_start_s": offset + excerpt.start_s, "cut_duration_s": excerpt.duration_s,
                         "sha256": stored.sha256, "bytes": stored.size}  # fmt: skip
            await asyncio.to_thread(self.features.put_excerpt, t.sha, t.excerpt)
            report.excerpts_cut += 1

    @staticmethod
    def _compare(tracks: list[_Track], previous: Mapping[str, str], report: RefreshReport) -> None:
        before = set(previous.values())
        now = {t.sha for t in tracks}
        report.added = len(now - before)
        report.removed = len(before - now)
        report.changed = sum(1 for t in tracks if str(t.path) in previous and previous[str(t.path)] != t.sha)

    def _fusion_vector(self, analysis: TrackAnalysis) -> np.ndarray:
        """The fusion model's track vector: mean of g_mt over the segment vectors (paper 4.1, 5).  # (256,)"""
        import torch

        from engine.fusion import track_vector

        with torch.no_grad():
            segs = self.fusion.encode_music(pooled=torch.from_numpy(np.ascontiguousarray(analysis.segment_vectors)))  # (S, 256)
            return track_vector(segs).float().cpu().numpy()

    def _point(self, t: _Track) -> TrackPoint:
        a = t.analysis
        assert a is not None and a.text_vector is not None
        vectors = {TEXT_VECTOR: a.text_vector, MUSIC_VECTOR: a.music_vector}
        if self.towers is not None:
            vectors[FUSION_VECTOR] = t.tower.fusion_vector  # g_mt's (the `_tower_pass`)
        elif self.fusion is not None:
            vectors[FUSION_VECTOR] = self._fusion_vector(a)
        payload = TrackPayload(
            title=t.title,
            artist=t.artist,
            tags=tuple(dict.fromkeys([*(display_tag(x) for x in t.tags), *a.auto_tags])),
            tag_probs=a.tag_probs,
            duration_s=a.duration_s,
            tempo_bpm=a.tempo_bpm if a.tempo_bpm > 0 else None,
            loudness_db=a.loudness_db,
            licence=t.licence,
            source=str(t.path),
            content_hash=t.sha,
            fusion_id=self.fusion_id,
        )
        return TrackPoint(track_id=track_id_for(t.sha), vectors=vectors, payload=payload)

    def _info(self, t: _Track) -> TrackInfo:
        a = t.analysis
        assert a is not None
        attributes = {
            **t.attributes,
            "catalog_track_id": track_id_for(t.sha),
            "tempo_bpm": a.tempo_bpm,
            "loudness_db": a.loudness_db,
            "onset_rate": a.onset_rate,
            "top_mtt": [[n, round(p, 4)] for n, p in a.top_mtt],
            "top_msd": [[n, round(p, 4)] for n, p in a.top_msd],
            "segments": len(a.segments),
            "excerpt": t.excerpt,
            "decoder": a.decoder,
        }
        attributes["tag_sources"] = {**attributes["tag_sources"], "auto": a.auto_tags}
        return TrackInfo(
            content_hash=t.sha,
            title=t.title[:512],
            duration_s=a.duration_s,
            source_path=str(t.path),
            artist=t.artist[:512],
            tags=tuple(dict.fromkeys([*(display_tag(x) for x in t.tags), *a.auto_tags])),
            licence=t.licence,
            attributes=attributes,
        )


def load_fusion(checkpoint: str | Path, profile: ProfileConfig, *, device: str = "cpu") -> Any:
    """Load the MVT-Fusion checkpoint a refresh writes "fusion" vectors with (checked against the profile):
    a `TowerRecommender` (frozen, eval mode) when the folder holds trained AST towers, else a `MuseChatRecommender`."""
    from engine.checkpoint import CheckpointMismatchError, load_checkpoint
    from engine.music_towers import has_towers, load_tower_checkpoint

    if has_towers(checkpoint):
        if profile.music_family != "ast":
            raise CheckpointMismatchError(f"fusion checkpoint {checkpoint} has trained AST towers; the {profile.name} profile's music encoder is {profile.music_family}")
        return load_tower_checkpoint(checkpoint, expect_profile=profile.name, device=device).requires_grad_(False).eval()
    model = load_checkpoint(checkpoint, expect_profile=profile.name, device=device)
    if model.config.target_music_dim != profile.music_dim:
        raise CheckpointMismatchError(
            f"fusion checkpoint {checkpoint}: its music tower takes {model.config.target_music_dim}-d features, "
            f"the {profile.name} music encoder gives {profile.music_dim}-d"
        )
    return model

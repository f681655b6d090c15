"""The embedded music catalog: Qdrant Edge (`qdrant-edge-py`), Qdrant's engine in-process.

The default backend for one machine (DESIGN.md, "Storage" and "Scale"). Layout of the
catalog directory:

    <path>/catalog.lock          fcntl lock: one process owns the directory
    <path>/LIVE                  name of the live version (replaced atomically with os.replace)
    <path>/versions/<name>/      one Edge shard per catalog version
    <path>/versions/<name>.json  written when the build is complete: points, schema, indexed

A refresh builds a new shard directory; `commit()` optimises it, writes its .json, then
replaces LIVE. A crash before that leaves LIVE naming the old version, and the unfinished
directory (no .json) is deleted the next time the catalog is opened.

Search is exact (a plain scan) below `EdgeTuning.hnsw_min_points` tracks and uses an HNSW
graph above it; the threshold and `hnsw_ef` come from benchmarks/bench_catalog.py.
Edge has no recommend-by-id: example ids are turned into their stored vectors and given to
Edge's native best-score / sum-scores recommend queries; `average_vector` is computed here as
Qdrant's server computes it (avg(pos) + avg(pos) - avg(neg)) and run as a nearest query.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from storage.catalog.base import (
    CatalogError,
    CatalogFilter,
    CatalogLockedError,
    CatalogSchema,
    CatalogVersion,
    Hit,
    MusicCatalog,
    PointId,
    RecommendStrategy,
    TrackId,
    TrackPayload,
    TrackPoint,
    TrackRecord,
    UnknownTrackError,
    VersionWriter,
    as_query_vector,
    average_vector_query,
    check_limit,
    check_recommend_examples,
    checked_point_vectors,
    from_point_id,
    new_version_name,
    normalize_ids,
    to_point_id,
    version_created_at,
)

log = logging.getLogger(__name__)

LOCK_FILE = "catalog.lock"
LIVE_POINTER = "LIVE"
VERSIONS_DIR = "versions"
SERVER_URL_ENV = "MUSECHAT_QDRANT_URL"
NEVER_INDEX_KB = 2**40  # optimizer indexing threshold that no segment reaches, KB
ALWAYS_INDEX_KB = 1  # optimizer indexing threshold that every non-empty segment passes, KB
FLOAT32_BYTES = 4

# Payload indexes on the filtered fields (CatalogFilter) and the refresh's dedup key.
PAYLOAD_INDEXES: dict[str, qe.PayloadSchemaType] = {
    "tags": qe.PayloadSchemaType.Keyword,
    "licence": qe.PayloadSchemaType.Keyword,
    "duration_s": qe.PayloadSchemaType.Float,
    "content_hash": qe.PayloadSchemaType.Keyword,
}


@dataclass(frozen=True)
class EdgeTuning:
    """Index parameters of the embedded catalog, chosen by benchmarks/bench_catalog.py.

    Measured on the 2-core build machine (256-d clustered vectors, top-10, p50): exact scan and
    HNSW tie up to 10k tracks (0.50 vs 0.44 ms at 10k) and exact needs no build, while at 20k
    HNSW is 3.6x faster (0.33 vs 1.19 ms) and at 100k 9x (0.73 vs 6.4 ms). ef=64 gives
    recall@10 1.000 (0.998 with 20 tracks excluded) at 20k and 100k; ef=32 drops to 0.974
    with the exclusion at 100k.
    """

    hnsw_min_points: int = 10_000  # below: exact scan; at or above: HNSW graph
    hnsw_m: int = 16  # edges per HNSW node
    hnsw_ef_construct: int = 100  # candidates while building the graph
    hnsw_ef: int = 64  # candidates while searching
    filtered_full_scan_points: int = 10_000  # a filtered search matching fewer points scans exactly
    # One search thread: after commit() a version is one optimised segment, so more threads
    # only add hand-offs; on a loaded 2-core machine one thread halved p90 latency.
    search_threads: int | None = 1  # None: one per CPU (Edge's default)
    upsert_batch: int = 512  # points per Edge update call

    def full_scan_threshold_kb(self, dim: int) -> int:
        """Qdrant's full_scan_threshold (KB of vectors) for filtered_full_scan_points points."""
        return max(1, self.filtered_full_scan_points * dim * FLOAT32_BYTES // 1024)


def _lock_directory(path: Path) -> int:
    """Take the exclusive lock of the catalog directory, or say who holds it."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        raise CatalogLockedError(
            f"the embedded catalog {path} is already open in another process (pid {holder}). "
            f"Only one process can own an embedded catalog: run a single bot process, or run a "
            f"Qdrant server and point every process at it with {SERVER_URL_ENV}=http://host:6333."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _write_atomic(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _vector_params(schema: CatalogSchema) -> dict[str, qe.EdgeVectorParams]:
    return {v.name: qe.EdgeVectorParams(size=v.dim, distance=qe.Distance.Cosine) for v in schema.vectors}


def _close_quietly(shard: qe.EdgeShard, name: str) -> None:
    try:
        shard.close()
    except Exception:  # noqa: BLE001 - closing twice, or a shard whose files are gone
        log.debug("closing catalog shard %s failed", name, exc_info=True)


def _edge_filter(exclude: Sequence[PointId], filters: CatalogFilter | None) -> qe.Filter | None:
    must: list[Any] = []
    if filters is not None:
        if filters.tags_any:
            must.append(qe.FieldCondition("tags", match=qe.MatchAny(list(filters.tags_any))))
        if filters.licences:
            must.append(qe.FieldCondition("licence", match=qe.MatchAny(list(filters.licences))))
        if filters.min_duration_s is not None or filters.max_duration_s is not None:
            must.append(
                qe.FieldCondition(
                    "duration_s", range=qe.RangeFloat(gte=filters.min_duration_s, lte=filters.max_duration_s)
                )
            )
    must_not: list[Any] = [qe.HasIdCondition(set(exclude))] if exclude else []
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def _hit(point: qe.ScoredPoint) -> Hit:
    return Hit(
        track_id=from_point_id(point.id), score=float(point.score), payload=TrackPayload.from_dict(point.payload or {})
    )


@dataclass
class _LiveShard:
    """A loaded version: its shard and what its .json says about it."""

    name: str
    shard: qe.EdgeShard
    schema: CatalogSchema
    indexed: bool


class EdgeCatalog(MusicCatalog):
    """The embedded catalog (one process owns `path`; see the module docstring)."""

    def __init__(self, path: Path, schema: CatalogSchema | None = None, *, tuning: EdgeTuning | None = None) -> None:
        self.path = Path(path)
        self.schema = schema or CatalogSchema.default()
        self.tuning = tuning or EdgeTuning()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock_directory(self.path)
        self._versions_dir = self.path / VERSIONS_DIR
        self._versions_dir.mkdir(exist_ok=True)
        self._swap_lock = threading.Lock()
        self._writer: _EdgeVersionWriter | None = None
        # The version served before the last commit stays open until the next one, so a search
        # or scroll that picked it up just before a switch finishes on it.
        self._retired: _LiveShard | None = None
        self._live: _LiveShard | None = None
        try:
            self._remove_unfinished_builds()
            self._live = self._load_live()
        except BaseException:
            self.close()
            raise

    # --- opening --------------------------------------------------------------------------

    def _remove_unfinished_builds(self) -> None:
        """Delete shard directories without a .json: builds that a crash interrupted."""
        for entry in self._versions_dir.iterdir():
            if entry.is_dir() and not entry.with_suffix(".json").exists():
                log.warning("removing unfinished catalog build %s", entry.name)
                shutil.rmtree(entry)
            elif entry.suffix == ".json" and not entry.with_suffix("").is_dir():
                entry.unlink()
            elif entry.name.endswith(".tmp"):
                entry.unlink()

    def _load_live(self) -> _LiveShard | None:
        pointer = self.path / LIVE_POINTER
        if not pointer.exists():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        meta_path = self._versions_dir / f"{name}.json"
        if not meta_path.exists():
            raise CatalogError(f"{pointer} names version {name!r}, which is missing from {self._versions_dir}")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        schema = CatalogSchema.from_json(meta["schema"])
        # Only the thread count is given; everything else is inherited from the shard on disk.
        config = qe.EdgeConfig(vectors=_vector_params(schema), max_search_threads=self.tuning.search_threads)
        shard = qe.EdgeShard.load(str(self._versions_dir / name), config)
        live = _LiveShard(name, shard, schema, bool(meta["indexed"]))
        if live.schema != self.schema:
            log.warning(
                "live catalog version %s has vectors %s, the configured schema %s: refresh the catalog",
                name, live.schema.to_json(), self.schema.to_json(),
            )
        log.info("opened embedded catalog %s, live version %s (%d points)", self.path, name, meta["points"])
        return live

    @property
    def search_mode(self) -> str | None:
        """How the live version is searched: "hnsw", "exact", or None when nothing is live."""
        live = self._live
        if live is None:
            return None
        return "hnsw" if live.indexed else "exact"

    # --- reads ------------------------------------------------------------------------------

    def _search_params(self, live: _LiveShard) -> qe.SearchParams | None:
        return qe.SearchParams(hnsw_ef=self.tuning.hnsw_ef) if live.indexed else None

    def _query(self, live: _LiveShard, query: Any, limit: int, exclude: Sequence[PointId],
               filters: CatalogFilter | None) -> list[Hit]:
        request = qe.QueryRequest(
            limit=limit,
            query=query,
            filter=_edge_filter(exclude, filters),
            with_payload=True,
            params=self._search_params(live),
        )
        return [_hit(p) for p in live.shard.query(request)]

    def search(
        self,
        vector_name: str,
        query_vector: np.ndarray | Sequence[float],
        *,
        limit: int = 10,
        exclude_ids: Iterable[TrackId] = (),
        filters: CatalogFilter | None = None,
    ) -> list[Hit]:
        check_limit(limit)
        live = self._live
        if live is None:
            return []
        vector = as_query_vector(live.schema, vector_name, query_vector)
        exclude = [to_point_id(t) for t in normalize_ids(exclude_ids)]
        return self._query(live, qe.Query.Nearest(vector.tolist(), using=vector_name), limit, exclude, filters)

    def _example_vectors(self, live: _LiveShard, vector_name: str, track_ids: list[TrackId]) -> list[np.ndarray]:
        if not track_ids:
            return []
        records = live.shard.retrieve([to_point_id(t) for t in track_ids], with_payload=False, with_vector=[vector_name])
        found = {from_point_id(r.id): r.vector.get(vector_name) for r in records if r.vector}
        missing = [t for t in track_ids if found.get(t) is None]
        if missing:
            raise UnknownTrackError(missing, vector_name)
        return [np.asarray(found[t], dtype=np.float32) for t in track_ids]

    def recommend(
        self,
        vector_name: str,
        *,
        positive_ids: Iterable[TrackId] = (),
        negative_ids: Iterable[TrackId] = (),
        positive_vectors: Sequence[np.ndarray] = (),
        negative_vectors: Sequence[np.ndarray] = (),
        limit: int = 10,
        exclude_ids: Iterable[TrackId] = (),
        filters: CatalogFilter | None = None,
        strategy: RecommendStrategy = RecommendStrategy.BEST_SCORE,
    ) -> list[Hit]:
        check_limit(limit)
        pos_ids, neg_ids = normalize_ids(positive_ids), normalize_ids(negative_ids)
        check_recommend_examples(strategy, len(pos_ids) + len(positive_vectors), len(neg_ids) + len(negative_vectors))
        live = self._live
        if live is None:
            return []
        positives = self._example_vectors(live, vector_name, pos_ids) + [
            as_query_vector(live.schema, vector_name, v) for v in positive_vectors
        ]
        negatives = self._example_vectors(live, vector_name, neg_ids) + [
            as_query_vector(live.schema, vector_name, v) for v in negative_vectors
        ]
        # Qdrant's server leaves example points out of recommend results; do the same here.
        exclude = [to_point_id(t) for t in normalize_ids([*exclude_ids, *pos_ids, *neg_ids])]
        if strategy is RecommendStrategy.AVERAGE_VECTOR:
            query = qe.Query.Nearest(average_vector_query(positives, negatives).tolist(), using=vector_name)
        else:
            examples = qe.RecommendQuery(
                positives=[v.tolist() for v in positives], negatives=[v.tolist() for v in negatives]
            )
            if strategy is RecommendStrategy.BEST_SCORE:
                query = qe.Query.RecommendBestScore(examples, using=vector_name)
            else:
                query = qe.Query.RecommendSumScores(examples, using=vector_name)
        return self._query(live, query, limit, exclude, filters)

    def get(self, track_ids: Iterable[TrackId], *, with_vectors: bool = False) -> list[TrackRecord]:
        ids = normalize_ids(track_ids)
        live = self._live
        if live is None or not ids:
            return []
        records = live.shard.retrieve([to_point_id(t) for t in ids], with_payload=True, with_vector=with_vectors)
        by_id = {from_point_id(r.id): r for r in records}
        return [self._record(by_id[t], with_vectors) for t in ids if t in by_id]

    @staticmethod
    def _record(record: qe.Record, with_vectors: bool) -> TrackRecord:
        vectors = (
            {k: np.asarray(v, dtype=np.float32) for k, v in (record.vector or {}).items()} if with_vectors else {}
        )
        return TrackRecord(from_point_id(record.id), TrackPayload.from_dict(record.payload or {}), vectors)

    def count(self, filters: CatalogFilter | None = None) -> int:
        live = self._live
        if live is None:
            return 0
        return int(live.shard.count(qe.CountRequest(exact=True, filter=_edge_filter((), filters))))

    def scroll_payloads(self, *, batch_size: int = 256) -> Iterator[TrackRecord]:
        live = self._live  # pinned: a commit during the scroll keeps this shard open (see _retired)
        if live is None:
            return
        offset: PointId | None = None
        while True:
            records, offset = live.shard.scroll(qe.ScrollRequest(offset=offset, limit=batch_size, with_payload=True))
            for record in records:
                yield self._record(record, with_vectors=False)
            if offset is None:
                return

    # --- versions ---------------------------------------------------------------------------

    def _edge_config(self, *, index: bool) -> qe.EdgeConfig:
        max_dim = max(v.dim for v in self.schema.vectors)
        return qe.EdgeConfig(
            vectors=_vector_params(self.schema),
            hnsw_config=qe.HnswIndexConfig(
                m=self.tuning.hnsw_m,
                ef_construct=self.tuning.hnsw_ef_construct,
                full_scan_threshold=self.tuning.full_scan_threshold_kb(max_dim),
            ),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=ALWAYS_INDEX_KB if index else NEVER_INDEX_KB),
            max_search_threads=self.tuning.search_threads,
        )

    def begin_version(self) -> VersionWriter:
        if self._lock_fd is None:
            raise CatalogError("the catalog is closed")
        if self._writer is not None and not self._writer.finished:
            raise CatalogError(f"catalog version {self._writer.name} is still being built")
        name = new_version_name()
        while (self._versions_dir / name).exists():  # two refreshes in one microsecond
            name = new_version_name()
        self._writer = _EdgeVersionWriter(self, name, self._versions_dir / name)
        log.info("building catalog version %s in %s", name, self._versions_dir / name)
        return self._writer

    def _finish_build(self, writer: _EdgeVersionWriter) -> CatalogVersion:
        """Optimise the writer's shard, record it, switch LIVE to it (the atomic step)."""
        shard = writer.shard
        shard.flush()
        points = int(shard.count(qe.CountRequest(exact=True)))
        indexed = points >= self.tuning.hnsw_min_points
        if indexed:
            # The build ran with indexing off (upserts stay cheap); reopen with it on so
            # optimize() builds the HNSW graph over the merged segment.
            shard.close()
            shard = writer.shard = qe.EdgeShard.load(str(writer.directory), self._edge_config(index=True))
        shard.optimize()
        shard.flush()
        created = version_created_at(writer.name) or datetime.now(UTC)
        meta = {
            "name": writer.name,
            "created_at": created.isoformat(),
            "points": points,
            "indexed": indexed,
            "schema": self.schema.to_json(),
        }
        _write_atomic(self._versions_dir / f"{writer.name}.json", json.dumps(meta, indent=2))
        _write_atomic(self.path / LIVE_POINTER, writer.name)  # <- the version is live from here
        # Nothing below may fail: LIVE already names the new version.
        with self._swap_lock:
            stale, self._retired = self._retired, self._live
            self._live = _LiveShard(writer.name, shard, self.schema, indexed)
        if stale is not None:
            _close_quietly(stale.shard, stale.name)
        log.info("catalog version %s is live: %d points, %s search", writer.name, points,
                 "HNSW" if indexed else "exact")
        return CatalogVersion(writer.name, created, points, live=True, complete=True)

    def list_versions(self) -> list[CatalogVersion]:
        live = self._live.name if self._live else None
        versions: list[CatalogVersion] = []
        for entry in sorted(self._versions_dir.iterdir()):
            if not entry.is_dir():
                continue
            meta_path = entry.with_suffix(".json")
            created = version_created_at(entry.name) or datetime.fromtimestamp(entry.stat().st_mtime, UTC)
            if meta_path.exists():
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                versions.append(CatalogVersion(entry.name, created, int(meta["points"]), entry.name == live, True))
            else:
                versions.append(CatalogVersion(entry.name, created, None, live=False, complete=False))
        return versions

    def drop_version(self, name: str) -> None:
        if self._live is not None and name == self._live.name:
            raise CatalogError(f"catalog version {name} is live and cannot be dropped")
        if self._writer is not None and not self._writer.finished and self._writer.name == name:
            raise CatalogError(f"catalog version {name} is being built; abort it instead")
        directory = self._versions_dir / name
        if directory.parent != self._versions_dir or not directory.is_dir():
            raise CatalogError(f"no catalog version {name!r} in {self._versions_dir}")
        with self._swap_lock:
            if self._retired is not None and self._retired.name == name:
                self._retired.shard.close()
                self._retired = None
        directory.with_suffix(".json").unlink(missing_ok=True)  # first: without it the dir is junk
        shutil.rmtree(directory)
        log.info("dropped catalog version %s", name)

    def close(self) -> None:
        if self._writer is not None and not self._writer.finished:
            self._writer.abort()
        with self._swap_lock:
            for loaded in (self._retired, self._live):
                if loaded is not None:
                    loaded.shard.close()
            self._retired = self._live = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


class _EdgeVersionWriter(VersionWriter):
    """Builds one shard directory; see EdgeCatalog._finish_build for the commit."""

    def __init__(self, catalog: EdgeCatalog, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self._catalog = catalog
        self._state = "open"
        self.shard = qe.EdgeShard.create(str(directory), catalog._edge_config(index=False))
        try:
            for field_name, schema_type in PAYLOAD_INDEXES.items():
                self.shard.update(qe.UpdateOperation.create_field_index(field_name, schema_type))
        except BaseException:
            self.abort()
            raise

    @property
    def finished(self) -> bool:
        return self._state != "open"

    def _check_open(self) -> None:
        if self._state != "open":
            raise CatalogError(f"catalog version {self.name} is already {self._state}")

    def upsert(self, points: Iterable[TrackPoint]) -> int:
        self._check_open()
        schema = self._catalog.schema
        batch: list[qe.Point] = []
        written = 0
        for point in points:
            vectors = checked_point_vectors(schema, point)
            batch.append(qe.Point(to_point_id(point.track_id), vectors, point.payload.to_dict(point.track_id)))
            if len(batch) >= self._catalog.tuning.upsert_batch:
                self.shard.update(qe.UpdateOperation.upsert_points(batch))
                written += len(batch)
                batch = []
        if batch:
            self.shard.update(qe.UpdateOperation.upsert_points(batch))
            written += len(batch)
        return written

    def commit(self) -> CatalogVersion:
        self._check_open()
        try:
            version = self._catalog._finish_build(self)
        except BaseException:
            log.exception("committing catalog version %s failed; the live version is unchanged", self.name)
            self.abort()
            raise
        self._state = "committed"
        return version

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        _close_quietly(self.shard, self.name)
        self.directory.with_suffix(".json").unlink(missing_ok=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        log.info("aborted catalog version %s", self.name)

"""The music catalog on a Qdrant server or cluster, through `qdrant-client`.

For large catalogs and several bot processes (DESIGN.md, "Scale"). Every catalog version is a
collection named `<alias>__<version>`; the alias (`music`) names the live one and every read
goes through it. `commit()` marks the collection complete in its metadata and swaps the alias
in ONE `update_collection_aliases` call (delete + create, applied atomically by Qdrant), so
readers see the old version or the new one, never an empty or half-built catalog.

The client is injected: tests run this same code against qdrant-client's local mode
(`QdrantClient(":memory:")`), which implements the same API. Collection metadata needs a
Qdrant server >= 1.16.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from storage.catalog.base import (
    CatalogError,
    CatalogFilter,
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

LIVE_ALIAS = "music"
VERSION_SEPARATOR = "__"
META_COMPLETE = "musechat_complete"  # collection metadata: the build was committed
META_POINTS = "musechat_points"
DEFAULT_TIMEOUT_S = 30  # seconds per request to the server

PAYLOAD_INDEXES: dict[str, models.PayloadSchemaType] = {
    "tags": models.PayloadSchemaType.KEYWORD,
    "licence": models.PayloadSchemaType.KEYWORD,
    "duration_s": models.PayloadSchemaType.FLOAT,
    "content_hash": models.PayloadSchemaType.KEYWORD,
}

_STRATEGIES = {
    RecommendStrategy.BEST_SCORE: models.RecommendStrategy.BEST_SCORE,
    RecommendStrategy.SUM_SCORES: models.RecommendStrategy.SUM_SCORES,
    RecommendStrategy.AVERAGE_VECTOR: models.RecommendStrategy.AVERAGE_VECTOR,
}


@dataclass(frozen=True)
class ServerTuning:
    """Collection parameters on the server; shards and replicas apply in cluster mode."""

    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    hnsw_ef: int = 64  # candidates while searching, as for the embedded catalog
    full_scan_threshold_kb: int = 10_000  # filtered searches smaller than this scan exactly, KB
    shard_number: int | None = None  # None: the server's default
    replication_factor: int | None = None
    upsert_batch: int = 256  # points per upsert request


def _server_filter(exclude: Sequence[PointId], filters: CatalogFilter | None) -> models.Filter | None:
    must: list[Any] = []
    if filters is not None:
        if filters.tags_any:
            must.append(models.FieldCondition(key="tags", match=models.MatchAny(any=list(filters.tags_any))))
        if filters.licences:
            must.append(models.FieldCondition(key="licence", match=models.MatchAny(any=list(filters.licences))))
        if filters.min_duration_s is not None or filters.max_duration_s is not None:
            must.append(
                models.FieldCondition(
                    key="duration_s", range=models.Range(gte=filters.min_duration_s, lte=filters.max_duration_s)
                )
            )
    must_not: list[Any] = [models.HasIdCondition(has_id=list(exclude))] if exclude else []
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def _payload(record: Any) -> TrackPayload:
    return TrackPayload.from_dict(record.payload or {})


class ServerCatalog(MusicCatalog):
    """The catalog on a Qdrant server (see the module docstring)."""

    def __init__(
        self,
        client: QdrantClient,
        schema: CatalogSchema | None = None,
        *,
        alias: str = LIVE_ALIAS,
        tuning: ServerTuning | None = None,
    ) -> None:
        self.client = client
        self.schema = schema or CatalogSchema.default()
        self.alias = alias
        self.tuning = tuning or ServerTuning()

    @classmethod
    def connect(
        cls,
        *,
        url: str,
        api_key: str | None,
        schema: CatalogSchema | None = None,
        timeout_s: int = DEFAULT_TIMEOUT_S,
        tuning: ServerTuning | None = None,
    ) -> ServerCatalog:
        """Open the catalog on the server at `url` (never log the api key)."""
        client = QdrantClient(url=url, api_key=api_key, timeout=timeout_s)
        log.info("using the Qdrant server at %s for the music catalog", url)
        return cls(client, schema, tuning=tuning)

    # --- reads ------------------------------------------------------------------------------

    def _collection_name(self, version: str) -> str:
        return f"{self.alias}{VERSION_SEPARATOR}{version}"

    def _live_collection(self) -> str | None:
        for alias in self.client.get_aliases().aliases:
            if alias.alias_name == self.alias:
                return alias.collection_name
        return None

    def _query(self, query: Any, vector_name: str, limit: int, exclude: Sequence[PointId],
               filters: CatalogFilter | None) -> list[Hit]:
        try:
            response = self.client.query_points(
                collection_name=self.alias,
                query=query,
                using=vector_name,
                query_filter=_server_filter(exclude, filters),
                limit=limit,
                with_payload=True,
                search_params=models.SearchParams(hnsw_ef=self.tuning.hnsw_ef),
            )
        except Exception:
            if self._live_collection() is None:  # only on failure: no extra round trip per query
                return []
            raise
        return [Hit(from_point_id(p.id), float(p.score), _payload(p)) for p in response.points]

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
        vector = as_query_vector(self.schema, vector_name, query_vector)
        exclude = [to_point_id(t) for t in normalize_ids(exclude_ids)]
        return self._query(vector.tolist(), vector_name, limit, exclude, filters)

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
        positives: list[Any] = [to_point_id(t) for t in pos_ids] + [
            as_query_vector(self.schema, vector_name, v).tolist() for v in positive_vectors
        ]
        negatives: list[Any] = [to_point_id(t) for t in neg_ids] + [
            as_query_vector(self.schema, vector_name, v).tolist() for v in negative_vectors
        ]
        query = models.RecommendQuery(
            recommend=models.RecommendInput(
                positive=positives or None, negative=negatives or None, strategy=_STRATEGIES[strategy]
            )
        )
        exclude = [to_point_id(t) for t in normalize_ids([*exclude_ids, *pos_ids, *neg_ids])]
        try:
            return self._query(query, vector_name, limit, exclude, filters)
        except Exception:
            missing = self._missing_examples(vector_name, [*pos_ids, *neg_ids])
            if missing:
                raise UnknownTrackError(missing, vector_name) from None
            raise

    def _missing_examples(self, vector_name: str, track_ids: list[TrackId]) -> list[TrackId]:
        if not track_ids:
            return []
        records = self.client.retrieve(
            self.alias, ids=[to_point_id(t) for t in track_ids], with_payload=False, with_vectors=[vector_name]
        )
        found = {from_point_id(r.id) for r in records if isinstance(r.vector, dict) and vector_name in r.vector}
        return [t for t in track_ids if t not in found]

    def get(self, track_ids: Iterable[TrackId], *, with_vectors: bool = False) -> list[TrackRecord]:
        ids = normalize_ids(track_ids)
        if not ids:
            return []
        try:
            records = self.client.retrieve(
                self.alias, ids=[to_point_id(t) for t in ids], with_payload=True, with_vectors=with_vectors
            )
        except Exception:
            if self._live_collection() is None:
                return []
            raise
        by_id = {from_point_id(r.id): r for r in records}
        return [self._record(by_id[t], with_vectors) for t in ids if t in by_id]

    @staticmethod
    def _record(record: Any, with_vectors: bool) -> TrackRecord:
        vectors: dict[str, np.ndarray] = {}
        if with_vectors and isinstance(record.vector, dict):
            vectors = {k: np.asarray(v, dtype=np.float32) for k, v in record.vector.items()}
        return TrackRecord(from_point_id(record.id), _payload(record), vectors)

    def count(self, filters: CatalogFilter | None = None) -> int:
        collection = self._live_collection()
        if collection is None:
            return 0
        return int(self.client.count(collection, count_filter=_server_filter((), filters), exact=True).count)

    def scroll_payloads(self, *, batch_size: int = 256) -> Iterator[TrackRecord]:
        collection = self._live_collection()  # pinned: an alias swap mid-scroll does not mix versions
        if collection is None:
            return
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                collection, limit=batch_size, offset=offset, with_payload=True, with_vectors=False
            )
            for record in records:
                yield self._record(record, with_vectors=False)
            if offset is None:
                return

    # --- versions ---------------------------------------------------------------------------

    def begin_version(self) -> VersionWriter:
        name = new_version_name()
        collection = self._collection_name(name)
        self.client.create_collection(
            collection,
            vectors_config={
                v.name: models.VectorParams(size=v.dim, distance=models.Distance.COSINE) for v in self.schema.vectors
            },
            hnsw_config=models.HnswConfigDiff(
                m=self.tuning.hnsw_m,
                ef_construct=self.tuning.hnsw_ef_construct,
                full_scan_threshold=self.tuning.full_scan_threshold_kb,
            ),
            shard_number=self.tuning.shard_number,
            replication_factor=self.tuning.replication_factor,
            metadata={META_COMPLETE: False},
        )
        writer = _ServerVersionWriter(self, name, collection)
        try:
            for field_name, schema_type in PAYLOAD_INDEXES.items():
                self.client.create_payload_index(collection, field_name=field_name, field_schema=schema_type, wait=True)
        except BaseException:
            writer.abort()
            raise
        log.info("building catalog version %s in collection %s", name, collection)
        return writer

    def _switch_alias(self, collection: str) -> None:
        """Point the alias at `collection` in one request (Qdrant applies the list atomically)."""
        operations: list[Any] = []
        if self._live_collection() is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias)))
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=self.alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=operations)

    def list_versions(self) -> list[CatalogVersion]:
        prefix = f"{self.alias}{VERSION_SEPARATOR}"
        live = self._live_collection()
        versions: list[CatalogVersion] = []
        for description in self.client.get_collections().collections:
            if not description.name.startswith(prefix):
                continue
            name = description.name[len(prefix):]
            created = version_created_at(name)
            if created is None:
                continue  # not one of ours
            meta = self.client.get_collection(description.name).config.metadata or {}
            complete = bool(meta.get(META_COMPLETE))
            points = int(meta[META_POINTS]) if complete and META_POINTS in meta else None
            versions.append(CatalogVersion(name, created, points, description.name == live, complete))
        versions.sort(key=lambda v: v.name)
        return versions

    def drop_version(self, name: str) -> None:
        collection = self._collection_name(name)
        if collection == self._live_collection():
            raise CatalogError(f"catalog version {name} is live and cannot be dropped")
        if not self.client.collection_exists(collection):
            raise CatalogError(f"no catalog version {name!r} (collection {collection})")
        self.client.delete_collection(collection)
        log.info("dropped catalog version %s", name)

    def close(self) -> None:
        self.client.close()


class _ServerVersionWriter(VersionWriter):
    """Fills one collection; commit marks it complete and swaps the alias onto it."""

    def __init__(self, catalog: ServerCatalog, name: str, collection: str) -> None:
        self.name = name
        self.collection = collection
        self._catalog = catalog
        self._state = "open"

    @property
    def finished(self) -> bool:
        return self._state != "open"

    def _check_open(self) -> None:
        if self._state != "open":
            raise CatalogError(f"catalog version {self.name} is already {self._state}")

    def _send(self, batch: list[models.PointStruct]) -> None:
        self._catalog.client.upsert(self.collection, points=batch, wait=True)

    def upsert(self, points: Iterable[TrackPoint]) -> int:
        self._check_open()
        schema = self._catalog.schema
        batch: list[models.PointStruct] = []
        written = 0
        for point in points:
            batch.append(
                models.PointStruct(
                    id=to_point_id(point.track_id),
                    vector=checked_point_vectors(schema, point),
                    payload=point.payload.to_dict(point.track_id),
                )
            )
            if len(batch) >= self._catalog.tuning.upsert_batch:
                self._send(batch)
                written += len(batch)
                batch = []
        if batch:
            self._send(batch)
            written += len(batch)
        return written

    def commit(self) -> CatalogVersion:
        self._check_open()
        client = self._catalog.client
        try:
            points = int(client.count(self.collection, exact=True).count)
            client.update_collection(self.collection, metadata={META_COMPLETE: True, META_POINTS: points})
            self._catalog._switch_alias(self.collection)  # <- the version is live from here
        except BaseException:
            if self._switched_despite_error():
                self._state = "committed"
                raise
            log.exception("committing catalog version %s failed; the live version is unchanged", self.name)
            self.abort()
            raise
        self._state = "committed"
        log.info("catalog version %s is live: %d points", self.name, points)
        created = version_created_at(self.name) or datetime.now(UTC)
        return CatalogVersion(self.name, created, points, live=True, complete=True)

    def _switched_despite_error(self) -> bool:
        """True if the alias swap reached the server although the call failed (lost reply)."""
        try:
            live = self._catalog._live_collection()
        except Exception:  # noqa: BLE001 - server unreachable: keep the collection, do not guess
            log.warning("cannot tell whether catalog version %s went live; keeping it", self.name)
            return True
        if live == self.collection:
            log.warning("catalog version %s went live although the commit call failed", self.name)
            return True
        return False

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._catalog.client.delete_collection(self.collection)
        except Exception:  # noqa: BLE001 - the build is abandoned either way; drop_old_versions retries
            log.warning("could not delete aborted catalog collection %s", self.collection, exc_info=True)
        log.info("aborted catalog version %s", self.name)

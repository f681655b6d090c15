"""Tests of storage/catalog: both backends through one parametrized suite.

The server backend runs against qdrant-client's local mode (`QdrantClient(":memory:")`), which
implements the same client API as a real Qdrant server. Expected rankings come from a numpy
reference of cosine similarity and of Qdrant's recommend formulas, plus hand-made cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from storage.catalog import (
    CatalogError,
    CatalogFilter,
    CatalogLockedError,
    CatalogSchema,
    MusicCatalog,
    RecommendStrategy,
    SchemaError,
    TrackPayload,
    TrackPoint,
    UnknownTrackError,
    VectorSpec,
    normalize_track_id,
    open_catalog,
)
from storage.catalog.edge import LIVE_POINTER, VERSIONS_DIR, EdgeCatalog, EdgeTuning
from storage.catalog.server import ServerCatalog

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = CatalogSchema((VectorSpec("fusion", 8), VectorSpec("text", 4)))
N_TRACKS = 60
TAGS = ("rock", "pop", "jazz", "ambient", "epic")
LICENCES = ("CC-BY-4.0", "CC0-1.0", "GPL-2.0")
BACKENDS = ["edge", "server"]


# --- fixtures and helpers -----------------------------------------------------------------------


def make_catalog(kind: str, path: Path, tuning: EdgeTuning | None = None) -> MusicCatalog:
    if kind == "edge":
        return EdgeCatalog(path, SCHEMA, tuning=tuning)
    return ServerCatalog(QdrantClient(":memory:"), SCHEMA)


@pytest.fixture(params=BACKENDS)
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MusicCatalog]:
    cat = make_catalog(request.param, tmp_path / "catalog")
    yield cat
    cat.close()


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_tracks(n: int = N_TRACKS, seed: int = 0, id_offset: int = 1) -> list[TrackPoint]:
    """n tracks with random vectors and a deterministic mix of tags, durations and licences."""
    rng = np.random.default_rng(seed)
    fusion = rng.standard_normal((n, 8)).astype(np.float32)  # (n, 8)
    text = rng.standard_normal((n, 4)).astype(np.float32)  # (n, 4)
    tracks = []
    for i in range(n):
        tracks.append(
            TrackPoint(
                track_id=str(id_offset + i),
                vectors={"fusion": fusion[i], "text": text[i]},
                payload=TrackPayload(
                    title=f"Track {id_offset + i}",
                    artist=f"Artist {i % 7}",
                    tags=(TAGS[i % len(TAGS)], TAGS[(i * 3 + 1) % len(TAGS)]),
                    tag_probs={TAGS[i % len(TAGS)]: 0.9, TAGS[(i * 3 + 1) % len(TAGS)]: 0.4},
                    duration_s=30.0 + 10.0 * i,
                    tempo_bpm=80.0 + i,
                    loudness_db=-20.0 + i / 10,
                    licence=LICENCES[i % len(LICENCES)],
                    source=f"/music/track{i}.ogg",
                    content_hash=f"{i:064x}",
                ),
            )
        )
    return tracks


def publish(catalog: MusicCatalog, tracks: list[TrackPoint]) -> None:
    with catalog.begin_version() as writer:
        assert writer.upsert(tracks) == len(tracks)
        writer.commit()


def matrix(tracks: list[TrackPoint], name: str = "fusion") -> np.ndarray:
    return unit(np.stack([np.asarray(t.vectors[name], dtype=np.float32) for t in tracks]))  # (n, d)


def reference_top(
    tracks: list[TrackPoint], scores: np.ndarray, limit: int, mask: np.ndarray | None = None
) -> list[str]:
    """Track ids by decreasing score among the tracks where mask is True."""
    order = np.argsort(-scores, kind="stable")
    ids = [tracks[i].track_id for i in order if mask is None or mask[i]]
    return ids[:limit]


def sigmoid01(x: np.ndarray) -> np.ndarray:
    """Qdrant's scaled fast sigmoid, used by the best_score recommend strategy."""
    with np.errstate(invalid="ignore"):  # -inf (no examples of that sign) stays unused by np.where
        return 0.5 * (x / (1.0 + np.abs(x)) + 1.0)


def best_score_reference(m: np.ndarray, pos: list[np.ndarray], neg: list[np.ndarray]) -> np.ndarray:
    best_pos = np.max([m @ unit(p) for p in pos], axis=0) if pos else np.full(len(m), -np.inf)
    best_neg = np.max([m @ unit(n) for n in neg], axis=0) if neg else np.full(len(m), -np.inf)
    return np.where(best_pos > best_neg, sigmoid01(best_pos), -sigmoid01(best_neg))


def ids_of(hits: list) -> list[str]:
    return [h.track_id for h in hits]


# --- search -------------------------------------------------------------------------------------


def test_empty_catalog_serves_nothing(catalog: MusicCatalog) -> None:
    assert catalog.live_version() is None
    assert catalog.count() == 0
    assert catalog.search("fusion", np.ones(8)) == []
    assert catalog.get(["1"]) == []
    assert list(catalog.scroll_payloads()) == []


def test_search_ranks_by_cosine_like_numpy(catalog: MusicCatalog) -> None:
    tracks = make_tracks()
    publish(catalog, tracks)
    query = np.random.default_rng(7).standard_normal(8)
    scores = matrix(tracks) @ unit(query)  # (n,)
    hits = catalog.search("fusion", query, limit=10)
    assert ids_of(hits) == reference_top(tracks, scores, 10)
    expected_scores = np.sort(scores)[::-1][:10]
    np.testing.assert_allclose([h.score for h in hits], expected_scores, atol=1e-5)
    assert hits[0].payload == next(t.payload for t in tracks if t.track_id == hits[0].track_id)


def test_search_uses_the_named_vector(catalog: MusicCatalog) -> None:
    tracks = make_tracks()
    publish(catalog, tracks)
    query = np.random.default_rng(8).standard_normal(4)
    hits = catalog.search("text", query, limit=5)
    assert ids_of(hits) == reference_top(tracks, matrix(tracks, "text") @ unit(query), 5)


def test_hand_made_ranking(catalog: MusicCatalog) -> None:
    def point(track_id: str, fusion: list[float]) -> TrackPoint:
        return TrackPoint(track_id, {"fusion": np.array(fusion + [0.0] * 4)}, TrackPayload(title=track_id))

    uid = str(uuid.UUID(int=77))
    publish(catalog, [
        point("1", [1.0, 0.0, 0.0, 0.0]),
        point("2", [0.9, 0.3, 0.0, 0.0]),
        point("3", [0.5, 0.5, 0.0, 0.0]),
        point(uid, [0.0, 1.0, 0.0, 0.0]),
        point("5", [-1.0, 0.0, 0.0, 0.0]),
    ])
    hits = catalog.search("fusion", [1, 0, 0, 0, 0, 0, 0, 0], limit=5)
    assert ids_of(hits) == ["1", "2", "3", uid, "5"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-6)
    assert hits[-1].score == pytest.approx(-1.0, abs=1e-6)
    # Tracks without a "text" vector are not found in the text space.
    assert catalog.search("text", [1, 0, 0, 0]) == []


def test_exclusion_skips_tracks_already_shown(catalog: MusicCatalog) -> None:
    tracks = make_tracks()
    publish(catalog, tracks)
    query = np.random.default_rng(9).standard_normal(8)
    scores = matrix(tracks) @ unit(query)
    full = reference_top(tracks, scores, N_TRACKS)
    shown = [full[0], full[2], full[5]]
    hits = catalog.search("fusion", query, limit=10, exclude_ids=shown)
    assert ids_of(hits) == [t for t in full if t not in shown][:10]


FILTER_CASES = [
    ("tags", CatalogFilter(tags_any=("jazz",)), lambda t: "jazz" in t.payload.tags),
    ("two_tags", CatalogFilter(tags_any=("jazz", "epic")), lambda t: bool({"jazz", "epic"} & set(t.payload.tags))),
    ("duration", CatalogFilter(min_duration_s=100.0, max_duration_s=300.0),
     lambda t: 100.0 <= t.payload.duration_s <= 300.0),
    ("max_duration", CatalogFilter(max_duration_s=150.0), lambda t: t.payload.duration_s <= 150.0),
    ("licence", CatalogFilter(licences=("CC0-1.0", "GPL-2.0")), lambda t: t.payload.licence in {"CC0-1.0", "GPL-2.0"}),
    ("all", CatalogFilter(tags_any=("rock",), min_duration_s=200.0, licences=("CC-BY-4.0",)),
     lambda t: "rock" in t.payload.tags and t.payload.duration_s >= 200.0 and t.payload.licence == "CC-BY-4.0"),
]


@pytest.mark.parametrize(("case", "filters", "predicate"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_payload_filters(catalog: MusicCatalog, case: str, filters: CatalogFilter, predicate) -> None:
    tracks = make_tracks()
    publish(catalog, tracks)
    mask = np.array([predicate(t) for t in tracks])
    assert 0 < mask.sum() < N_TRACKS, case
    query = np.random.default_rng(10).standard_normal(8)
    excluded = reference_top(tracks, matrix(tracks) @ unit(query), 1, mask)
    hits = catalog.search("fusion", query, limit=5, filters=filters, exclude_ids=excluded)
    assert ids_of(hits) == reference_top(tracks, matrix(tracks) @ unit(query), 6, mask)[1:]
    assert all(predicate(next(t for t in tracks if t.track_id == h.track_id)) for h in hits)
    assert catalog.count(filters) == int(mask.sum())


# --- recommend ----------------------------------------------------------------------------------


def test_recommend_best_score_with_positive_and_negative_ids(catalog: MusicCatalog) -> None:
    tracks = make_tracks()
    publish(catalog, tracks)
    m = matrix(tracks)
    by_id = {t.track_id: t for t in tracks}
    pos = ["3", "17"]
    positive_only = best_score_reference(m, [m[int(i) - 1] for i in pos], [])
    # The negative example: the best match of the positives, i.e. "like these, not like that".
    neg = [reference_top(tracks, positive_only, 1, np.array([t.track_id not in pos for t in tracks]))[0]]
    scores = best_score_reference(m, [m[int(i) - 1] for i in pos], [m[int(i) - 1] for i in neg])
    mask = np.array([t.track_id not in {*pos, *neg, "5"} for t in tracks])
    # The negative example must change the top 8, or this test would not test it.
    assert reference_top(tracks, scores, 8, mask) != reference_top(tracks, positive_only, 8, mask)
    hits = catalog.recommend("fusion", positive_ids=pos, negative_ids=neg, exclude_ids=["5"], limit=8)
    assert ids_of(hits) == reference_top(tracks, scores, 8, mask)
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores[mask])[::-1][:8], atol=1e-5)
    assert hits[0].payload == by_id[hits[0].track_id].payload


def test_another_one_not_like_this(catalog: MusicCatalog) -> None:
    """The conversation's query vector as positive, the last track as a negative example."""

    def point(track_id: str, fusion: list[float]) -> TrackPoint:
        return TrackPoint(track_id, {"fusion": np.array(fusion + [0.0] * 5)}, TrackPayload(title=track_id))

    publish(catalog, [
        point("1", [1.0, 0.0, 0.0]),  # the query's best match, already shown and rejected
        point("2", [0.95, 0.05, 0.0]),  # near the query but even nearer the rejected track
        point("3", [0.6, 0.0, 0.8]),  # further from the query, away from the rejected track
        point("4", [0.0, 1.0, -0.1]),
    ])
    query = np.array([1.0, 0.0, 0.1, 0, 0, 0, 0, 0])
    assert ids_of(catalog.search("fusion", query, limit=3)) == ["1", "2", "3"]
    hits = catalog.recommend("fusion", positive_vectors=[query], negative_ids=["1"], limit=3)
    assert ids_of(hits) == ["3", "4", "2"]
    assert hits[0].score > 0 > hits[1].score > hits[2].score


def test_recommend_negative_only(catalog: MusicCatalog) -> None:
    tracks = make_tracks()
    publish(catalog, tracks)
    m = matrix(tracks)
    scores = best_score_reference(m, [], [m[0], m[1]])
    mask = np.array([t.track_id not in {"1", "2"} for t in tracks])
    hits = catalog.recommend("fusion", negative_ids=["1", "2"], limit=6)
    assert ids_of(hits) == reference_top(tracks, scores, 6, mask)


@pytest.mark.parametrize("strategy", [RecommendStrategy.SUM_SCORES, RecommendStrategy.AVERAGE_VECTOR])
def test_recommend_other_strategies(catalog: MusicCatalog, strategy: RecommendStrategy) -> None:
    tracks = make_tracks()
    publish(catalog, tracks)
    m = matrix(tracks)
    pos, neg = [m[3], m[20]], [m[44]]
    if strategy is RecommendStrategy.SUM_SCORES:
        scores = m @ pos[0] + m @ pos[1] - m @ neg[0]
    else:
        avg_pos = (pos[0] + pos[1]) / 2
        scores = m @ unit(avg_pos + avg_pos - neg[0])
    mask = np.array([t.track_id not in {"4", "21", "45"} for t in tracks])
    hits = catalog.recommend("fusion", positive_ids=["4", "21"], negative_ids=["45"], limit=7, strategy=strategy)
    assert ids_of(hits) == reference_top(tracks, scores, 7, mask)


def test_recommend_rejects_unknown_examples(catalog: MusicCatalog) -> None:
    publish(catalog, make_tracks(10))
    with pytest.raises(UnknownTrackError) as info:
        catalog.recommend("fusion", positive_ids=["3"], negative_ids=["999"])
    assert info.value.track_ids == ("999",)
    with pytest.raises(ValueError, match="at least one"):
        catalog.recommend("fusion")
    with pytest.raises(ValueError, match="positive"):
        catalog.recommend("fusion", negative_ids=["3"], strategy=RecommendStrategy.AVERAGE_VECTOR)


# --- reads and validation -----------------------------------------------------------------------


def test_get_count_and_scroll(catalog: MusicCatalog) -> None:
    tracks = make_tracks(25)
    publish(catalog, tracks)
    assert catalog.count() == 25
    records = catalog.get(["7", "999", "3", "7"], with_vectors=True)
    assert [r.track_id for r in records] == ["7", "3"]
    assert records[0].payload == tracks[6].payload
    np.testing.assert_allclose(records[0].vectors["fusion"], unit(tracks[6].vectors["fusion"]), atol=1e-6)
    assert catalog.get(["3"])[0].vectors == {}
    scrolled = list(catalog.scroll_payloads(batch_size=7))
    assert sorted(int(r.track_id) for r in scrolled) == list(range(1, 26))
    assert {r.track_id: r.payload for r in scrolled} == {t.track_id: t.payload for t in tracks}


def test_uuid_and_integer_ids(catalog: MusicCatalog) -> None:
    upper = "A1B2C3D4-0000-4000-8000-00000000000F"
    tracks = [
        TrackPoint(upper, {"fusion": np.eye(8)[0]}, TrackPayload(title="uuid")),
        TrackPoint(12, {"fusion": np.eye(8)[1]}, TrackPayload(title="int")),  # type: ignore[arg-type]
    ]
    publish(catalog, tracks)
    assert tracks[0].track_id == upper.lower()
    hits = catalog.search("fusion", np.eye(8)[0], limit=2)
    assert ids_of(hits) == [upper.lower(), "12"]
    assert [r.payload.title for r in catalog.get([upper, "12"])] == ["uuid", "int"]
    assert ids_of(catalog.search("fusion", np.eye(8)[0], exclude_ids=[upper])) == ["12"]


def test_invalid_ids_and_vectors(catalog: MusicCatalog) -> None:
    with pytest.raises(ValueError, match="neither"):
        normalize_track_id("track-1")
    with pytest.raises(ValueError):
        normalize_track_id(-1)  # type: ignore[arg-type]
    publish(catalog, make_tracks(5))
    with pytest.raises(SchemaError, match="must have 8 values"):
        catalog.search("fusion", np.ones(3))
    with pytest.raises(SchemaError, match="unknown vector"):
        catalog.search("music", np.ones(8))
    with pytest.raises(ValueError, match="all zeros"):
        catalog.search("fusion", np.zeros(8))
    with catalog.begin_version() as writer:
        with pytest.raises(SchemaError, match="track 9"):
            writer.upsert([TrackPoint("9", {"fusion": np.ones(5)}, TrackPayload(title="bad"))])
        writer.abort()


# --- versions -----------------------------------------------------------------------------------


def test_commit_switches_versions_atomically(catalog: MusicCatalog) -> None:
    old, new = make_tracks(20, seed=1), make_tracks(30, seed=2, id_offset=101)
    publish(catalog, old)
    first = catalog.live_version()
    assert first is not None and first.points == 20 and first.complete
    query = np.random.default_rng(3).standard_normal(8)
    old_hits = ids_of(catalog.search("fusion", query))

    writer = catalog.begin_version()
    writer.upsert(new[:15])
    writer.upsert(new[15:])
    # While building, the old version keeps serving.
    assert ids_of(catalog.search("fusion", query)) == old_hits
    assert catalog.count() == 20
    building = [v for v in catalog.list_versions() if v.name == writer.name]
    assert len(building) == 1 and not building[0].complete and not building[0].live
    version = writer.commit()

    assert version.live and version.points == 30
    assert catalog.count() == 30
    assert ids_of(catalog.search("fusion", query)) == reference_top(new, matrix(new) @ unit(query), 10)
    versions = catalog.list_versions()
    assert [(v.name, v.live, v.complete, v.points) for v in versions] == [
        (first.name, False, True, 20),
        (writer.name, True, True, 30),
    ]
    with pytest.raises(CatalogError, match="already committed"):
        writer.upsert(new[:1])


def test_abort_discards_the_build(catalog: MusicCatalog) -> None:
    publish(catalog, make_tracks(20, seed=1))
    before = catalog.list_versions()
    writer = catalog.begin_version()
    writer.upsert(make_tracks(5, seed=2, id_offset=500))
    writer.abort()
    writer.abort()  # idempotent
    assert catalog.list_versions() == before
    assert catalog.count() == 20
    assert catalog.get(["500"]) == []


def test_failure_mid_upsert_leaves_live_version_serving(catalog: MusicCatalog) -> None:
    tracks = make_tracks(20, seed=1)
    publish(catalog, tracks)
    before = catalog.list_versions()
    query = np.random.default_rng(4).standard_normal(8)
    hits_before = ids_of(catalog.search("fusion", query))

    def failing_points() -> Iterator[TrackPoint]:
        yield from make_tracks(10, seed=2, id_offset=300)
        raise OSError("music folder vanished during the refresh")

    with pytest.raises(OSError, match="vanished"):
        with catalog.begin_version() as writer:
            writer.upsert(failing_points())
            writer.commit()
    assert writer.finished
    assert catalog.list_versions() == before
    assert ids_of(catalog.search("fusion", query)) == hits_before
    assert catalog.count() == 20


def test_leaving_the_block_without_commit_aborts(catalog: MusicCatalog) -> None:
    publish(catalog, make_tracks(5))
    before = catalog.list_versions()
    with catalog.begin_version() as writer:
        writer.upsert(make_tracks(3, id_offset=50))
    assert catalog.list_versions() == before
    assert catalog.count() == 5


def test_failure_during_commit_leaves_live_version_serving(
    catalog: MusicCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(catalog, make_tracks(20, seed=1))
    before = catalog.list_versions()
    if isinstance(catalog, EdgeCatalog):
        import storage.catalog.edge as edge

        real_write = edge._write_atomic

        def fail_on_pointer(path: Path, text: str) -> None:
            if path.name == LIVE_POINTER:
                raise OSError("disk full")
            real_write(path, text)

        monkeypatch.setattr(edge, "_write_atomic", fail_on_pointer)
    else:
        assert isinstance(catalog, ServerCatalog)

        def refuse(*args: object, **kwargs: object) -> bool:
            raise ConnectionError("server went away")

        monkeypatch.setattr(catalog.client, "update_collection_aliases", refuse)
    writer = catalog.begin_version()
    writer.upsert(make_tracks(7, seed=2, id_offset=900))
    with pytest.raises((OSError, ConnectionError)):
        writer.commit()
    assert writer.finished
    assert catalog.list_versions() == before
    assert catalog.count() == 20
    assert catalog.get(["900"]) == []


def test_drop_old_versions_keeps_newest_and_live(catalog: MusicCatalog) -> None:
    for seed in range(4):
        publish(catalog, make_tracks(5 + seed, seed=seed))
    names = [v.name for v in catalog.list_versions()]
    assert len(names) == 4
    assert catalog.drop_old_versions(keep=2) == names[:2]
    assert [v.name for v in catalog.list_versions()] == names[2:]
    assert catalog.live_version().name == names[3]  # type: ignore[union-attr]
    assert catalog.count() == 8
    with pytest.raises(CatalogError, match="live"):
        catalog.drop_version(names[3])
    assert catalog.drop_old_versions(keep=1) == [names[2]]
    assert catalog.count() == 8
    with pytest.raises(ValueError):
        catalog.drop_old_versions(keep=0)


def test_drop_old_versions_spares_a_build_in_progress(catalog: MusicCatalog) -> None:
    publish(catalog, make_tracks(5))
    writer = catalog.begin_version()
    writer.upsert(make_tracks(3, id_offset=40))
    assert catalog.drop_old_versions(keep=1) == []
    assert writer.name in [v.name for v in catalog.list_versions()]
    writer.commit()
    assert catalog.count() == 3


# --- embedded backend: persistence, HNSW, the process lock --------------------------------------


def test_edge_reopen_serves_the_live_version(tmp_path: Path) -> None:
    tracks = make_tracks()
    query = np.random.default_rng(5).standard_normal(8)
    with EdgeCatalog(tmp_path, SCHEMA) as cat:
        publish(cat, make_tracks(10, seed=9, id_offset=700))
        publish(cat, tracks)
        live = cat.live_version()
    with EdgeCatalog(tmp_path, SCHEMA) as cat:
        assert cat.live_version() == live
        assert cat.count() == N_TRACKS
        assert ids_of(cat.search("fusion", query)) == reference_top(tracks, matrix(tracks) @ unit(query), 10)
    assert (tmp_path / LIVE_POINTER).read_text() == live.name  # type: ignore[union-attr]


def test_edge_builds_hnsw_above_threshold(tmp_path: Path) -> None:
    tracks = make_tracks(200, seed=11)
    tuning = EdgeTuning(hnsw_min_points=100, hnsw_ef=128)
    with EdgeCatalog(tmp_path / "big", SCHEMA, tuning=tuning) as big, EdgeCatalog(
        tmp_path / "small", SCHEMA, tuning=tuning
    ) as small:
        publish(big, tracks)
        publish(small, tracks[:50])
        assert big.search_mode == "hnsw"
        assert small.search_mode == "exact"
        meta = json.loads((tmp_path / "big" / VERSIONS_DIR / f"{big.live_version().name}.json").read_text())
        assert meta["indexed"] is True and meta["points"] == 200
        query = np.random.default_rng(12).standard_normal(8)
        # At 200 points an ef of 128 visits the whole graph: HNSW returns the exact top-10.
        assert ids_of(big.search("fusion", query)) == reference_top(tracks, matrix(tracks) @ unit(query), 10)


def test_edge_crashed_build_is_removed_on_open(tmp_path: Path) -> None:
    with EdgeCatalog(tmp_path, SCHEMA) as cat:
        publish(cat, make_tracks(10))
        live = cat.live_version()
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_catalog import SCHEMA, make_tracks
        from storage.catalog.edge import EdgeCatalog
        cat = EdgeCatalog({str(tmp_path)!r}, SCHEMA)
        writer = cat.begin_version()
        writer.upsert(make_tracks(30, seed=3, id_offset=100))
        print(writer.name, flush=True)
        os._exit(9)  # killed mid-refresh: no commit, no abort, no close
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    crashed = result.stdout.strip()
    assert (tmp_path / VERSIONS_DIR / crashed).is_dir()
    with EdgeCatalog(tmp_path, SCHEMA) as cat:
        assert not (tmp_path / VERSIONS_DIR / crashed).exists()
        assert cat.list_versions() == [live]
        assert cat.count() == 10


LOCK_PROBE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from storage.catalog import CatalogLockedError, open_catalog
    try:
        cat = open_catalog(url=None, api_key=None, path=__import__("pathlib").Path({path!r}))
    except CatalogLockedError as exc:
        print("LOCKED", exc)
    else:
        print("OPENED", cat.count())
        cat.close()
    """
)


def test_edge_second_process_gets_a_clear_error(tmp_path: Path) -> None:
    probe = LOCK_PROBE.format(root=str(REPO_ROOT), path=str(tmp_path))
    cat = open_catalog(url=None, api_key=None, path=tmp_path, schema=SCHEMA)
    assert isinstance(cat, EdgeCatalog)
    publish(cat, make_tracks(4))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("LOCKED")
    assert "MUSECHAT_QDRANT_URL" in result.stdout
    assert f"pid {__import__('os').getpid()}" in result.stdout
    # The same process cannot open it twice either.
    with pytest.raises(CatalogLockedError):
        EdgeCatalog(tmp_path, SCHEMA)
    cat.close()
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "OPENED 4", result.stderr


def test_edge_only_one_build_at_a_time(tmp_path: Path) -> None:
    with EdgeCatalog(tmp_path, SCHEMA) as cat:
        writer = cat.begin_version()
        with pytest.raises(CatalogError, match="still being built"):
            cat.begin_version()
        writer.abort()
        cat.begin_version().abort()


# --- server backend: the alias swap -------------------------------------------------------------


def test_server_swaps_the_alias_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    client = QdrantClient(":memory:")
    cat = ServerCatalog(client, SCHEMA)
    publish(cat, make_tracks(5))
    first = cat.live_version()
    calls: list[list] = []
    real = client.update_collection_aliases

    def spy(*, change_aliases_operations: list, **kwargs: object) -> bool:
        calls.append(change_aliases_operations)
        return real(change_aliases_operations=change_aliases_operations, **kwargs)

    monkeypatch.setattr(client, "update_collection_aliases", spy)
    publish(cat, make_tracks(8, seed=1))
    second = cat.live_version()
    assert len(calls) == 1
    ops = calls[0]
    assert [type(op).__name__ for op in ops] == ["DeleteAliasOperation", "CreateAliasOperation"]
    assert ops[1].create_alias.collection_name == f"music__{second.name}"  # type: ignore[union-attr]
    assert ops[1].create_alias.alias_name == "music"
    assert [c.name for c in client.get_collections().collections] == [
        f"music__{first.name}", f"music__{second.name}"  # type: ignore[union-attr]
    ]
    assert cat.count() == 8
    cat.close()


def test_open_catalog_picks_the_server_by_url(tmp_path: Path) -> None:
    cat = open_catalog(url="http://127.0.0.1:9", api_key="secret", path=tmp_path, schema=SCHEMA)
    try:
        assert isinstance(cat, ServerCatalog)
        assert cat.schema == SCHEMA
        assert not (tmp_path / "catalog.lock").exists()
    finally:
        cat.close()

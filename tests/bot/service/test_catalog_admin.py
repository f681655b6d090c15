"""Tests for bot/service/catalog_admin.py: folders, incremental refreshes, crash safety, tags, licences, status.

Everything runs for real on the tiny profile: SQLite migrated to head in a temp folder, the
embedded Qdrant catalog, the media store, and short melodies synthesised with ffmpeg lavfi (with
file tags where a test needs them; a steady sine is skipped as a constant tone, engine/screening.py). The music encoder is wrapped to count the tracks it embeds
(and, for the crash test, to fail after N of them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy.engine import make_url

from bot.service.catalog_admin import (
    REFRESH_JOB,
    SEE_COPYRIGHT,
    CatalogAdmin,
    CatalogAdminError,
    ManifestEntry,
    ManifestError,
    RefreshInProgressError,
    RefreshProgress,
    catalog_schema,
    load_manifest,
    reason_counts,
    read_file_tags,
    track_id_for,
)
from engine.encoders.base import MusicEmbedding, MusicEncoder
from engine.media import decode_audio, ffmpeg_binary, probe
from engine.profiles import Encoders, load_encoders
from storage.catalog import FUSION_VECTOR, MUSIC_VECTOR, TEXT_VECTOR
from storage.catalog.edge import EdgeCatalog
from storage.db import default_sqlite_url, make_engine, upgrade
from storage.job_store import JobStore
from storage.media_store import MediaStore
from storage.models import CatalogStatus as VersionStatus
from storage.models import JobStatus
from storage.track_store import CatalogVersionStore, TrackStore
from tests.conftest import lavfi, melody
from tests.helpers.audio import pad_vorbis_setup_header

TRACK_S = 6  # seconds per synthesised track: one segment, its own excerpt
MIN_S = 5.0  # the admins here accept tracks this long (the default minimum, 10 s, is tested on its own)


class CountingMusic(MusicEncoder):
    """The tiny music encoder, counting embedded tracks (one encode_batch per track); may fail after N."""

    def __init__(self, inner: MusicEncoder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.sample_rate = inner.sample_rate
        self.tag_names = inner.tag_names
        self.calls = 0
        self.fail_after: int | None = None

    def encode(self, audio: np.ndarray) -> MusicEmbedding:
        return self.inner.encode(audio)

    def encode_batch(self, clips: list[np.ndarray]) -> list[MusicEmbedding]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("the indexer crashed")
        self.calls += 1
        return self.inner.encode_batch(clips)


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sqlite-template")
    asyncio.run(upgrade(default_sqlite_url(folder)))
    return Path(make_url(default_sqlite_url(folder)).database or "")


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Distinct short tracks, made once; tests copy them into their own folders."""
    root = tmp_path_factory.mktemp("tones")
    made = {}
    for name, hz in [("a", 220), ("b", 330), ("c", 440), ("d", 550), ("e", 660), ("f", 770)]:
        made[name] = lavfi(root / f"{name}.ogg", melody(hz, TRACK_S), args=("-c:a", "libvorbis"))
    made["tagged"] = lavfi(
        root / "tagged.ogg", melody(880, TRACK_S),
        args=("-c:a", "libvorbis", "-metadata", "title=Night Drive", "-metadata", "artist=The Testers",
              "-metadata", "genre=Synthwave; Electronic", "-metadata", "LICENSE=CC-BY-4.0"),
    )  # fmt: skip
    return made


class Env:
    """An admin on a fresh data directory with one music folder."""

    def __init__(self, root: Path, sqlite_template: Path, encoders: Encoders, *, fusion=None, fusion_schema: bool = False, fusion_id: str = "") -> None:
        self.root = root
        self.music = root / "music"
        self.music.mkdir()
        self.data = root / "data"
        self.data.mkdir()
        url = default_sqlite_url(self.data)
        shutil.copyfile(sqlite_template, make_url(url).database or "")
        self.engine = make_engine(url)
        self.encoders = encoders
        self.catalog = EdgeCatalog(self.data / "catalog", catalog_schema(encoders.profile, fusion=fusion_schema))
        self.media = MediaStore(self.data / "media")
        self.admin = CatalogAdmin(
            engine=self.engine, catalog=self.catalog, media_store=self.media, data_dir=self.data,
            encoders=encoders, fusion=fusion, fusion_id=fusion_id, min_duration_s=MIN_S,
        )  # fmt: skip

    @property
    def music_calls(self) -> int:
        return self.encoders.music.calls  # type: ignore[attr-defined]

    def add(self, tones: dict[str, Path], *names: str, folder: Path | None = None) -> list[Path]:
        out = []
        for name in names:
            dst = (folder or self.music) / tones[name].name
            shutil.copyfile(tones[name], dst)
            out.append(dst)
        return out

    async def close(self) -> None:
        self.catalog.close()
        await self.engine.dispose()


@pytest.fixture
def counting() -> Encoders:
    tiny = load_encoders("tiny")
    return Encoders(profile=tiny.profile, image=tiny.image, text=tiny.text, music=CountingMusic(tiny.music))


@pytest.fixture
async def env(tmp_path: Path, sqlite_template: Path, counting: Encoders):
    e = Env(tmp_path, sqlite_template, counting)
    try:
        yield e
    finally:
        await e.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _payloads(env: Env) -> dict[str, object]:
    return {r.payload.content_hash: r.payload for r in env.catalog.scroll_payloads()}


# =================================================================================================
# refreshes
# =================================================================================================


async def test_first_refresh_indexes_every_file(env: Env, tones: dict[str, Path]) -> None:
    paths = env.add(tones, "a", "b", "tagged")
    await env.admin.add_folder(env.music)
    events: list[RefreshProgress] = []
    report = await env.admin.refresh(progress=events.append, trigger="cli")

    assert (report.files, report.tracks, report.analysed, report.reused, report.added, report.removed) == (3, 3, 3, 0, 3, 0)
    assert report.failures == [] and report.excerpts_cut == 3
    assert env.music_calls == 3
    assert env.catalog.count() == 3
    payloads = _payloads(env)
    assert set(payloads) == {_sha(p) for p in paths}
    tagged = payloads[_sha(paths[2])]
    assert (tagged.title, tagged.artist, tagged.licence) == ("Night Drive", "The Testers", "CC-BY-4.0")
    assert tagged.tags[:2] == ("synthwave", "electronic")  # file genres first, then the auto tags
    assert set(tagged.tag_probs) == set(env.encoders.music.tag_names)
    assert tagged.duration_s == pytest.approx(TRACK_S, abs=0.1)
    assert tagged.source == str(paths[2]) and tagged.content_hash == _sha(paths[2])
    assert payloads[_sha(paths[0])].title == "A"  # no tags: from the file name

    # the catalog point id is the UUID of the hash's first 128 bits; vectors as the schema says
    [rec] = env.catalog.get([track_id_for(_sha(paths[2]))], with_vectors=True)
    assert set(rec.vectors) == {TEXT_VECTOR, MUSIC_VECTOR}
    assert rec.vectors[TEXT_VECTOR].shape == (env.encoders.text.dim,)
    assert rec.vectors[MUSIC_VECTOR].shape == (env.encoders.music.dim,)

    # SQL: the version is live with 3 tracks; the track rows carry the excerpt reference
    versions = CatalogVersionStore(env.engine)
    live = await versions.live()
    assert live is not None and live.id == report.catalog_version_id and live.track_count == 3
    assert live.collection == report.version_name == env.catalog.live_version().name
    track = await TrackStore(env.engine).get_by_hash(content_hash=_sha(paths[2]))
    assert track is not None and track.catalog_version_id == live.id and track.licence == "CC-BY-4.0"
    excerpt = track.attributes["excerpt"]
    assert excerpt["format"] == "ogg" and excerpt["duration_s"] == pytest.approx(TRACK_S, abs=0.1)
    info = probe(env.media.path_for(excerpt["sha256"]))
    assert info.audio is not None and info.audio.codec == "opus"
    assert info.duration_s == pytest.approx(TRACK_S, abs=0.1)  # a short track is its own excerpt
    assert track.attributes["catalog_track_id"] == track_id_for(_sha(paths[2]))
    assert track.attributes["tag_sources"]["metadata"] == ["synthwave", "electronic"]

    # the job is recorded with its counts
    [run] = await JobStore(env.engine).list_runs(kind=REFRESH_JOB)
    assert run.id == report.job_id and run.status is JobStatus.SUCCEEDED
    assert (run.detail["trigger"], run.detail["tracks"], run.detail["analysed"], run.detail["failed"]) == ("cli", 3, 3, 0)
    # progress went through every stage and ended with the write
    assert {e.stage for e in events} == {"scan", "analyse", "excerpt", "write"}
    assert [e.outcome for e in events if e.stage == "analyse" and e.outcome] == ["analysed"] * 3
    assert events[-1] == RefreshProgress("write", 3, 3)


async def test_a_refresh_embeds_only_the_new_file(env: Env, tones: dict[str, Path]) -> None:
    env.add(tones, "a", "b", "c")
    await env.admin.add_folder(env.music)
    await env.admin.refresh()
    assert env.music_calls == 3
    [new] = env.add(tones, "d")
    report = await env.admin.refresh()
    assert env.music_calls == 4  # one more track embedded: the new one
    assert (report.analysed, report.reused, report.added, report.removed, report.changed) == (1, 3, 1, 0, 0)
    assert report.excerpts_cut == 1  # the other three excerpts are reused
    assert env.catalog.count() == 4 and _sha(new) in _payloads(env)
    report = await env.admin.refresh()  # nothing changed: nothing embedded, nothing cut
    assert env.music_calls == 4 and (report.analysed, report.reused, report.excerpts_cut) == (0, 4, 0)


async def test_a_changed_file_is_embedded_again(env: Env, tones: dict[str, Path]) -> None:
    a, b = env.add(tones, "a", "b")
    await env.admin.add_folder(env.music)
    await env.admin.refresh()
    old = _sha(a)
    shutil.copyfile(tones["e"], a)  # same path, other audio
    report = await env.admin.refresh()
    assert env.music_calls == 3
    assert (report.analysed, report.reused, report.changed, report.added, report.removed) == (1, 1, 1, 1, 1)
    payloads = _payloads(env)
    assert set(payloads) == {_sha(a), _sha(b)} and old not in payloads
    assert payloads[_sha(a)].source == str(a)


async def test_a_deleted_file_leaves_the_catalog(env: Env, tones: dict[str, Path]) -> None:
    a, b, c = env.add(tones, "a", "b", "c")
    await env.admin.add_folder(env.music)
    first = await env.admin.refresh()
    b.unlink()
    report = await env.admin.refresh()
    assert env.music_calls == 3  # nothing embedded
    assert (report.tracks, report.removed, report.analysed) == (2, 1, 0)
    assert set(_payloads(env)) == {_sha(a), _sha(c)}
    assert env.catalog.get([track_id_for(first and _sha(tones["b"]))]) == []
    live = await CatalogVersionStore(env.engine).live()
    assert live is not None and live.track_count == 2
    members = await TrackStore(env.engine).list_tracks(catalog_version_id=live.id)
    assert {t.content_hash for t in members} == {_sha(a), _sha(c)}


async def test_a_crash_midway_keeps_the_old_catalog_and_a_rerun_resumes(env: Env, tones: dict[str, Path]) -> None:
    env.add(tones, "a")
    await env.admin.add_folder(env.music)
    first = await env.admin.refresh()
    live_name = env.catalog.live_version().name
    env.add(tones, "b", "c", "d", "e")
    env.encoders.music.fail_after = env.music_calls + 2  # type: ignore[attr-defined]  # two more, then crash
    with pytest.raises(RuntimeError, match="the indexer crashed"):
        await env.admin.refresh()
    # the old version still serves, in Qdrant and in SQL
    assert env.catalog.live_version().name == live_name and env.catalog.count() == 1
    live = await CatalogVersionStore(env.engine).live()
    assert live is not None and live.id == first.catalog_version_id
    runs = await JobStore(env.engine).list_runs(kind=REFRESH_JOB)
    assert runs[0].status is JobStatus.FAILED and runs[0].error == "RuntimeError: the indexer crashed"
    assert runs[0].detail["analysed"] == 2
    # the re-run embeds only the two files the crash did not reach
    env.encoders.music.fail_after = None  # type: ignore[attr-defined]
    report = await env.admin.refresh()
    assert env.music_calls == 1 + 2 + 2
    assert (report.analysed, report.reused, report.tracks) == (2, 3, 5)
    assert env.catalog.count() == 5 and env.catalog.live_version().name != live_name


async def test_a_failed_write_leaves_the_old_version_live(env: Env, tones: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    env.add(tones, "a")
    await env.admin.add_folder(env.music)
    first = await env.admin.refresh()
    env.add(tones, "b")

    def broken_upsert(self, infos, *, catalog_version_id):
        raise OSError("disk full")

    monkeypatch.setattr(TrackStore, "upsert", broken_upsert)
    with pytest.raises(OSError, match="disk full"):
        await env.admin.refresh()
    versions = CatalogVersionStore(env.engine)
    live = await versions.live()
    assert live is not None and live.id == first.catalog_version_id
    newest = (await versions.list_versions())[0]
    assert newest.status is VersionStatus.FAILED and newest.error == "OSError: disk full"
    assert env.catalog.count() == 1 and len([v for v in env.catalog.list_versions() if v.complete]) == 1


async def test_corrupt_files_are_reported_and_skipped(env: Env, tones: dict[str, Path]) -> None:
    good = env.add(tones, "a", "b")
    (env.music / "junk.mp3").write_bytes(b"\x00\x01" * 3000)
    (env.music / "cut.ogg").write_bytes(tones["c"].read_bytes()[:3000])
    (env.music / "notes.txt").write_text("not audio, not even looked at")
    await env.admin.add_folder(env.music)
    report = await env.admin.refresh()
    assert report.files == 4 and report.tracks == 2
    assert set(_payloads(env)) == {_sha(p) for p in good}
    failed = {Path(f.path).name: f for f in report.failures}
    assert set(failed) == {"junk.mp3", "cut.ogg"}
    assert all(f.stage == "analyse" for f in failed.values())
    assert "NotMediaError" in failed["junk.mp3"].error
    status = await env.admin.status()
    assert {Path(f.path).name for f in status.failures} == {"junk.mp3", "cut.ogg"}
    assert status.live is not None and status.live.failed_count == 2


async def test_a_refresh_where_every_file_fails_publishes_nothing(env: Env, tones: dict[str, Path]) -> None:
    env.add(tones, "a")
    await env.admin.add_folder(env.music)
    first = await env.admin.refresh()
    (env.music / "a.ogg").write_bytes(b"garbage" * 1000)
    with pytest.raises(CatalogAdminError, match="every one of the 1 audio files failed"):
        await env.admin.refresh()
    assert env.catalog.count() == 1
    assert (await CatalogVersionStore(env.engine).live()).id == first.catalog_version_id  # type: ignore[union-attr]


async def test_a_vanished_folder_fails_the_refresh(env: Env, tones: dict[str, Path], tmp_path: Path) -> None:
    env.add(tones, "a")
    other = tmp_path / "usb"
    other.mkdir()
    env.add(tones, "b", folder=other)
    await env.admin.add_folder(env.music)
    await env.admin.add_folder(other)
    await env.admin.refresh()
    assert env.catalog.count() == 2
    shutil.rmtree(other)
    with pytest.raises(CatalogAdminError, match="missing"):
        await env.admin.refresh()
    assert env.catalog.count() == 2
    assert await env.admin.remove_folder(other) is True
    report = await env.admin.refresh()
    assert report.tracks == 1 and report.removed == 1


async def test_removed_folder_leaves_at_the_next_refresh(env: Env, tones: dict[str, Path], tmp_path: Path) -> None:
    env.add(tones, "a")
    other = tmp_path / "more"
    other.mkdir()
    env.add(tones, "b", folder=other)
    await env.admin.add_folder(env.music)
    await env.admin.add_folder(other)
    await env.admin.refresh()
    assert await env.admin.remove_folder(other) is True
    assert await env.admin.remove_folder(other) is False
    assert [s.path for s in await env.admin.list_folders()] == [env.music.resolve()]
    await env.admin.refresh()
    assert set(_payloads(env)) == {_sha(env.music / "a.ogg")}


async def test_same_audio_twice_is_one_track(env: Env, tones: dict[str, Path]) -> None:
    [a] = env.add(tones, "a")
    (env.music / "sub").mkdir()
    shutil.copyfile(a, env.music / "sub" / "copy.ogg")
    await env.admin.add_folder(env.music)
    report = await env.admin.refresh()
    assert report.files == 2 and report.tracks == 1 and env.music_calls == 1
    assert report.duplicates == [(str(env.music / "sub" / "copy.ogg"), str(a))]
    assert (await env.admin.status()).duplicates == report.duplicates  # status names the copy and what it copies


async def test_a_second_refresh_at_once_is_refused(env: Env, tones: dict[str, Path]) -> None:
    env.add(tones, "a", "b")
    await env.admin.add_folder(env.music)
    first = asyncio.create_task(env.admin.refresh())
    await asyncio.sleep(0)  # let it take the lock
    with pytest.raises(RefreshInProgressError):
        await env.admin.refresh()
    assert (await first).tracks == 2


async def test_a_cleaned_up_excerpt_is_cut_again(env: Env, tones: dict[str, Path]) -> None:
    [a] = env.add(tones, "a")
    await env.admin.add_folder(env.music)
    await env.admin.refresh()
    track = await TrackStore(env.engine).get_by_hash(content_hash=_sha(a))
    sha = track.attributes["excerpt"]["sha256"]  # type: ignore[union-attr]
    assert env.media.delete(sha)
    report = await env.admin.refresh()
    assert report.excerpts_cut == 1 and report.analysed == 0
    assert env.media.exists(sha)  # the same excerpt, content-addressed


# =================================================================================================
# a real library: files ffmpeg refuses, fragments, tones, silence; titles
# =================================================================================================

REAL_CLIP_S = 30  # seconds: longer than the excerpt (25 s), so the excerpt is a window of the track


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, orchestral_track: Path) -> dict[str, Path]:
    """A 30 s clip of a real Vorbis track, the same with a padded setup header (ffmpeg refuses it,
    libsndfile reads it: tests/helpers/audio.py), a 1 s fragment, a sine and silence."""
    root = tmp_path_factory.mktemp("real")

    def clip(out: Path, start: float, seconds: float, codec: str) -> Path:
        subprocess.run(
            [ffmpeg_binary(), "-nostdin", "-loglevel", "error", "-y", "-ss", str(start), "-t", str(seconds),
             "-i", str(orchestral_track), "-map", "0:a:0", "-c:a", codec, str(out)],
            check=True, timeout=60,
        )  # fmt: skip
        return out

    # the clip keeps the track's own Vorbis packets; the fragment is re-encoded to last exactly 1 s
    made = {"clip": clip(root / "clip.ogg", 30, REAL_CLIP_S, "copy"), "fragment": clip(root / "fragment.ogg", 40, 1, "libvorbis")}
    made["padded"] = pad_vorbis_setup_header(made["clip"], root / "padded.ogg")
    made["sine"] = lavfi(root / "sine.ogg", f"sine=f=440:d={TRACK_S}", args=("-c:a", "libvorbis"))
    made["silence"] = lavfi(root / "silence.ogg", f"anullsrc=r=44100:cl=stereo:d={TRACK_S}", args=("-t", str(TRACK_S), "-c:a", "libvorbis"))
    return made


async def test_a_real_library_is_indexed_or_skipped_with_reasons(env: Env, tones: dict[str, Path], real: dict[str, Path]) -> None:
    env.add(tones, "a")
    for name in ("padded", "fragment", "sine", "silence"):
        shutil.copyfile(real[name], env.music / real[name].name)
    (env.music / "junk.ogg").write_bytes(b"OggS" + b"\x00" * 500)
    (env.music / "readme.mp3").write_text("not audio\n" * 300)
    await env.admin.add_folder(env.music)
    report = await env.admin.refresh()

    assert (report.files, report.tracks, report.analysed) == (7, 2, 2)
    reasons = {Path(f.path).name: f.reason for f in report.failures}
    assert {n: r for n, r in reasons.items() if n != "junk.ogg"} == {
        "fragment.ogg": "too short (1.0 s < 5 s)",
        "sine.ogg": "constant tone",
        "silence.ogg": "silence",
        "readme.mp3": "not audio",
    }
    assert reasons["junk.ogg"].startswith("decode failed: has a media signature but ffmpeg cannot open it")
    assert " @ 0x" not in reasons["junk.ogg"]  # no process address: the same file reads the same each run
    assert all(f.stage == "analyse" for f in report.failures)
    assert reason_counts(report.failures) == {"too short": 1, "constant tone": 1, "silence": 1, "not audio": 1, "decode failed": 1}
    assert env.music_calls == 2  # nothing skipped reached the music encoder

    # the file ffmpeg refuses: decoded by libsndfile, its excerpt cut from a WAV of the window
    padded = await TrackStore(env.engine).get_by_hash(content_hash=_sha(env.music / "padded.ogg"))
    assert padded is not None and padded.attributes["decoder"] == "libsndfile"
    assert padded.duration_s == pytest.approx(REAL_CLIP_S, abs=0.1)
    excerpt = padded.attributes["excerpt"]
    assert excerpt["cut_start_s"] == pytest.approx(excerpt["start_s"]) and excerpt["start_s"] > 0
    heard = decode_audio(env.media.path_for(excerpt["sha256"]), sample_rate=16_000, start=2.0, duration=15.0)
    truth = decode_audio(real["clip"], sample_rate=16_000, start=excerpt["cut_start_s"] + 2.0, duration=15.0)
    n = min(len(heard), len(truth))
    assert float(np.corrcoef(heard[:n], truth[:n])[0, 1]) > 0.9  # the excerpt is that window of the track
    a = await TrackStore(env.engine).get_by_hash(content_hash=_sha(env.music / "a.ogg"))
    assert a is not None and a.attributes["decoder"] == "ffmpeg"

    # status lists the same files with the same reasons; the next refresh skips them again
    status = await env.admin.status()
    assert {Path(f.path).name: f.reason for f in status.failures} == reasons
    again = await env.admin.refresh()
    assert {Path(f.path).name: f.reason for f in again.failures} == reasons
    assert (again.tracks, again.analysed, again.reused) == (2, 0, 2)


async def test_the_default_minimum_is_one_paper_segment(tmp_path: Path, sqlite_template: Path, counting: Encoders) -> None:
    env = Env(tmp_path, sqlite_template, counting)
    env.admin = CatalogAdmin(engine=env.engine, catalog=env.catalog, media_store=env.media, data_dir=env.data, encoders=counting)
    try:
        lavfi(env.music / "short.ogg", melody(300, TRACK_S), args=("-c:a", "libvorbis"))
        lavfi(env.music / "long.ogg", melody(400, 12), args=("-c:a", "libvorbis"))
        await env.admin.add_folder(env.music)
        report = await env.admin.refresh()
        assert report.tracks == 1 and [(Path(f.path).name, f.reason) for f in report.failures] == [("short.ogg", "too short (6.0 s < 10 s)")]
    finally:
        await env.close()


async def test_titles_from_tags_then_manifest_then_file_then_folder(env: Env, tones: dict[str, Path], tmp_path: Path) -> None:
    env.add(tones, "a", "b", "tagged")
    album = env.music / "Rainy Days"
    album.mkdir()
    shutil.copyfile(tones["c"], album / "song.ogg")
    shutil.copyfile(tones["d"], album / "02.ogg")
    generic = env.music / "music"
    generic.mkdir()
    shutil.copyfile(tones["e"], generic / "07.ogg")
    manifest = tmp_path / "titles.csv"
    manifest.write_text("file,title\ntagged.ogg,Manifest Title\na.ogg,Morning Theme\n")
    await env.admin.add_folder(env.music, manifest=manifest)
    report = await env.admin.refresh()
    assert report.failures == []
    store = TrackStore(env.engine)
    got = {}
    for path in ("tagged.ogg", "a.ogg", "b.ogg", "Rainy Days/song.ogg", "Rainy Days/02.ogg", "music/07.ogg"):
        track = await store.get_by_hash(content_hash=_sha(env.music / path))
        assert track is not None
        got[path] = (track.title, track.attributes["title_source"])
    assert got == {
        "tagged.ogg": ("Night Drive", "tags"),  # the file's own tag first
        "a.ogg": ("Morning Theme", "manifest"),
        "b.ogg": ("B", "file name"),
        "Rainy Days/song.ogg": ("Rainy Days", "folder name"),
        "Rainy Days/02.ogg": ("Rainy Days 2", "folder name"),
        "music/07.ogg": ("07", "file name"),  # a generic folder name is no better
    }
    assert _payloads(env)[_sha(album / "song.ogg")].title == "Rainy Days"  # what searches and replies show


# =================================================================================================
# tags, manifest, licences
# =================================================================================================


async def test_manifest_and_licence_rules_land_in_payloads(env: Env, tones: dict[str, Path], tmp_path: Path) -> None:
    env.add(tones, "a", "b", "tagged")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "file,title,artist,licence,tags\n"
        "a.ogg,Morning Theme,Ada,CC0-1.0,calm; piano\n"
        "tagged.ogg,,,,night\n"
        "gone.ogg,Missing,,,\n"
    )
    await env.admin.add_folder(env.music, manifest=manifest, licence="CC-BY-SA-4.0")
    report = await env.admin.refresh()
    p = _payloads(env)
    a, b, tagged = (p[_sha(env.music / n)] for n in ("a.ogg", "b.ogg", "tagged.ogg"))
    assert (a.title, a.artist, a.licence) == ("Morning Theme", "Ada", "CC0-1.0")  # the manifest wins
    assert a.tags[:2] == ("calm", "piano")
    assert (b.title, b.licence) == ("B", "CC-BY-SA-4.0")  # the folder's licence
    assert (tagged.title, tagged.artist, tagged.licence) == ("Night Drive", "The Testers", "CC-BY-SA-4.0")
    assert tagged.tags[:3] == ("night", "synthwave", "electronic")  # manifest tags, then file genres
    assert report.notes == ["manifest entries matching no file: gone.ogg"]
    track = await TrackStore(env.engine).get_by_hash(content_hash=_sha(env.music / "a.ogg"))
    assert track is not None and track.attributes["licence_source"] == "manifest"
    assert track.attributes["tag_sources"]["manifest"] == ["calm", "piano"]


async def test_file_licence_then_debian_copyright(env: Env, tones: dict[str, Path]) -> None:
    env.add(tones, "a", "tagged")
    (env.music / "copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n")
    await env.admin.add_folder(env.music)
    await env.admin.refresh()
    p = _payloads(env)
    assert p[_sha(env.music / "tagged.ogg")].licence == "CC-BY-4.0"  # the file's own LICENSE tag
    assert p[_sha(env.music / "a.ogg")].licence == SEE_COPYRIGHT
    track = await TrackStore(env.engine).get_by_hash(content_hash=_sha(env.music / "a.ogg"))
    assert track is not None and track.attributes["licence_file"] == str(env.music / "copyright")


async def test_changed_metadata_recomputes_only_the_sentence_vector(env: Env, tones: dict[str, Path], tmp_path: Path) -> None:
    [a] = env.add(tones, "a")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"a.ogg": {"title": "First Title", "tags": ["calm"]}}))
    await env.admin.add_folder(env.music, manifest=manifest)
    await env.admin.refresh()
    [before] = env.catalog.get([track_id_for(_sha(a))], with_vectors=True)
    manifest.write_text(json.dumps({"a.ogg": {"title": "Second Title", "tags": ["loud", "drums"]}}))
    report = await env.admin.refresh()
    assert env.music_calls == 1 and (report.analysed, report.text_updated) == (0, 1)
    [after] = env.catalog.get([track_id_for(_sha(a))], with_vectors=True)
    assert after.payload.title == "Second Title" and after.payload.tags[:2] == ("loud", "drums")
    np.testing.assert_array_equal(after.vectors[MUSIC_VECTOR], before.vectors[MUSIC_VECTOR])
    sentence = f"Second Title: loud, drums, {', '.join(after.payload.tags[2:8])}."
    expected = env.encoders.text.encode_sentences([sentence])[0].numpy()
    np.testing.assert_allclose(after.vectors[TEXT_VECTOR], expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-5)


async def test_add_folder_refuses_bad_input(env: Env, tmp_path: Path) -> None:
    with pytest.raises(CatalogAdminError, match="is not a folder"):
        await env.admin.add_folder(tmp_path / "nope")
    with pytest.raises(CatalogAdminError, match="does not exist"):
        await env.admin.add_folder(env.music, manifest=tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("title,artist\nX,Y\n")
    with pytest.raises(ManifestError, match="file column"):
        await env.admin.add_folder(env.music, manifest=bad)
    assert await env.admin.list_folders() == []
    src = await env.admin.add_folder(env.music, licence="MIT")
    again = await env.admin.add_folder(env.music, licence="GPL-3.0")  # re-adding updates it
    assert again.id == src.id and again.licence == "GPL-3.0"


MANIFESTS = [
    ("m.csv", "filename,title,license,tags\nsub/x.ogg,X,MIT,a|b\n", {"sub/x.ogg": ManifestEntry("X", "", "MIT", ("a", "b"))}),
    ("m.json", '[{"file": "x.ogg", "artist": "Y", "tags": "c; d"}]', {"x.ogg": ManifestEntry("", "Y", "", ("c", "d"))}),
    ("m.json", '{"tracks": [{"path": "x.ogg", "licence": "CC0"}]}', {"x.ogg": ManifestEntry("", "", "CC0", ())}),
    ("m.json", '{"x.ogg": {"title": "T", "tags": ["Rock", "rock"]}}', {"x.ogg": ManifestEntry("T", "", "", ("rock",))}),
]


@pytest.mark.parametrize(("name", "text", "expected"), MANIFESTS)
def test_load_manifest_formats(tmp_path: Path, name: str, text: str, expected: dict[str, ManifestEntry]) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert load_manifest(path) == expected


BAD_MANIFESTS = [
    ("m.json", "{not json", "not valid JSON"),
    ("m.json", '[{"title": "no file"}]', 'entry 0 has no "file"'),
    ("m.csv", "file,title\n,Nameless\n", "line 2: no file name"),
    ("m.txt", "file\nx.ogg\n", "use a .csv or .json file"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_MANIFESTS)
def test_load_manifest_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


def test_read_file_tags(tones: dict[str, Path], tmp_path: Path) -> None:
    tags = read_file_tags(tones["tagged"])
    assert (tags.title, tags.artist, tags.genres, tags.licence) == ("Night Drive", "The Testers", ("synthwave", "electronic"), "CC-BY-4.0")
    assert read_file_tags(tones["a"]).title == ""
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\xff" * 100)
    assert read_file_tags(junk).title == ""


def test_track_ids_are_deterministic_uuids() -> None:
    sha = "0123456789abcdef" * 4
    assert track_id_for(sha) == "01234567-89ab-cdef-0123-456789abcdef"
    with pytest.raises(ValueError):
        track_id_for("xyz")


# =================================================================================================
# fusion vectors, schema, status
# =================================================================================================


async def test_fusion_vectors_when_a_checkpoint_is_configured(tmp_path: Path, sqlite_template: Path, counting: Encoders, tones: dict[str, Path]) -> None:
    from engine.fusion import FusionConfig, MuseChatRecommender, track_vector

    torch.manual_seed(0)
    dim = counting.profile.music_dim
    model = MuseChatRecommender(FusionConfig(profile="tiny", video_dim=32, text_dim=32, music_dim=dim, target_music_dim=dim)).eval()
    env = Env(tmp_path, sqlite_template, counting, fusion=model, fusion_schema=True)
    try:
        [a] = env.add(tones, "a")
        await env.admin.add_folder(env.music)
        await env.admin.refresh()
        [rec] = env.catalog.get([track_id_for(_sha(a))], with_vectors=True)
        assert set(rec.vectors) == {FUSION_VECTOR, TEXT_VECTOR, MUSIC_VECTOR}
        cached = env.admin.features.get(_sha(a))
        assert cached is not None
        with torch.no_grad():
            expected = track_vector(model.encode_music(pooled=torch.from_numpy(cached.segment_vectors))).numpy()
        assert rec.vectors[FUSION_VECTOR].shape == (256,)
        np.testing.assert_allclose(rec.vectors[FUSION_VECTOR], expected, rtol=1e-4, atol=1e-5)
    finally:
        await env.close()


@pytest.fixture(scope="module")
def long_tones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 25 s melodies: three segments each (10 + 10 + 5 s), a 25 s excerpt."""
    root = tmp_path_factory.mktemp("long-tones")
    return {name: lavfi(root / f"{name}.ogg", melody(hz, 25), args=("-c:a", "libvorbis")) for name, hz in [("a", 262), ("b", 392)]}


async def test_trained_towers_make_the_fusion_vectors_and_keep_the_candidate_clip(
    tmp_path: Path, sqlite_template: Path, tiny_towers: Path, long_tones: dict[str, Path]
) -> None:
    from bot.service.catalog_admin import load_fusion
    from engine.fusion import FusionConfig, MuseChatRecommender, track_vector
    from engine.media import plan_segments
    from engine.music_towers import TowerRecommender, fusion_id, load_tower_checkpoint

    tiny = load_encoders("tiny")
    model = load_fusion(tiny_towers, tiny.profile)
    assert isinstance(model, TowerRecommender) and not any(p.requires_grad for p in model.parameters())
    fid = fusion_id(tiny_towers)
    env = Env(tmp_path, sqlite_template, tiny, fusion=model, fusion_schema=True, fusion_id=fid)
    try:
        paths = env.add(long_tones, "a", "b")
        await env.admin.add_folder(env.music)
        report = await env.admin.refresh()
        assert (report.analysed, report.tower_tracks, report.failures) == (2, 2, [])
        # by hand, on towers loaded apart: the analysed window decoded once, cut into the paper's segments,
        # each segment's log-mels through g_mt's CLS and the tower head, the normalised mean
        fresh = load_tower_checkpoint(tiny_towers, expect_profile="tiny")
        sr = tiny.music.sample_rate
        for path in paths:
            sha = _sha(path)
            [rec] = env.catalog.get([track_id_for(sha)], with_vectors=True)
            assert rec.payload.fusion_id == fid
            segs = plan_segments(probe(path).duration_s)
            assert len(segs) == 3
            audio = decode_audio(path, sample_rate=sr, start=segs[0].start_s, duration=segs[-1].end_s - segs[0].start_s)
            clips = [audio[round((s.start_s - segs[0].start_s) * sr) : round((s.end_s - segs[0].start_s) * sr)] for s in segs]
            mels = [torch.from_numpy(tiny.music.log_mels(c))[None].float() for c in clips]
            with torch.no_grad():
                want = track_vector(torch.cat([fresh.recommender.music(pooled=fresh.g_mt.ast(m).last_hidden_state[:, 0]) for m in mels])).numpy()
            np.testing.assert_allclose(rec.vectors[FUSION_VECTOR], want, rtol=1e-4, atol=1e-5)
            # the candidate clip g_mc reads at turn 2: the segment nearest the excerpt's centre
            analysis = env.admin.features.get(sha)
            centre = analysis.excerpt_start_s + analysis.excerpt_duration_s / 2
            k = min(range(len(segs)), key=lambda i: abs((segs[i].start_s + segs[i].end_s) / 2 - centre))
            entry = env.admin.towers.get(sha)
            assert entry.candidate_segment == k and entry.candidate_mels.tobytes() == tiny.music.log_mels(clips[k]).tobytes()
        # nothing new: nothing decoded again, the same vectors (from the checkpoint's cache)
        before = env.catalog.get([track_id_for(_sha(paths[0]))], with_vectors=True)[0].vectors[FUSION_VECTOR]
        again = await env.admin.refresh()
        assert (again.analysed, again.tower_tracks, again.reused) == (0, 0, 2)
        [rec2] = env.catalog.get([track_id_for(_sha(paths[0]))], with_vectors=True)
        assert rec2.vectors[FUSION_VECTOR].tobytes() == before.tobytes() and rec2.payload.fusion_id == fid
    finally:
        await env.close()

    # the same catalog refreshed with a checkpoint without towers: every vector is that model's, and says so
    torch.manual_seed(0)
    dim = tiny.profile.music_dim
    plain = MuseChatRecommender(FusionConfig(profile="tiny", video_dim=32, text_dim=32, music_dim=dim, target_music_dim=dim)).eval()
    (tmp_path / "plain").mkdir()
    env = Env(tmp_path / "plain", sqlite_template, tiny, fusion=plain, fusion_schema=True, fusion_id="0123456789abcdef")
    try:
        env.add(long_tones, "a")
        await env.admin.add_folder(env.music)
        assert (await env.admin.refresh()).tower_tracks == 0 and env.admin.towers is None
        [rec] = env.catalog.get([track_id_for(_sha(env.music / long_tones["a"].name))], with_vectors=True)
        assert rec.payload.fusion_id == "0123456789abcdef"
        with torch.no_grad():
            want = track_vector(plain.encode_music(pooled=torch.from_numpy(env.admin.features.get(rec.payload.content_hash).segment_vectors))).numpy()
        np.testing.assert_allclose(rec.vectors[FUSION_VECTOR], want, rtol=1e-4, atol=1e-5)
    finally:
        await env.close()


def test_a_towers_model_needs_its_fusion_id(tmp_path: Path, sqlite_template: Path, tiny_towers: Path) -> None:
    from bot.service.catalog_admin import load_fusion

    tiny = load_encoders("tiny")
    with pytest.raises(ValueError, match="fusion_id"):
        Env(tmp_path, sqlite_template, tiny, fusion=load_fusion(tiny_towers, tiny.profile), fusion_schema=True)


async def test_schema_must_match_the_fusion_setting(tmp_path: Path, sqlite_template: Path, counting: Encoders, tones: dict[str, Path]) -> None:
    env = Env(tmp_path, sqlite_template, counting, fusion=None, fusion_schema=True)
    try:
        env.add(tones, "a")
        await env.admin.add_folder(env.music)
        with pytest.raises(CatalogAdminError, match="fusion"):
            await env.admin.refresh()
        [run] = await JobStore(env.engine).list_runs(kind=REFRESH_JOB)
        assert run.status is JobStatus.FAILED and env.music_calls == 0
    finally:
        await env.close()


def test_catalog_schema_depends_on_fusion() -> None:
    tiny = load_encoders("tiny").profile
    assert catalog_schema(tiny, fusion=False).to_json() == {TEXT_VECTOR: 32, MUSIC_VECTOR: 32}
    assert catalog_schema(tiny, fusion=True).to_json() == {FUSION_VECTOR: 256, TEXT_VECTOR: 32, MUSIC_VECTOR: 32}


async def test_status(env: Env, tones: dict[str, Path]) -> None:
    empty = await env.admin.status()
    assert empty.live is None and empty.live_points == 0 and empty.folders == [] and empty.last_runs == []
    env.add(tones, "a")
    (env.music / "junk.ogg").write_bytes(b"OggS" + b"\x00" * 500)
    await env.admin.add_folder(env.music, licence="CC0-1.0")
    report = await env.admin.refresh()
    await JobStore(env.engine).set_schedule(kind=REFRESH_JOB, cron="0 3 * * *")
    status = await env.admin.status()
    assert status.live is not None and status.live.id == report.catalog_version_id
    assert status.live_points == 1 and status.live_version_name == report.version_name
    assert [(f.path, f.licence) for f in status.folders] == [(env.music.resolve(), "CC0-1.0")]
    assert [r.id for r in status.last_runs] == [report.job_id] and status.running is None
    assert [Path(f.path).name for f in status.failures] == ["junk.ogg"]
    assert status.schedule is not None and status.schedule.cron == "0 3 * * *"
    assert status.schema == {TEXT_VECTOR: 32, MUSIC_VECTOR: 32}


async def test_lazy_encoders_are_loaded_only_when_needed(tmp_path: Path, sqlite_template: Path, counting: Encoders, tones: dict[str, Path]) -> None:
    env = Env(tmp_path, sqlite_template, counting)
    loads: list[int] = []

    def load() -> Encoders:
        loads.append(1)
        return counting

    env.admin = CatalogAdmin(
        engine=env.engine, catalog=env.catalog, media_store=env.media, data_dir=env.data,
        encoders=load, profile=counting.profile, min_duration_s=MIN_S,
    )  # fmt: skip
    try:
        await env.admin.add_folder(env.music)
        await env.admin.status()
        await env.admin.refresh()  # an empty folder: nothing to embed
        assert loads == []
        env.add(tones, "a")
        await env.admin.refresh()
        await env.admin.refresh()
        assert loads == [1]
    finally:
        await env.close()


async def test_a_cancelled_refresh_is_recorded_and_leaves_the_old_version(env: Env, tones: dict[str, Path]) -> None:
    env.add(tones, "a")
    await env.admin.add_folder(env.music)
    first = await env.admin.refresh()
    env.add(tones, "b", "c", "d")
    one_done = asyncio.Event()

    def on_progress(event: RefreshProgress) -> None:
        if event.stage == "analyse" and event.outcome == "analysed":
            one_done.set()

    task = asyncio.create_task(env.admin.refresh(progress=on_progress))
    await asyncio.wait_for(one_done.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [run, _] = await JobStore(env.engine).list_runs(kind=REFRESH_JOB)
    assert run.status is JobStatus.FAILED and run.error == "CancelledError"
    assert env.catalog.count() == 1
    assert (await CatalogVersionStore(env.engine).live()).id == first.catalog_version_id  # type: ignore[union-attr]
    report = await env.admin.refresh()  # resumes: the finished file is not embedded again
    assert report.tracks == 4 and report.reused >= 2 and report.analysed <= 2


async def test_versions_are_written_in_batches(env: Env, tones: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.service.catalog_admin as catalog_admin

    monkeypatch.setattr(catalog_admin, "WRITE_BATCH", 2)
    env.add(tones, "a", "b", "c")
    await env.admin.add_folder(env.music)
    sizes: list[int] = []
    begin = env.catalog.begin_version

    def counting_begin():
        writer = begin()
        upsert = writer.upsert

        def counted(points):
            points = list(points)
            sizes.append(len(points))
            return upsert(points)

        writer.upsert = counted  # type: ignore[method-assign]
        return writer

    monkeypatch.setattr(env.catalog, "begin_version", counting_begin)
    report = await env.admin.refresh()
    assert sizes == [2, 1] and report.tracks == 3 and env.catalog.count() == 3


@pytest.mark.slow
async def test_lite_refresh_of_real_music(tmp_path: Path, sqlite_template: Path, music_dir: Path) -> None:
    """Two real Debian game-music tracks and their copyright file, on the lite profile (musicnn)."""
    from engine.encoders.musicnn import MSD_LABELS, MTT_LABELS

    lite = load_encoders("lite")
    env = Env(tmp_path, sqlite_template, Encoders(lite.profile, lite.image, lite.text, CountingMusic(lite.music)))
    try:
        package = music_dir / "wesnoth-1.16-music"
        for name in ("battle-epic.ogg", "copyright"):
            shutil.copyfile(package / name, env.music / name)
        shutil.copyfile(music_dir / "supertux-data" / "chipdisko.ogg", env.music / "chipdisko.ogg")
        await env.admin.add_folder(env.music)
        report = await env.admin.refresh()
        assert (report.tracks, report.analysed, report.failures) == (2, 2, [])
        p = _payloads(env)
        epic = p[_sha(env.music / "battle-epic.ogg")]
        disko = p[_sha(env.music / "chipdisko.ogg")]
        assert (epic.title, epic.artist, epic.licence) == ("Battle Epic", "Doug Kaufman", "GPL")  # the file's tags
        assert (disko.title, disko.artist) == ("Mortimer's Chipdisko", "Mortimer Twang")
        assert disko.licence == SEE_COPYRIGHT  # no licence tag: the package's copyright file
        top_mtt: dict[str, list[str]] = {}
        for payload in (epic, disko):
            track = await TrackStore(env.engine).get_by_hash(content_hash=payload.content_hash)
            assert track is not None
            mtt = [n for n, _ in track.attributes["top_mtt"]]
            msd = [n for n, _ in track.attributes["top_msd"]]
            top_mtt[payload.title] = mtt
            assert len(mtt) == 5 and set(mtt) <= set(MTT_LABELS)  # paper section 3: top-5 MTT
            assert len(msd) == 5 and set(msd) <= set(MSD_LABELS)  # and top-5 MSD
            assert {t.lower() for t in mtt + msd} <= set(payload.tags)
            assert len(payload.tag_probs) == 100 and payload.tempo_bpm and payload.tempo_bpm > 40
            excerpt = track.attributes["excerpt"]
            assert probe(env.media.path_for(excerpt["sha256"])).duration_s == pytest.approx(25.0, abs=0.1)
        assert "techno" in top_mtt[disko.title] and {"classical", "strings"} & set(top_mtt[epic.title])
    finally:
        await env.close()

"""Tests of storage/media_store.py: content addressing, size cap, atomic writes, retention."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from storage.media_store import (
    CHUNK_BYTES,
    STALE_TMP_AGE_S,
    CleanupReport,
    MediaNotFoundError,
    MediaStore,
    MediaTooLargeError,
    RetentionPolicy,
)

NOW = 1_750_000_000.0  # a fixed "now" for retention tests, seconds since the epoch


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_files(store: MediaStore) -> list[Path]:
    return sorted(p for p in (store.root / "objects").rglob("*") if p.is_file())


def tmp_files(store: MediaStore) -> list[Path]:
    return sorted(store.tmp_dir.iterdir())


class CountingStream:
    """A huge upload (a file-like object) that counts how much of it the store read."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        n = min(n if n > 0 else CHUNK_BYTES, self.total - self.read_bytes)
        self.read_bytes += n
        return b"\x07" * n


class FailingStream:
    """A download (a file-like object) that breaks after `good` bytes."""

    def __init__(self, good: int) -> None:
        self.good = good
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        if self.sent >= self.good:
            raise ConnectionResetError("peer closed the connection")
        n = min(n, self.good - self.sent)
        self.sent += n
        return b"x" * n


@pytest.fixture
def store(tmp_path: Path) -> MediaStore:
    return MediaStore(tmp_path / "media", max_file_bytes=8 * 2**20)


def test_put_bytes_is_content_addressed(store: MediaStore) -> None:
    data = b"\x00\x00\x00\x18ftypmp42 some video bytes"
    ref = store.put_bytes(data)
    assert ref.sha256 == sha(data)
    assert ref.size == len(data)
    assert ref.path == store.root / "objects" / ref.sha256[:2] / ref.sha256
    assert ref.path.read_bytes() == data
    assert store.exists(ref.sha256)
    assert store.path_for(ref.sha256) == ref.path
    with store.open(ref.sha256) as f:
        assert f.read() == data
    assert store.ref(ref.sha256) == ref
    # The same content again: same reference, still one file.
    assert store.put_bytes(data) == ref
    assert stored_files(store) == [ref.path]
    assert tmp_files(store) == []
    assert store.usage() == (1, len(data))


def test_put_file_streams_paths_and_streams(store: MediaStore, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK_BYTES + 12345)  # several chunks
    src = tmp_path / "upload.mp4"
    src.write_bytes(data)
    ref = store.put_file(src)
    assert ref.sha256 == sha(data) and ref.size == len(data)
    assert src.exists()  # copied, not moved
    assert ref.path.read_bytes() == data
    other = b"another file" * 1000
    ref2 = store.put_file(io.BytesIO(other))
    assert ref2.sha256 == sha(other)
    assert len(stored_files(store)) == 2
    assert tmp_files(store) == []


def test_put_file_move_renames_instead_of_copying(store: MediaStore) -> None:
    generated = store.tmp_dir / "preview.mp4"
    data = b"preview" * 5000
    generated.write_bytes(data)
    inode = generated.stat().st_ino
    ref = store.put_file(generated, move=True)
    assert not generated.exists()
    assert ref.path.read_bytes() == data
    assert ref.path.stat().st_ino == inode  # renamed, not copied
    with pytest.raises(ValueError, match="path"):
        store.put_file(io.BytesIO(b"x"), move=True)


def test_put_bytes_over_the_cap(store: MediaStore) -> None:
    with pytest.raises(MediaTooLargeError) as info:
        store.put_bytes(b"x" * 101, max_bytes=100)
    assert info.value.limit_bytes == 100 and info.value.size_bytes == 101
    assert "exceeds the limit of 100 bytes" in str(info.value)
    assert stored_files(store) == [] and tmp_files(store) == []
    # A per-call limit cannot raise the store's own cap.
    with pytest.raises(MediaTooLargeError):
        store.put_bytes(b"x" * (store.max_file_bytes + 1), max_bytes=2 * store.max_file_bytes)
    assert store.put_bytes(b"x" * 100, max_bytes=100).size == 100


def test_put_file_path_over_the_cap_fails_before_reading(store: MediaStore, tmp_path: Path) -> None:
    src = tmp_path / "big.mp4"
    with open(src, "wb") as f:
        f.truncate(store.max_file_bytes + 1)  # sparse: large but instant
    with pytest.raises(MediaTooLargeError) as info:
        store.put_file(src)
    assert info.value.size_bytes == store.max_file_bytes + 1
    assert stored_files(store) == [] and tmp_files(store) == []


def test_put_file_stream_over_the_cap_stops_early(store: MediaStore) -> None:
    upload = CountingStream(total=10 * 2**30)  # a 10 GiB upload against an 8 MiB cap
    with pytest.raises(MediaTooLargeError, match="more than 8388608 bytes"):
        store.put_file(upload)  # type: ignore[arg-type]
    assert upload.read_bytes <= store.max_file_bytes + CHUNK_BYTES
    assert stored_files(store) == [] and tmp_files(store) == []


def test_a_failed_write_leaves_nothing(store: MediaStore) -> None:
    with pytest.raises(ConnectionResetError):
        store.put_file(FailingStream(good=2 * CHUNK_BYTES + 10))  # type: ignore[arg-type]
    assert stored_files(store) == [] and tmp_files(store) == []


def test_lookups_validate_the_hash(store: MediaStore) -> None:
    missing = sha(b"never stored")
    assert not store.exists(missing)
    with pytest.raises(MediaNotFoundError):
        store.path_for(missing)
    with pytest.raises(FileNotFoundError):
        store.open(missing)
    for bad in ["../../etc/passwd", missing.upper(), missing[:-1], ""]:
        with pytest.raises(ValueError, match="sha256"):
            store.exists(bad)
    ref = store.put_bytes(b"to delete")
    assert store.delete(ref.sha256) is True
    assert store.delete(ref.sha256) is False
    assert not store.exists(ref.sha256)


def test_use_refreshes_last_use(store: MediaStore) -> None:
    ref = store.put_bytes(b"clip")
    os.utime(ref.path, (NOW - 1000, NOW - 1000))
    store.open(ref.sha256).close()
    assert ref.path.stat().st_mtime > NOW  # the real clock is later than NOW
    os.utime(ref.path, (NOW - 1000, NOW - 1000))
    store.path_for(ref.sha256)
    assert ref.path.stat().st_mtime > NOW
    os.utime(ref.path, (NOW - 1000, NOW - 1000))
    store.put_bytes(b"clip")  # uploading it again counts as a use too
    assert ref.path.stat().st_mtime > NOW


def put_used_at(store: MediaStore, data: bytes, last_use: float) -> str:
    ref = store.put_bytes(data)
    os.utime(ref.path, (last_use, last_use))
    return ref.sha256


def test_cleanup_removes_files_unused_for_too_long(tmp_path: Path) -> None:
    store = MediaStore(tmp_path, retention=RetentionPolicy(max_age_s=60.0, max_total_bytes=None))
    old = put_used_at(store, b"a" * 10, NOW - 100)
    mid = put_used_at(store, b"b" * 20, NOW - 50)
    new = put_used_at(store, b"c" * 30, NOW - 10)
    report = store.cleanup(now=NOW)
    assert report == CleanupReport(removed=(old,), freed_bytes=10, kept_files=2, kept_bytes=50, removed_tmp=0)
    assert not store.exists(old) and store.exists(mid) and store.exists(new)


def test_cleanup_trims_least_recently_used_to_the_size_cap(tmp_path: Path) -> None:
    store = MediaStore(tmp_path, retention=RetentionPolicy(max_age_s=None, max_total_bytes=35))
    first = put_used_at(store, b"a" * 10, NOW - 300)
    second = put_used_at(store, b"b" * 20, NOW - 200)
    third = put_used_at(store, b"c" * 30, NOW - 100)
    assert store.cleanup(now=NOW) == CleanupReport(
        removed=(first, second), freed_bytes=30, kept_files=1, kept_bytes=30, removed_tmp=0
    )
    assert store.exists(third)
    assert store.cleanup(now=NOW).removed == ()


def test_cleanup_keeps_what_was_used_recently(tmp_path: Path) -> None:
    store = MediaStore(tmp_path, retention=RetentionPolicy(max_age_s=None, max_total_bytes=35))
    first = put_used_at(store, b"a" * 10, NOW - 300)
    second = put_used_at(store, b"b" * 20, NOW - 200)
    third = put_used_at(store, b"c" * 30, NOW - 100)
    store.path_for(first)  # first is now the most recently used
    report = store.cleanup(now=NOW + 10_000)
    assert report.removed == (second, third)
    assert store.exists(first)


def test_cleanup_applies_both_limits(tmp_path: Path) -> None:
    store = MediaStore(tmp_path, retention=RetentionPolicy(max_age_s=150.0, max_total_bytes=45))
    stale = put_used_at(store, b"a" * 10, NOW - 200)
    lru = put_used_at(store, b"b" * 20, NOW - 100)
    recent = put_used_at(store, b"c" * 30, NOW - 10)
    report = store.cleanup(now=NOW)
    assert report.removed == (stale, lru)
    assert (report.kept_files, report.kept_bytes) == (1, 30)
    assert store.exists(recent)


def test_cleanup_removes_stale_temporary_files(store: MediaStore) -> None:
    crashed = store.tmp_dir / "put-crashed"
    crashed.write_bytes(b"half a video")
    os.utime(crashed, (NOW - STALE_TMP_AGE_S - 1, NOW - STALE_TMP_AGE_S - 1))
    in_progress = store.tmp_dir / "put-writing"
    in_progress.write_bytes(b"being written")
    os.utime(in_progress, (NOW - 5, NOW - 5))
    report = store.cleanup(now=NOW)
    assert report.removed_tmp == 1
    assert tmp_files(store) == [in_progress]

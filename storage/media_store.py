"""Content-addressed media store: uploaded videos and generated files (excerpts, previews).

DESIGN.md, "Storage": files are kept by their sha256 in a local folder with a retention limit,
so nothing depends on platform URLs after download (Discord's expire). Layout:

    <root>/objects/ab/abcdef...   the file whose sha256 is abcdef... (no extension: the chat
                                  adapter names the attachment when it sends it)
    <root>/tmp/                   writes in progress; renamed into objects/ with os.replace

Writes hash while streaming into a temporary file in the same filesystem and then rename it,
so a reader never sees a partial file and a crash leaves only a temporary file, which
`cleanup` deletes. The size cap is checked while streaming: an oversized upload fails with
MediaTooLargeError as soon as it passes the cap, without being written in full.

"Last used" is the file's mtime, set on write and on every `open` / `path_for`; the
retention policy removes files unused for longer than `max_age_s`, then the least recently
used ones until the store fits in `max_total_bytes`. (atime is not used: most filesystems are
mounted relatime or noatime.)
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

MB = 2**20  # bytes
CHUNK_BYTES = 1 * MB  # read/write block while hashing
DEFAULT_MAX_FILE_BYTES = 200 * MB  # largest stored file (the settings' max_upload_bytes)
DEFAULT_MAX_AGE_S = 30 * 24 * 3600.0  # files unused for 30 days are removed, seconds
DEFAULT_MAX_TOTAL_BYTES = 10 * 2**30  # the store is trimmed to 10 GiB, bytes
STALE_TMP_AGE_S = 24 * 3600.0  # a temporary file this old is a crashed write, seconds

OBJECTS_DIR = "objects"
TMP_DIR = "tmp"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class MediaTooLargeError(ValueError):
    """The media is larger than the store accepts; nothing was stored."""

    def __init__(self, limit_bytes: int, size_bytes: int, *, exact: bool) -> None:
        self.limit_bytes = limit_bytes
        self.size_bytes = size_bytes  # the full size if exact, else the bytes read before stopping
        amount = f"{size_bytes} bytes" if exact else f"more than {limit_bytes} bytes"
        super().__init__(f"media of {amount} exceeds the limit of {limit_bytes} bytes ({limit_bytes / MB:.1f} MiB)")


class MediaNotFoundError(FileNotFoundError):
    """No file with that hash is stored (it may have been removed by retention)."""


@dataclass(frozen=True)
class MediaRef:
    """A stored file: its sha256 (the key), its size and where it lies."""

    sha256: str
    size: int  # bytes
    path: Path


@dataclass(frozen=True)
class RetentionPolicy:
    """When `cleanup` removes files. None disables that limit."""

    max_age_s: float | None = DEFAULT_MAX_AGE_S  # since the file was last used, seconds
    max_total_bytes: int | None = DEFAULT_MAX_TOTAL_BYTES  # bytes


@dataclass(frozen=True)
class CleanupReport:
    """What one `cleanup` pass did."""

    removed: tuple[str, ...]  # sha256 of the removed files, oldest use first
    freed_bytes: int
    kept_files: int
    kept_bytes: int
    removed_tmp: int  # stale temporary files of crashed writes


def check_sha256(sha256: str) -> str:
    """Validate a hash given by a caller (it becomes a path: no traversal, one spelling)."""
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise ValueError(f"not a lower-case hex sha256: {sha256!r}")
    return sha256


class MediaStore:
    """Content-addressed files under `root` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        retention: RetentionPolicy | None = None,
    ) -> None:
        if max_file_bytes <= 0:
            raise ValueError(f"max_file_bytes must be positive, got {max_file_bytes}")
        self.root = Path(root)
        self.max_file_bytes = max_file_bytes
        self.retention = retention or RetentionPolicy()
        self._objects = self.root / OBJECTS_DIR
        self._tmp = self.root / TMP_DIR
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    @property
    def tmp_dir(self) -> Path:
        """A folder on the store's filesystem: write generated files here, then put_file(move=True)."""
        return self._tmp

    # --- writing ----------------------------------------------------------------------------

    def put_bytes(self, data: bytes, *, max_bytes: int | None = None) -> MediaRef:
        """Store `data`; returns its reference (the same one if it was already stored)."""
        limit = self._limit(max_bytes)
        if len(data) > limit:
            raise MediaTooLargeError(limit, len(data), exact=True)
        return self._put_chunks([data], limit)

    def put_file(self, source: Path | BinaryIO, *, max_bytes: int | None = None, move: bool = False) -> MediaRef:
        """Store a file (a path or a binary stream), hashing it while it is copied.

        With `move=True` and a path on the store's filesystem (e.g. under `tmp_dir`), the file
        is hashed in place and renamed into the store instead of being copied.
        Raises MediaTooLargeError before writing more than the limit.
        """
        limit = self._limit(max_bytes)
        if isinstance(source, (str, Path)):
            path = Path(source)
            size = path.stat().st_size
            if size > limit:
                raise MediaTooLargeError(limit, size, exact=True)
            if move:
                return self._adopt(path, limit)
            with open(path, "rb") as f:
                return self._put_chunks(_read_chunks(f), limit)
        if move:
            raise ValueError("move=True needs a path, not a stream")
        return self._put_chunks(_read_chunks(source), limit)

    def _limit(self, max_bytes: int | None) -> int:
        return self.max_file_bytes if max_bytes is None else min(max_bytes, self.max_file_bytes)

    def _put_chunks(self, chunks: Iterable[bytes], limit: int) -> MediaRef:
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise MediaTooLargeError(limit, size, exact=False)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            return self._install(tmp, digest.hexdigest(), size)
        finally:
            tmp.unlink(missing_ok=True)  # gone already if it was installed

    def _adopt(self, path: Path, limit: int) -> MediaRef:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            for chunk in _read_chunks(f):
                size += len(chunk)
                if size > limit:  # the file grew after stat()
                    raise MediaTooLargeError(limit, size, exact=False)
                digest.update(chunk)
        try:
            return self._install(path, digest.hexdigest(), size)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another filesystem: copy instead
                raise
            with open(path, "rb") as f:
                ref = self._put_chunks(_read_chunks(f), limit)
            path.unlink()
            return ref

    def _install(self, tmp: Path, sha256: str, size: int) -> MediaRef:
        """Rename a fully written file into place, or drop it if the content is already there."""
        final = self._object_path(sha256)
        if final.exists():
            tmp.unlink(missing_ok=True)
            self._touch(final)
            log.debug("media %s already stored (%d bytes)", sha256, size)
            return MediaRef(sha256, size, final)
        final.parent.mkdir(exist_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
        self._touch(final)
        log.info("stored media %s (%d bytes)", sha256, size)
        return MediaRef(sha256, size, final)

    # --- reading ----------------------------------------------------------------------------

    def _object_path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self._objects / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self._object_path(sha256).is_file()

    def path_for(self, sha256: str) -> Path:
        """Where the stored file lies (e.g. to give to ffmpeg); counts as a use for retention."""
        path = self._object_path(sha256)
        if not path.is_file():
            raise MediaNotFoundError(f"no stored media {sha256}")
        self._touch(path)
        return path

    def ref(self, sha256: str) -> MediaRef:
        path = self.path_for(sha256)
        return MediaRef(sha256, path.stat().st_size, path)

    def open(self, sha256: str) -> BinaryIO:
        """Open the stored file for reading; counts as a use for retention."""
        return open(self.path_for(sha256), "rb")

    def delete(self, sha256: str) -> bool:
        """Remove a stored file; False if it was not there."""
        path = self._object_path(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        log.info("deleted media %s", sha256)
        return True

    @staticmethod
    def _touch(path: Path) -> None:
        try:
            os.utime(path)
        except FileNotFoundError:  # removed by a concurrent cleanup: the caller will see that
            pass

    # --- retention --------------------------------------------------------------------------

    def usage(self) -> tuple[int, int]:
        """(number of files, total bytes) in the store."""
        entries = self._entries()
        return len(entries), sum(size for _, _, size, _ in entries)

    def _entries(self) -> list[tuple[float, str, int, Path]]:
        """(last use, sha256, size, path) of every stored file."""
        entries = []
        for shard in self._objects.iterdir():
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if _SHA256_RE.match(path.name):
                    entries.append((st.st_mtime, path.name, st.st_size, path))
        return entries

    def cleanup(self, now: float | None = None) -> CleanupReport:
        """Apply the retention policy: too old first, then least recently used over the size cap."""
        now = time.time() if now is None else now
        policy = self.retention
        entries = sorted(self._entries())  # least recently used first
        removed: list[str] = []
        freed = 0
        kept = []
        for last_use, sha256, size, path in entries:
            if policy.max_age_s is not None and now - last_use > policy.max_age_s:
                path.unlink(missing_ok=True)
                removed.append(sha256)
                freed += size
            else:
                kept.append((last_use, sha256, size, path))
        total = sum(size for _, _, size, _ in kept)
        if policy.max_total_bytes is not None:
            while kept and total > policy.max_total_bytes:
                _, sha256, size, path = kept.pop(0)
                path.unlink(missing_ok=True)
                removed.append(sha256)
                freed += size
                total -= size
        removed_tmp = 0
        for tmp in self._tmp.iterdir():
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_AGE_S:
                    if tmp.is_dir():
                        shutil.rmtree(tmp)
                    else:
                        tmp.unlink()
                    removed_tmp += 1
            except FileNotFoundError:
                continue
        report = CleanupReport(tuple(removed), freed, len(kept), total, removed_tmp)
        if removed or removed_tmp:
            log.info(
                "media cleanup removed %d files (%d bytes) and %d stale temporary files; %d files (%d bytes) kept",
                len(removed), freed, removed_tmp, report.kept_files, report.kept_bytes,
            )
        return report


def _read_chunks(stream: BinaryIO) -> Iterable[bytes]:
    while chunk := stream.read(CHUNK_BYTES):
        yield chunk

"""Files keyed by content hash: the catalog's per-track analyses and the hash index of music files.

A catalog refresh analyses only new or changed audio (bot/service/catalog_admin.py): what it
computed is kept here, one file per track, so an interrupted refresh resumes and unchanged files
are never decoded again; the hash index spares re-reading files whose size and mtime did not change.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from storage.files import write_atomic

log = logging.getLogger(__name__)

T = TypeVar("T")
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing
EXCERPT_SIDECAR = ".excerpt.json"


class AnalysisCodec(Protocol[T]):
    """How one kind of analysis is stored: its file suffix, its key, its bytes."""

    suffix: str  # e.g. ".npz"

    def key(self, analysis: T) -> str: ...  # the content hash it belongs to

    def dumps(self, analysis: T) -> bytes: ...

    def loads(self, data: bytes, sha: str) -> T | None: ...  # None: stale (another version, another hash)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FeatureCache(Generic[T]):
    """Per-track analyses by content hash (one file each, written atomically), plus a JSON sidecar
    per track (e.g. its excerpt reference). What an analysis is, and which stored ones are still
    valid, is the codec's business: storage knows files, not models."""

    def __init__(self, root: Path, codec: AnalysisCodec[T]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.codec = codec

    def _path(self, sha: str, suffix: str = ".npz") -> Path:
        return self.root / sha[:2] / f"{sha}{suffix}"

    def get(self, sha: str) -> T | None:
        path = self._path(sha, self.codec.suffix)
        try:
            analysis = self.codec.loads(path.read_bytes(), sha)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed, not fatal
            log.warning("feature cache %s is unreadable (%s): recomputing", path, exc)
            return None
        return analysis

    def put(self, analysis: T) -> None:
        write_atomic(self._path(self.codec.key(analysis), self.codec.suffix), self.codec.dumps(analysis))

    def get_excerpt(self, sha: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(sha, EXCERPT_SIDECAR).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put_excerpt(self, sha: str, ref: Mapping[str, Any]) -> None:
        write_atomic(self._path(sha, EXCERPT_SIDECAR), json.dumps(dict(ref)).encode())

    def __contains__(self, sha: str) -> bool:
        return self._path(sha, self.codec.suffix).is_file()


class HashIndex:
    """sha256 of files by (path, size, mtime_ns): a refresh re-reads only files that changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, list[Any]] = {}
        try:
            self._entries = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        self._seen: set[str] = set()

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = str(file)
        self._seen.add(key)
        entry = self._entries.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return str(entry[2])
        digest = sha256_file(file)
        self._entries[key] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def save(self) -> None:
        """Write the entries of files seen in this run (files no longer present are forgotten)."""
        kept = {k: v for k, v in self._entries.items() if k in self._seen}
        write_atomic(self.path, json.dumps(kept).encode())


__all__ = ["AnalysisCodec", "EXCERPT_SIDECAR", "FeatureCache", "HashIndex", "sha256_file"]

"""storage.files.write_atomic: the whole new file or the old one, never a part; no temp left."""

from pathlib import Path

from storage.files import write_atomic


def test_write_atomic_creates_parents_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]

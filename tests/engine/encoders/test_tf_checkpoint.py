"""TF bundle checkpoint reader: the musicnn checkpoints PyPI ships, and hand-built tables."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from engine.encoders.musicnn import musicnn_package_dir
from engine.encoders.tf_checkpoint import (
    TABLE_MAGIC,
    CheckpointFormatError,
    list_tf_checkpoint,
    read_tf_checkpoint,
)

MUSICNN_MODELS = ["MTT_musicnn", "MSD_musicnn"]

# (name, shape) of the model variables musicnn/models.py creates, in graph order
EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    "batch_normalization/gamma": (1,),
    "conv2d/kernel": (7, 38, 1, 204),  # timbral 7 x int(0.4 * 96)
    "conv2d_1/kernel": (7, 67, 1, 204),  # timbral 7 x int(0.7 * 96)
    "conv2d_2/kernel": (128, 1, 1, 51),  # temporal
    "conv2d_3/kernel": (64, 1, 1, 51),
    "conv2d_4/kernel": (32, 1, 1, 51),
    "conv2d_5/kernel": (7, 561, 1, 64),  # mid-end over the 561 front-end channels
    "conv2d_6/kernel": (7, 64, 1, 64),
    "conv2d_7/kernel": (7, 64, 1, 64),
    "batch_normalization_9/moving_mean": (1506,),  # 2 x 753 pooled features
    "dense/kernel": (1506, 200),
    "batch_normalization_10/moving_variance": (200,),
    "dense_1/kernel": (200, 50),
    "dense_1/bias": (50,),
}


def _crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli), as LevelDB/TensorFlow use; fine for a few KB."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


@pytest.mark.parametrize("model", MUSICNN_MODELS)
def test_musicnn_checkpoint_names_and_shapes(model: str) -> None:
    tensors = read_tf_checkpoint(f"{musicnn_package_dir() / model}/")
    # 11 batch norms x 4 + 8 convs x 2 + 2 dense x 2 = 64 model variables; the 42 trainable ones
    # (all but the moving statistics) carry two Adam slots each; plus beta1_power, beta2_power
    model_vars = {n for n in tensors if "/Adam" not in n and not n.startswith("beta")}
    assert len(model_vars) == 64
    assert len(tensors) == 64 + 2 * 42 + 2
    assert "conv2d/kernel/Adam_1" in tensors and "batch_normalization/moving_mean/Adam" not in tensors
    for name, shape in EXPECTED_SHAPES.items():
        assert tensors[name].shape == shape, name
        assert tensors[name].dtype == np.float32
    assert np.all(tensors["batch_normalization_9/moving_variance"] > 0)
    assert all(np.isfinite(t).all() for t in tensors.values())


def test_musicnn_checkpoints_differ() -> None:
    mtt = read_tf_checkpoint(f"{musicnn_package_dir() / 'MTT_musicnn'}/")
    msd = read_tf_checkpoint(f"{musicnn_package_dir() / 'MSD_musicnn'}/")
    assert not np.array_equal(mtt["dense_1/kernel"], msd["dense_1/kernel"])


@pytest.mark.parametrize("model", MUSICNN_MODELS)
def test_entries_match_their_stored_crc32c(model: str) -> None:
    """Offsets and sizes are right: each small tensor's bytes hash to the CRC the index stores."""
    prefix = f"{musicnn_package_dir() / model}/"
    entries = list_tf_checkpoint(prefix)
    data = Path(f"{prefix}.data-00000-of-00001").read_bytes()
    small = [e for e in entries.values() if e.size <= 4096]
    assert len(small) > 100
    for entry in small:
        assert _masked(_crc32c(data[entry.offset : entry.offset + entry.size])) == entry.crc32c, entry.name
    ends = sorted((e.offset, e.offset + e.size) for e in entries.values())
    assert ends[-1][1] == len(data)  # the entries tile the data file
    assert all(a_end == b_start for (_, a_end), (b_start, _) in zip(ends, ends[1:], strict=False))


# -- a hand-built bundle: other dtypes, several data blocks, prefix compression ----------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: int | bytes) -> bytes:
    if isinstance(payload, bytes):
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload
    return _varint(number << 3) + _varint(payload)


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    out, previous = bytearray(), b""
    for key, value in entries:
        shared = 0
        while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
            shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    out += struct.pack("<I", 0) + struct.pack("<I", 1)  # one restart point at offset 0
    return bytes(out)


def _write_bundle(prefix: str, tensors: dict[str, tuple[int, np.ndarray]]) -> None:
    """Write tensors {name: (TF dtype enum, array)} as a TF bundle, one data block per entry."""
    data, entries = bytearray(), [(b"", _field(1, 1))]  # header: num_shards = 1
    for name, (dtype, array) in sorted(tensors.items()):
        raw = array.tobytes()
        shape = b"".join(_field(2, _field(1, d)) for d in array.shape)
        proto = _field(1, dtype) + _field(2, shape) + _field(4, len(data)) + _field(5, len(raw))
        entries.append((name.encode(), proto))
        data += raw
    table, index = bytearray(), []
    for key, value in entries:
        block = _block([(key, value)])
        index.append((key, _varint(len(table)) + _varint(len(block))))
        table += block + b"\0\0\0\0\0"  # no compression, CRC not checked by the reader
    index_block = _block(index)
    index_handle = _varint(len(table)) + _varint(len(index_block))
    table += index_block + b"\0\0\0\0\0"
    footer = (_varint(0) + _varint(0) + index_handle).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    Path(f"{prefix}.index").write_bytes(bytes(table) + footer)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))


def test_hand_built_bundle_with_several_dtypes(tmp_path: Path) -> None:
    arrays = {
        "layer/kernel": (1, np.arange(6, dtype="<f4").reshape(2, 3)),
        "layer/kernel/step": (9, np.array([-3, 2**40], dtype="<i8")),
        "layer/half": (19, np.array([[0.5], [-2.0]], dtype="<f2")),
        "layer/flags": (10, np.array([True, False, True])),
        "global_step": (3, np.array(7, dtype="<i4")),  # a scalar: shape ()
    }
    prefix = str(tmp_path / "model.ckpt")
    _write_bundle(prefix, arrays)
    tensors = read_tf_checkpoint(prefix)
    assert sorted(tensors) == sorted(arrays)
    for name, (_, array) in arrays.items():
        assert tensors[name].shape == array.shape, name
        assert tensors[name].dtype == array.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(tensors[name], array)


def test_unsupported_dtype_is_refused(tmp_path: Path) -> None:
    prefix = str(tmp_path / "s")
    _write_bundle(prefix, {"names": (7, np.zeros(2, dtype="u1"))})  # DT_STRING
    with pytest.raises(CheckpointFormatError, match="unsupported TF dtype"):
        read_tf_checkpoint(prefix)


def test_truncated_index_is_refused(tmp_path: Path) -> None:
    src = musicnn_package_dir() / "MTT_musicnn"
    prefix = tmp_path / "ckpt"
    index = (src / ".index").read_bytes()
    Path(f"{prefix}.index").write_bytes(index[:-1])
    shutil.copy(src / ".data-00000-of-00001", f"{prefix}.data-00000-of-00001")
    with pytest.raises(CheckpointFormatError, match="magic"):
        read_tf_checkpoint(prefix)

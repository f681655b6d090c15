"""Read TensorFlow (v1/v2 "bundle") checkpoints without TensorFlow.

The lite profile's music encoder is musicnn (DESIGN.md, "Model profiles"), whose weights ship on
PyPI as TensorFlow 1 checkpoints: `<prefix>.index` + `<prefix>.data-00000-of-00001`. Installing
TensorFlow for ~10 MB of weights is not worth it, and the format is small:

- `<prefix>.index` is a LevelDB-style SSTable: a 48-byte footer (meta-index and index block
  handles, padding, magic), an index block mapping the last key of each data block to that
  block's handle, and data blocks of prefix-compressed `(key, value)` entries followed by a
  restart-point array. Every block is followed by a 5-byte trailer (compression type + CRC).
  TensorFlow writes these tables uncompressed.
- The entry under the empty key is a `BundleHeaderProto`; every other key is a variable name
  whose value is a `BundleEntryProto` (dtype, shape, shard id, byte offset and size in the
  data shard, crc32c). Protobuf is decoded here by hand (varints and length-delimited fields).
- `<prefix>.data-0000k-of-0000n` holds the raw little-endian tensor bytes.

Only what such checkpoints contain is supported: dense numeric/bool tensors (no partitioned
slices, no strings). Optimizer slots (e.g. `.../Adam`) are returned like any other variable;
callers pick the names they need.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FOOTER_BYTES = 48  # LevelDB table footer: 2 block handles padded to 40 bytes + 8-byte magic
TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's kTableMagicNumber (little-endian uint64)
BLOCK_TRAILER_BYTES = 5  # 1 byte compression type + 4 bytes masked CRC32C after every block
NO_COMPRESSION = 0

# tensorflow/core/framework/types.proto DataType -> numpy dtype (little-endian as written)
TF_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}


class CheckpointFormatError(ValueError):
    """The files are not a TensorFlow bundle checkpoint this reader understands."""


@dataclass(frozen=True)
class TensorEntry:
    """One variable's `BundleEntryProto`: where its bytes lie in which data shard."""

    name: str
    dtype: int  # TF DataType enum value
    shape: tuple[int, ...]
    shard_id: int
    offset: int  # bytes into the data shard
    size: int  # bytes
    crc32c: int  # masked CRC32C of the bytes, as TensorFlow stores it (LevelDB's crc32c::Mask)


# ---------------------------------------------------------------------------------------------
# protobuf wire format (only varint, 64-bit, length-delimited and 32-bit fields are needed)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; return (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointFormatError("varint longer than 10 bytes")


def _proto_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Split a serialized protobuf message into (field number, wire type, value) triples."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:  # varint
            value, pos = _varint(buf, pos)
        elif wire == 1:  # fixed64
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:  # length-delimited
            length, pos = _varint(buf, pos)
            value = buf[pos : pos + length]
            pos += length
        elif wire == 5:  # fixed32
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise CheckpointFormatError(f"unsupported protobuf wire type {wire}")
        fields.append((field, wire, value))
    if pos != len(buf):
        raise CheckpointFormatError("protobuf message overruns its buffer")
    return fields


def _as_int64(value: int) -> int:
    """Reinterpret an unsigned varint as the signed int64 protobuf encodes (e.g. dim size -1)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated Dim dim = 2 (Dim: int64 size = 1); bool unknown_rank = 3."""
    dims: list[int] = []
    for field, _, value in _proto_fields(buf):
        if field == 2:
            assert isinstance(value, bytes)
            size = 0
            for dim_field, _, dim_value in _proto_fields(value):
                if dim_field == 1:
                    assert isinstance(dim_value, int)
                    size = _as_int64(dim_value)
            dims.append(size)
        elif field == 3 and value:
            raise CheckpointFormatError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    """BundleEntryProto: dtype=1, shape=2, shard_id=3, offset=4, size=5, crc32c=6, slices=7."""
    dtype = shard_id = offset = size = crc = 0
    shape: tuple[int, ...] = ()
    for field, _, value in _proto_fields(buf):
        if field == 1:
            dtype = int(value)  # type: ignore[arg-type]
        elif field == 2:
            assert isinstance(value, bytes)
            shape = _parse_shape(value)
        elif field == 3:
            shard_id = int(value)  # type: ignore[arg-type]
        elif field == 4:
            offset = _as_int64(int(value))  # type: ignore[arg-type]
        elif field == 5:
            size = _as_int64(int(value))  # type: ignore[arg-type]
        elif field == 6:
            crc = int(value)  # type: ignore[arg-type]
        elif field == 7:
            raise CheckpointFormatError(f"{name}: partitioned (sliced) variables are not supported")
    return TensorEntry(
        name=name, dtype=dtype, shape=shape, shard_id=shard_id, offset=offset, size=size, crc32c=crc
    )


def _parse_header(buf: bytes) -> tuple[int, int]:
    """BundleHeaderProto: num_shards=1, endianness=2 (0 little, 1 big); return both."""
    num_shards, endianness = 1, 0
    for field, _, value in _proto_fields(buf):
        if field == 1:
            num_shards = int(value)  # type: ignore[arg-type]
        elif field == 2:
            endianness = int(value)  # type: ignore[arg-type]
    return num_shards, endianness


# ---------------------------------------------------------------------------------------------
# LevelDB table


def _block(table: bytes, offset: int, size: int) -> bytes:
    """Return the contents of the block at handle (offset, size), checking its trailer."""
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > len(table):
        raise CheckpointFormatError("block handle points past the end of the index file")
    compression = table[end]
    if compression != NO_COMPRESSION:
        raise CheckpointFormatError(f"compressed table blocks (type {compression}) are not supported")
    return table[offset:end]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode one table block's prefix-compressed entries into (key, value) pairs."""
    if len(block) < 4:
        raise CheckpointFormatError("block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts  # entries end where the restart array starts
    if limit < 0:
        raise CheckpointFormatError("restart array larger than its block")
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key):
            raise CheckpointFormatError("entry shares more bytes than the previous key has")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def _table_entries(table: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of an SSTable, in key order."""
    if len(table) < FOOTER_BYTES:
        raise CheckpointFormatError("index file shorter than a table footer")
    footer = table[-FOOTER_BYTES:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_BYTES - 8)
    if magic != TABLE_MAGIC:
        raise CheckpointFormatError(f"bad table magic {magic:#x}")
    _meta_offset, pos = _varint(footer, 0)
    _meta_size, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    entries: list[tuple[bytes, bytes]] = []
    for _last_key, handle in _block_entries(_block(table, index_offset, index_size)):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        entries.extend(_block_entries(_block(table, offset, size)))
    return entries


# ---------------------------------------------------------------------------------------------
# public API


def _index_path(prefix: str | Path) -> Path:
    # musicnn's prefix is a directory with a trailing slash ("MTT_musicnn/"), so the files are
    # literally named ".index" and ".data-00000-of-00001": plain string concatenation, as TF does.
    return Path(f"{prefix}.index")


def _read_index(prefix: str | Path) -> tuple[int, dict[str, TensorEntry]]:
    """Parse `<prefix>.index` -> (number of data shards, {variable name: entry})."""
    num_shards: int | None = None
    entries: dict[str, TensorEntry] = {}
    for key, value in _table_entries(_index_path(prefix).read_bytes()):
        if key == b"":
            num_shards, endianness = _parse_header(value)
            if endianness != 0:
                raise CheckpointFormatError("big-endian checkpoints are not supported")
            continue
        name = key.decode("utf-8")
        entries[name] = _parse_entry(name, value)
    if num_shards is None:
        raise CheckpointFormatError("index has no bundle header")
    return num_shards, entries


def list_tf_checkpoint(prefix: str | Path) -> dict[str, TensorEntry]:
    """Read the index of checkpoint `prefix` -> {variable name: entry}, without loading data."""
    return _read_index(prefix)[1]


def read_tf_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Load every variable of the TF bundle checkpoint at `prefix` -> {name: array}.

    `prefix` is what TensorFlow's `Saver.restore` takes: the files are `f"{prefix}.index"` and
    `f"{prefix}.data-XXXXX-of-YYYYY"`. Arrays are native-endian, writable copies.
    """
    num_shards, entries = _read_index(prefix)
    shards: dict[int, bytes] = {}
    tensors: dict[str, np.ndarray] = {}
    for name, entry in entries.items():
        dtype = TF_DTYPES.get(entry.dtype)
        if dtype is None:
            raise CheckpointFormatError(f"{name}: unsupported TF dtype enum {entry.dtype}")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * dtype.itemsize != entry.size:
            raise CheckpointFormatError(
                f"{name}: {entry.size} bytes stored for shape {entry.shape} of {dtype}"
            )
        if entry.shard_id not in shards:
            path = Path(f"{prefix}.data-{entry.shard_id:05d}-of-{num_shards:05d}")
            shards[entry.shard_id] = path.read_bytes()
        data = shards[entry.shard_id]
        if entry.offset + entry.size > len(data):
            raise CheckpointFormatError(f"{name}: bytes lie past the end of shard {entry.shard_id}")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=entry.offset)
        tensors[name] = array.astype(dtype.newbyteorder("="), copy=True).reshape(entry.shape)
    log.info("read %d tensors from TF checkpoint %s (%d shard(s))", len(tensors), prefix, num_shards)
    return tensors

"""TFRecord shards of ``tf.train.Example``: the write side (vectorized encoding) and the read side.

Encoding a record batch does not build one protobuf object per row: each column's map
entries are assembled as Arrow binary arrays with NumPy (varints included) and joined row
by row, so writing runs at Arrow speed. The output is byte-for-byte what protobuf would
produce for the same features (map order aside), read by plain ``tf.data.TFRecordDataset``
and ``tf.io.parse_example`` with the manifest's feature spec. Nulls are left out of the
example (the reader's default applies). Framing (length, masked CRC32C) and optional GZIP
are written here too, so workers need no TensorFlow import to write.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from typing import IO, Any

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CorruptRecordError", "encode_examples", "first_corrupt_record", "write_tfrecords", "read_tfrecords",
           "TFRecordFile"]

_LEN = 2  # protobuf wire type: length-delimited


def _varint_array(values: np.ndarray) -> pa.BinaryArray:
    """Protobuf varints of non-negative (or two's-complement int64) values, one binary value each."""
    v = values.astype(np.uint64, copy=False)
    n = len(v)
    top = int(v.max()) if n else 0
    width = max(1, (top.bit_length() + 6) // 7)  # bytes of the largest value; most values are small
    if width == 1:
        data = v.astype(np.uint8)
        offsets = np.arange(n + 1, dtype=np.int32)
    else:
        sizes = np.ones(n, np.int32)
        for i in range(1, width):
            sizes += v >= (np.uint64(1) << np.uint64(7 * i))
        column = np.arange(width)[None, :]
        groups = np.empty((n, width), np.uint8)
        for i in range(width):
            groups[:, i] = ((v >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8)
        groups |= (column < (sizes - 1)[:, None]).astype(np.uint8) << 7
        data = groups[column < sizes[:, None]]
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(sizes, out=offsets[1:])
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _scalar_field(number: int, payload: bytes) -> bytes:
    """One length-delimited field, encoded in Python (for constants such as feature names)."""
    length, size = len(payload), bytearray()
    while True:
        size.append((length & 0x7F) | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            return bytes([(number << 3) | _LEN]) + bytes(size) + payload


def _lengths(array: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.binary_length(array), 0).to_numpy().astype(np.int64)


def _field(number: int, payload: pa.Array) -> pa.Array:
    """``tag(number, LEN) + varint(len(payload)) + payload`` for each row."""
    tag = pa.scalar(bytes([(number << 3) | _LEN]), pa.binary())
    return pc.binary_join_element_wise(tag, _varint_array(_lengths(payload)), payload, pa.scalar(b"", pa.binary()))


def _feature_payload(column: pa.Array) -> pa.Array:
    """Serialized ``tf.train.Feature`` of each row of a scalar column (null where the value is null)."""
    arrow_type = column.type
    valid = pc.is_valid(column)
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        values = pc.fill_null(column.cast(pa.float32()), 0.0).to_numpy(zero_copy_only=False).astype("<f4")
        packed = pa.BinaryArray.from_buffers(pa.binary(), len(values), [
            None, pa.py_buffer(np.arange(0, 4 * len(values) + 1, 4, dtype=np.int32)), pa.py_buffer(values.view(np.uint8))])
        number = 2  # float_list
    elif pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        packed = _varint_array(pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False))
        number = 3  # int64_list
    elif pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_binary(arrow_type) \
            or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(arrow_type):
        packed = _field(1, pc.fill_null(column.cast(pa.binary()), b""))  # one repeated bytes value
        number = 1  # bytes_list
    else:
        raise ValueError(f"Column of type {arrow_type} cannot be written to a tf.train.Example as a scalar.")
    if number != 1:
        packed = _field(1, packed)  # packed repeated value
    feature = _field(number, packed)
    return pc.if_else(valid, feature, pa.scalar(None, pa.binary()))


def _list_feature_payload(column: pa.Array) -> pa.Array:
    """Lists go through protobuf row by row: rarer, and variable in shape."""
    from tensorflow.core.example import feature_pb2

    value_type = column.type.value_type
    out = []
    for row in column.to_pylist():
        if row is None:
            out.append(None)
            continue
        if pa.types.is_floating(value_type):
            feature = feature_pb2.Feature(float_list=feature_pb2.FloatList(value=row))
        elif pa.types.is_integer(value_type) or pa.types.is_boolean(value_type):
            feature = feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=row))
        else:
            feature = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(
                value=[v.encode() if isinstance(v, str) else v for v in row]))
        out.append(feature.SerializeToString())
    return pa.array(out, pa.binary())


def encode_examples(batch: pa.RecordBatch | pa.Table) -> pa.BinaryArray:
    """Serialize every row of ``batch`` as a ``tf.train.Example``.

    Raises:
        ValueError: a column type examples cannot hold, naming the column.
    """
    entries = []
    for name, column in zip(batch.schema.names, batch.columns):
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        try:
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) \
                    or pa.types.is_fixed_size_list(column.type):
                feature = _list_feature_payload(column)
            else:
                feature = _feature_payload(column)
        except ValueError as e:
            raise ValueError(f"Column {name!r}: {e}") from None
        key = pa.scalar(_scalar_field(1, name.encode()), pa.binary())
        entry_body = pc.binary_join_element_wise(key, _field(2, pc.fill_null(feature, b"")), pa.scalar(b"", pa.binary()))
        entry = _field(1, entry_body)  # Features.feature map entry
        entries.append(pc.if_else(pc.is_valid(feature), entry, pa.scalar(b"", pa.binary())))
    features = pc.binary_join_element_wise(*entries, pa.scalar(b"", pa.binary())) if entries \
        else pa.array([b""] * batch.num_rows, pa.binary())
    return _field(1, features)  # Example.features


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordFile:
    """Append serialized records to a local file in TFRecord framing, optionally GZIP-compressed."""

    def __init__(self, path: str, *, gzip_compressed: bool = False) -> None:
        self._raw = open(path, "wb")
        self._out: IO[bytes] = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0) if gzip_compressed else self._raw

    def write_many(self, records: pa.BinaryArray) -> None:
        chunks = []
        for record in records.to_pylist():
            header = struct.pack("<Q", len(record))
            chunks += (header, struct.pack("<I", _masked_crc(header)), record, struct.pack("<I", _masked_crc(record)))
        self._out.write(b"".join(chunks))

    def close(self) -> None:
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()

    def __enter__(self) -> TFRecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_tfrecords(path: str, batches: Any, *, gzip_compressed: bool = False) -> int:
    """Write record batches to a local TFRecord file; returns the number of examples."""
    rows = 0
    with TFRecordFile(path, gzip_compressed=gzip_compressed) as out:
        for batch in batches:
            out.write_many(encode_examples(batch))
            rows += batch.num_rows
    return rows


class CorruptRecordError(ValueError):
    """A TFRecord stream holds a record that fails its CRC or is cut short; ``offset`` is where it begins."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def read_tfrecords(stream: IO[bytes], *, gzip_compressed: bool = False, where: str = "") -> Iterator[bytes]:
    """Records of a TFRecord stream, checking both CRCs.

    Raises:
        CorruptRecordError: naming ``where`` and the offset of the bad record (in the
            uncompressed stream when ``gzip_compressed``).
    """
    source: IO[bytes] = gzip.GzipFile(fileobj=stream, mode="rb") if gzip_compressed else stream
    offset = 0
    while header := source.read(12):
        if len(header) < 12:
            raise CorruptRecordError(f"{where}: truncated record header at offset {offset}", offset)
        length, crc = struct.unpack("<QI", header)
        if _masked_crc(header[:8]) != crc:
            raise CorruptRecordError(f"{where}: corrupt record length at offset {offset}", offset)
        record = source.read(min(length, 1 << 31))  # a corrupt length that passed its CRC cannot ask for more
        footer = source.read(4)
        if len(record) < length or len(footer) < 4 or _masked_crc(record) != struct.unpack("<I", footer)[0]:
            raise CorruptRecordError(f"{where}: corrupt or truncated record at offset {offset}", offset)
        offset += 16 + length
        yield record


def first_corrupt_record(path: str) -> int | None:
    """Where the first bad record of the (uncompressed) TFRecord file ``path`` begins, or None."""
    try:
        with open(path, "rb") as f:
            for _ in read_tfrecords(f, where=path):
                pass
    except CorruptRecordError as e:
        return e.offset
    return None

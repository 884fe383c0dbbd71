"""The record logic, written once over Arrow batches and run by every engine.

Randomness here is counter-based: every random number is a hash of the seed, the row's
identity (input file and row number), the augmented copy and a purpose tag, so results do
not depend on how an engine batches, orders or parallelises the work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardflow.configs import load_function

from .config import AugmentConfig

__all__ = ["mix", "uniform", "row_identity", "content_hash", "assign_split", "augment", "COPY_COLUMN"]

COPY_COLUMN = "augment_copy"  # provenance: 0 for an original row, k for its k-th augmented copy
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix(*parts: np.ndarray | int) -> np.ndarray:
    """splitmix64-style mixing of uint64 arrays/ints into one well-spread uint64 hash per row."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x9E3779B97F4A7C15)
        for part in parts:
            x = (np.asarray(part, dtype=np.uint64) ^ h) + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * _M1
            x = (x ^ (x >> np.uint64(27))) * _M2
            h = x ^ (x >> np.uint64(31))
    return h


def uniform(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from hashes (53 bits)."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def row_identity(relative_path: str, first_row: int, n: int) -> np.ndarray:
    """Stable ids of ``n`` rows numbered from ``first_row`` in one input file."""
    return mix(_text_hash(relative_path), np.arange(first_row, first_row + n, dtype=np.uint64))


_WORD = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_PRIME = np.uint64(0x100000001B3)


def _fold(h: np.ndarray, word: np.ndarray, rows: np.ndarray | slice = slice(None)) -> None:
    """Fold one uint64 word per row into ``h[rows]`` (FNV-style; ``mix`` spreads the result)."""
    with np.errstate(over="ignore"):
        if isinstance(rows, slice):  # in place: this runs a few times per column per batch
            h ^= word
            h *= _PRIME
            h ^= h >> np.uint64(29)
        else:
            x = (h[rows] ^ word) * _PRIME
            h[rows] = x ^ (x >> np.uint64(29))


def _validity(column: pa.Array) -> np.ndarray | None:
    """Which rows hold a value (None when all do), read from the validity bitmap."""
    if not column.null_count:
        return None
    bits = np.unpackbits(np.frombuffer(column.buffers()[0], np.uint8), bitorder="little")
    return bits[column.offset:column.offset + len(column)].astype(bool)


_FEW_ROWS, _LONG_TAIL = 4, 4096
_MASK = (1 << 64) - 1


def _fold_tail(h: int, tail: np.ndarray) -> int:
    """:func:`_fold` over one row's remaining bytes, 8 at a time (the last word zero-padded), in
    plain integers: the same hash as the vectorised rounds, at a fraction of their per-round cost."""
    padded = np.zeros(-(-tail.size // 8) * 8, np.uint8)
    padded[:tail.size] = tail
    prime = int(_PRIME)
    for word in padded.view(np.uint64).tolist():
        h = ((h ^ word) * prime) & _MASK
        h ^= h >> 29
    return h


def _fold_bytes(h: np.ndarray, column: pa.Array) -> None:
    """Fold each row's bytes into ``h``, 8 at a time, read straight from the Arrow buffers.

    A row's result depends only on its own bytes: rows take part in a round only while they
    have bytes left, so batches with longer or shorter neighbours hash a value the same.
    """
    valid = _validity(column)
    _, offsets, data = column.buffers()
    offset_type = np.int64 if pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type) else np.int32
    bounds = np.frombuffer(offsets, offset_type)[column.offset:column.offset + len(column) + 1].astype(np.int64)
    stored = np.diff(bounds)  # a null's slot is usually empty, but Arrow allows otherwise
    lengths = stored if valid is None else np.where(valid, stored, 0)
    word = lengths.astype(np.uint64)
    if valid is not None:
        word |= (~valid).astype(np.uint64) << np.uint64(63)
    _fold(h, word)
    longest = int(lengths.max(initial=0))
    if not longest:
        return
    data = np.frombuffer(data, np.uint8)
    rows = np.flatnonzero(lengths) if valid is not None or not lengths.all() else slice(None)
    if np.array_equal(stored[rows], np.broadcast_to(longest, stored[rows].shape)) and stored.sum() == longest * (
            len(column) if isinstance(rows, slice) else rows.size):
        # ids and codes: the values are one width and back to back, so one reshape reads them all
        width = -(-longest // 8) * 8
        count = len(column) if isinstance(rows, slice) else rows.size
        table = data[bounds[0]:bounds[0] + longest * count].reshape(count, longest)
        table = np.ascontiguousarray(np.pad(table, ((0, 0), (0, width - longest))) if width > longest else table)
        words = table.view(np.uint64)
        for k in range(width // 8):
            _fold(h, words[:, k], rows)
        return
    starts = bounds[:-1]
    step = np.arange(8, dtype=np.int64)
    for k in range(0, longest, 8):
        rows = np.flatnonzero(lengths > k)
        if rows.size <= _FEW_ROWS and longest - k > _LONG_TAIL:  # one huge value: a round per 8 bytes costs too much
            for row in rows:
                h[row] = _fold_tail(int(h[row]), data[starts[row] + k:starts[row] + lengths[row]])
            return
        index = starts[rows, None] + k + step
        inside = index < (starts[rows] + lengths[rows])[:, None]
        chunk = np.where(inside, data[np.minimum(index, data.size - 1)], 0).astype(np.uint8)
        _fold(h, np.ascontiguousarray(chunk).view(np.uint64)[:, 0], rows)


def content_hash(batch: pa.RecordBatch | pa.Table, columns: Sequence[str], seed: int) -> np.ndarray:
    """Hash of the values in ``columns`` of each row (equal rows, equal hashes), keyed by the seed.

    Vectorised over Arrow buffers: fixed-width values hash by their bits, strings and bytes by
    their bytes; other types (lists, structs ...) by the text of each value.
    """
    h = np.full(batch.num_rows, seed & 0xFFFFFFFFFFFFFFFF, np.uint64)
    for name in columns:
        column = batch.column(name)
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        kind = column.type
        if pa.types.is_boolean(kind):
            kind, column = pa.uint8(), column.cast(pa.uint8())
        if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_temporal(kind):
            width = kind.bit_width // 8
            values = np.frombuffer(column.buffers()[1], _WORD[width])[column.offset:column.offset + len(column)]
            if pa.types.is_temporal(kind) and width < 8:  # dates and times hash as 64-bit counts
                width, values = 8, values.view(np.int32).astype(np.int64).view(np.uint64)
            valid = _validity(column)
            word = (values if valid is None else np.where(valid, values, 0)).astype(np.uint64)
            null = np.uint64(0) if valid is None else (~valid).astype(np.uint64)  # no nulls: no array of zeros
            if width < 8:  # room for the null flag in the value's word
                word |= null << np.uint64(63)
            else:
                _fold(h, null)
            _fold(h, word)
        else:
            if not (pa.types.is_string(kind) or pa.types.is_binary(kind)
                    or pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)):
                column = pa.array([None if v is None else repr(v) for v in column.to_pylist()], pa.string())
            _fold_bytes(h, column)
    return mix(h)


def assign_split(hashes: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Split name index per row, from its hash: deterministic, and stable when rows are added."""
    u = uniform(mix(hashes, seed, 0x5B11))
    edges = np.cumsum(list(fractions.values()))
    edges[-1] = 1.0 + 1e-12
    return np.searchsorted(edges, u, side="right")


def _normal(h: np.ndarray) -> np.ndarray:
    u1 = np.maximum(uniform(h), 1e-300)
    u2 = uniform(mix(h, 0xB0C5))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)


def _augment_tabular(table: pa.Table, ids: np.ndarray, copy: int, config: AugmentConfig, label: str | None,
                     seed: int) -> pa.Table:
    features = [f for f in table.schema if f.name not in (label, COPY_COLUMN)]
    noisy = set(config.noise_columns) if config.noise_columns is not None else \
        {f.name for f in features if pa.types.is_floating(f.type)}
    maskable = set(config.mask_columns) if config.mask_columns is not None else {f.name for f in features}
    image_columns = set(config.image_columns)
    columns = []
    for field in table.schema:
        column = table.column(field.name).combine_chunks()
        tag = _text_hash(field.name)
        if field.name in noisy and config.noise_std > 0 and field.name not in image_columns:
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
            noise = config.noise_std * _normal(mix(ids, seed, copy, tag, 0x401))
            column = pa.array(values + noise, mask=pc.is_null(column).to_numpy(zero_copy_only=False)).cast(field.type)
        if field.name in image_columns:
            from .images import augment_images

            column = augment_images(column, mix(ids, seed, copy, tag), config)
        if field.name in maskable and config.mask_prob > 0:
            masked = uniform(mix(ids, seed, copy, tag, 0x3A5C)) < config.mask_prob
            column = pc.if_else(pa.array(masked), pa.scalar(None, field.type), column)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)


def augment(table: pa.Table, ids: np.ndarray, config: AugmentConfig, *, label: str | None,
            seed: int) -> tuple[pa.Table, np.ndarray]:
    """The original training rows plus ``config.copies`` augmented copies each, tagged in ``augment_copy``.

    Returns:
        The rows and their identities (copies get distinct ids, so they land in different shards).
    """
    originals = table.append_column(COPY_COLUMN, pa.array(np.zeros(table.num_rows, np.int32)))
    parts, part_ids = [originals], [ids]
    functions = [load_function(spec, setting="augment.functions") for spec in config.functions]
    for copy in range(1, config.copies + 1):
        copied = _augment_tabular(originals, ids, copy, config, label, seed)
        for function in functions:
            copied = function(copied, seed=int(mix(seed, copy)))
            if not isinstance(copied, pa.Table) or copied.schema != originals.schema:
                got = copied.schema if isinstance(copied, pa.Table) else type(copied).__name__
                raise ValueError(f"Augmentation function {function.__module__}:{function.__name__} must return a "
                                 f"pyarrow.Table with the schema it was given.\nexpected: {originals.schema}\ngot: {got}")
        parts.append(copied.set_column(copied.schema.get_field_index(COPY_COLUMN), COPY_COLUMN,
                                       pa.array(np.full(table.num_rows, copy, np.int32))))
        part_ids.append(mix(ids, copy, 0xC0B1))
    return pa.concat_tables(parts), np.concatenate(part_ids)

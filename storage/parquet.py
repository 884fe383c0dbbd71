"""Parquet shards: the write side (rolling shards into a dataset) and the read side."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .dataset import Dataset, DatasetWriter
from .manifest import Shard
from .urls import translate_errors

__all__ = ["write_parquet_shards", "read_parquet", "iter_parquet_batches", "statistics_columns"]


def statistics_columns(schema: pa.Schema) -> list[str]:
    """The Parquet columns (leaf paths) worth min/max statistics: all but strings and bytes. Hex
    ids and free text make ranges that prune nothing, and computing them costs a quarter of a
    Parquet write."""
    return [path for field in schema for path in _leaves(field.name, field.type)]


def _leaves(path: str, kind: pa.DataType) -> list[str]:
    if pa.types.is_struct(kind):
        return [leaf for child in kind for leaf in _leaves(f"{path}.{child.name}", child.type)]
    if pa.types.is_map(kind):
        return _leaves(f"{path}.key_value.key", kind.key_type) + _leaves(f"{path}.key_value.value", kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaves(f"{path}.list.element", kind.value_type)
    text = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    return [] if any(is_text(kind) for is_text in text) else [path]


def write_parquet_shards(
    writer: DatasetWriter,
    batches: Iterable[pa.RecordBatch],
    *,
    split: str,
    partition: Mapping[str, str] | None = None,
    rows_per_shard: int = 1_000_000,
    compression: str = "snappy",
    row_group_size: int = 128 * 1024,
    use_dictionary: bool | list[str] = True,
    write_statistics: bool | list[str] | None = None,
    schema: pa.Schema | None = None,
) -> list[Shard]:
    """Stream record batches into Parquet shards of about ``rows_per_shard`` rows.

    Memory stays at one batch plus one row group whatever the input size. Each finished
    shard is published into ``writer``'s dataset (not committed: call ``writer.commit``).

    Args:
        use_dictionary, write_statistics: As in ``pyarrow.parquet.ParquetWriter``: all columns, or
            those named; statistics default to :func:`statistics_columns` of the schema.
        schema: Every batch must have exactly this schema (default: the first batch's).

    Returns:
        The published shards, in order.

    Raises:
        ValueError: a batch whose schema differs, naming the differing columns.
    """
    if rows_per_shard <= 0:
        raise ValueError(f"Invalid value for `rows_per_shard`: {rows_per_shard}. Expected a positive integer.")
    shards: list[Shard] = []
    current: pq.ParquetWriter | None = None
    path = ""
    rows = 0

    def finish() -> None:
        nonlocal current, rows
        if current is not None:
            current.close()
            shards.append(writer.publish(path, split=split, rows=rows, format="parquet", partition=partition))
        current, rows = None, 0

    try:
        with translate_errors(writer.url, writer.storage_options):  # a full disk: the error names the dataset
            for number, batch in enumerate(batches):
                schema = schema or batch.schema
                if not batch.schema.equals(schema):
                    diff = sorted({f"{f.name}: {f.type}" for f in batch.schema} ^ {f"{f.name}: {f.type}" for f in schema})
                    raise ValueError(f"Record batch {number} does not match the dataset schema; differing columns: {diff}")
                offset = 0
                while offset < batch.num_rows:
                    if current is None:
                        path = writer.staging_path(".parquet")
                        stats = statistics_columns(batch.schema) if write_statistics is None else write_statistics
                        current = pq.ParquetWriter(path, batch.schema, compression=compression,
                                                   use_dictionary=use_dictionary, write_statistics=stats)
                    take = min(batch.num_rows - offset, rows_per_shard - rows)
                    current.write_batch(batch.slice(offset, take), row_group_size=row_group_size)
                    offset += take
                    rows += take
                    if rows >= rows_per_shard:
                        finish()
            finish()
    finally:
        if current is not None:
            current.close()
    return shards


def iter_parquet_batches(dataset: Dataset, split: str | None = None, *, columns: list[str] | None = None,
                         batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """Record batches of the dataset's Parquet shards (of ``split``), in manifest order.

    Raises:
        ValueError: the dataset (split) has shards, but none in Parquet.
    """
    shards = dataset.shards(split)
    parquet = [s for s in shards if s.format == "parquet"]
    if shards and not parquet:
        raise ValueError(f"{dataset.url}: no Parquet shards{f' in split {split!r}' if split else ''} "
                         f"(formats: {sorted({s.format for s in shards})}).")
    for shard in parquet:
        with dataset.open_shard(shard) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


def read_parquet(dataset: Dataset, split: str | None = None, *, columns: list[str] | None = None,
                 **kwargs: Any) -> pa.Table:
    """The dataset's Parquet shards (of ``split``) as one table, schema from the manifest."""
    schema = dataset.schema if columns is None else pa.schema([dataset.schema.field(c) for c in columns])
    return pa.Table.from_batches(list(iter_parquet_batches(dataset, split, columns=columns, **kwargs)), schema=schema)

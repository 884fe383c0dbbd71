"""The two stages every engine runs: ``map_file`` (parse, validate, split, augment, assign shards)
and ``reduce_shard`` (gather a shard's pieces, shuffle, encode, publish).

Between them, rows travel as Arrow IPC pieces under the run's staging directory on the
output filesystem, one per (input file, split, shard): engines shuffle only these small
references, memory stays at one input file or one shard, and a Dataflow job works the
same way as a laptop run. A shard's pieces are read in input order and its rows sorted by
a seeded hash, so the bytes of every shard are the same whichever engine ran.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shardflow.storage import publish_shard, resolve
from shardflow.storage.tfrecord import write_tfrecords
from shardflow.storage.urls import is_local, join_url, translate_errors

from .config import PipelineConfig
from .records import COPY_COLUMN, assign_split, augment, content_hash, mix, row_identity
from .sources import BAD_ROW_SCHEMA, InputFile, infer_schema, list_inputs, read_input

__all__ = ["Plan", "MapResult", "make_plan", "map_file", "reduce_shard", "DEFAULT_ROWS_PER_SHARD"]

DEFAULT_ROWS_PER_SHARD = 250_000
_KEY = "__shuffle_key"


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, fixed before any work starts (picklable)."""

    config: PipelineConfig
    inputs: tuple[InputFile, ...]
    schema: pa.Schema  # the input schema, enforced on every file
    output_schema: pa.Schema
    shards: dict[str, int]  # split -> shard count
    staging: str  # URL of this run's scratch directory

    @property
    def splits(self) -> list[str]:
        return list(self.config.split.fractions())


@dataclass
class MapResult:
    """What ``map_file`` did with one input file."""

    index: int
    pieces: list[tuple[str, int, str]] = field(default_factory=list)  # (split, shard, piece URL)
    bad_url: str | None = None
    rows_read: int = 0
    bad_rows: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)


def _write_ipc(url: str, table: pa.Table, storage_options: Mapping[str, Any]) -> None:
    fs, path = resolve(url, storage_options)
    with translate_errors(url, storage_options):
        if is_local(fs):  # Arrow's own files: no Python file object in the way
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with (pa.OSFile(path, "wb") if is_local(fs) else fs.open(path, "wb")) as f, \
                pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)


def _read_ipc(url: str, storage_options: Mapping[str, Any]) -> pa.Table:
    fs, path = resolve(url, storage_options)
    with translate_errors(url, storage_options), (pa.memory_map(path) if is_local(fs) else fs.open(path, "rb")) as f:
        return pa.ipc.open_file(f).read_all()  # mapped: read without a copy, valid after the file closes


def _shard_counts(config: PipelineConfig, rows: float, bytes_per_row: float) -> dict[str, int]:
    fractions = config.split.fractions()
    expected = {s: rows * f * (1 + config.augment.copies if s == "train" else 1) for s, f in fractions.items()}
    if config.shards:
        largest = max(expected.values()) or 1.0
        return {s: max(1, round(config.shards * n / largest)) for s, n in expected.items()}
    per_shard = config.rows_per_shard or (
        max(1, int(config.bytes_per_shard / max(bytes_per_row, 1.0))) if config.bytes_per_shard else DEFAULT_ROWS_PER_SHARD)
    return {s: max(1, math.ceil(n / per_shard)) for s, n in expected.items()}


def make_plan(config: PipelineConfig, run_token: str) -> Plan:
    """List inputs, fix the schema, and size the shards from the input (exact rows for a
    committed dataset, else estimated from the first file's rows per byte).

    A committed dataset's shards carry their row counts, so nothing is read twice.

    Raises:
        ValueError: the label or split key is not a column, naming it.
    """
    options = config.storage_options
    inputs = list_inputs(config.input, input_format=config.input_format, storage_options=options)
    schema = config.arrow_schema() or infer_schema(inputs[0], storage_options=options)
    for role, name in (("label", config.label), ("split.key", config.split.key)):
        if name is not None and name not in schema.names:
            raise ValueError(f"Invalid value for `{role}`: {name!r}. Columns are {schema.names}.")
    known = all(i.rows is not None for i in inputs)  # a committed dataset: its manifest has the counts
    if known and not config.bytes_per_shard:
        rows, bytes_per_row = float(sum(i.rows for i in inputs)), 0.0
    else:  # estimate from the first file: its rows (and their in-memory size) per byte of input
        first = read_input(inputs[0], schema=schema, batch_rows=config.batch_rows, storage_options=options)
        first_rows = sum(b.num_rows for _, b in first.batches)
        bytes_per_row = sum(b.nbytes for _, b in first.batches) / max(first_rows, 1)
        fs, _ = resolve(inputs[0].url, options)
        sizes = [i.bytes if i.bytes is not None else fs.size(resolve(i.url, options)[1]) for i in inputs]
        rows = first_rows * sum(sizes) / max(sizes[0], 1)
    output_schema = schema.append(pa.field(COPY_COLUMN, pa.int32(), nullable=False)) if config.augment.enabled else schema
    return Plan(config=config, inputs=tuple(inputs), schema=schema, output_schema=output_schema,
                shards=_shard_counts(config, rows, bytes_per_row),
                staging=join_url(config.output, "_staging", f"run-{run_token}"))


def map_file(plan: Plan, index: int) -> MapResult:
    """Parse, validate, split, augment and shard one input file into staged pieces."""
    config = plan.config
    source = plan.inputs[index]
    required = {config.label} if config.label else set()
    read = read_input(source, schema=plan.schema, required=required, batch_rows=config.batch_rows,
                      storage_options=config.storage_options)
    result = MapResult(index=index, rows_read=read.rows_read, bad_rows=read.bad.num_rows)
    for reason in read.bad.column("reason").to_pylist():
        key = reason.split(":")[0] if reason.startswith("column") else reason.split(":")[0][:80]
        result.bad_reasons[key] = result.bad_reasons.get(key, 0) + 1
    if read.bad.num_rows:
        result.bad_url = join_url(plan.staging, "bad", f"{index:07d}.arrow")
        _write_ipc(result.bad_url, read.bad, config.storage_options)
    splits = plan.splits
    key_columns = [config.split.key] if config.split.key else plan.schema.names
    pieces: dict[tuple[str, int], list[pa.Table]] = {}
    for first_row, batch in read.batches:
        ids = row_identity(source.relative, first_row, batch.num_rows)
        which = assign_split(content_hash(batch, key_columns, config.seed), config.split.fractions(), config.seed)
        table = pa.Table.from_batches([batch])
        for split_index, split in enumerate(splits):
            rows = np.flatnonzero(which == split_index)
            if not rows.size:
                continue
            part, part_ids = None, ids[rows]  # ``part`` is gathered once, in shard order, below
            if config.augment.enabled and split == "train":
                part, part_ids = augment(table.take(rows), part_ids, config.augment, label=config.label,
                                         seed=config.seed)
            keys = mix(part_ids, config.seed, 0x5AFF1E)
            shard_of = keys % np.uint64(plan.shards[split])
            order = np.argsort(shard_of, kind="stable")  # one gather, then each shard is a slice
            part = table.take(rows[order]) if part is None else part.take(order)
            if config.augment.enabled and split != "train":
                part = part.append_column(COPY_COLUMN, pa.array(np.zeros(part.num_rows, np.int32)))
            part = part.append_column(_KEY, pa.array(keys[order]))
            bounds = np.searchsorted(shard_of[order], np.arange(plan.shards[split] + 1, dtype=np.uint64))
            result.rows_out[split] = result.rows_out.get(split, 0) + part.num_rows
            for shard in range(plan.shards[split]):
                if bounds[shard + 1] > bounds[shard]:
                    pieces.setdefault((split, shard), []).append(part.slice(bounds[shard], bounds[shard + 1] - bounds[shard]))
    for (split, shard), tables in sorted(pieces.items()):
        url = join_url(plan.staging, "pieces", split, f"{shard:05d}", f"{index:07d}.arrow")
        _write_ipc(url, pa.concat_tables(tables), config.storage_options)
        result.pieces.append((split, shard, url))
    return result


def reduce_shard(plan: Plan, split: str, shard: int, piece_urls: Sequence[str]) -> list[tuple[str, int, str, dict]]:
    """Gather one shard's pieces, shuffle its rows by their seeded keys, write each format and publish.

    Returns:
        ``(split, shard, format, Shard JSON)`` for each format written (not yet committed).
    """
    config = plan.config
    table = pa.concat_tables([_read_ipc(u, config.storage_options) for u in sorted(piece_urls)])
    table = table.take(pc.sort_indices(table, [(_KEY, "ascending")])).drop_columns([_KEY])
    table = table.cast(plan.output_schema)
    out = []
    with tempfile.TemporaryDirectory(prefix="shardflow-shard-") as tmp:
        for fmt in config.formats:
            local = os.path.join(tmp, f"shard.{fmt}")
            if fmt == "parquet":
                pq.write_table(table, local, compression=config.parquet_compression,
                               row_group_size=config.parquet_row_group_size)
                name = "parquet"
            else:
                write_tfrecords(local, table.to_batches(max_chunksize=config.batch_rows),
                                gzip_compressed=config.tfrecord_gzip)
                name = "tfrecord.gz" if config.tfrecord_gzip else "tfrecord"
            record = publish_shard(config.output, local, split=split, rows=table.num_rows, format=name,
                                   storage_options=config.storage_options)
            out.append((split, shard, name, record.to_json()))
    return out


def read_bad_rows(plan: Plan, urls: Sequence[str]) -> pa.Table:
    """The bad rows of the whole run, in input order."""
    tables = [_read_ipc(u, plan.config.storage_options) for u in sorted(urls)]
    return pa.concat_tables(tables) if tables else BAD_ROW_SCHEMA.empty_table()


def remove_staging(plan: Plan) -> None:
    fs, path = resolve(plan.staging, plan.config.storage_options)
    with translate_errors(plan.staging, plan.config.storage_options):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def group_pieces(results: Sequence[MapResult]) -> dict[tuple[str, int], list[str]]:
    groups: dict[tuple[str, int], list[str]] = {}
    for result in sorted(results, key=lambda r: r.index):
        for split, shard, url in result.pieces:
            groups.setdefault((split, shard), []).append(url)
    return dict(sorted(groups.items()))



"""The two stages every engine runs: ``map_file`` (parse, validate, split, augment, assign shards)
and ``reduce_shard`` (gather a shard's pieces, shuffle, encode, publish).

Between them, rows travel as Arrow IPC pieces under the run's staging directory on the
output filesystem, one per (input file, split, shard): engines shuffle only these small
references, memory stays at one input file or one shard, and a Dataflow job works the
same way as a laptop run. A shard's pieces are read in input order and its rows sorted by
a seeded hash, so the bytes of every shard are the same whichever engine ran.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shardflow.storage import publish_shard, resolve
from shardflow.storage.parquet import statistics_columns
from shardflow.storage.tfrecord import write_tfrecords
from shardflow.storage.urls import is_local, join_url, redact_text, redact_url, secret_values, translate_errors

from .config import PipelineConfig
from .records import COPY_COLUMN, assign_split, augment, content_hash, mix, row_identity
from .sources import BAD_ROW_SCHEMA, InputFile, infer_schema, list_inputs, read_input

__all__ = ["Plan", "MapResult", "make_plan", "map_file", "reduce_shard", "recorded_failure", "DEFAULT_ROWS_PER_SHARD"]

DEFAULT_ROWS_PER_SHARD = 250_000
_KEY = "__shuffle_key"


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, fixed before any work starts (picklable)."""

    config: PipelineConfig
    inputs: tuple[InputFile, ...]
    schema: pa.Schema  # the input schema, enforced on every file
    output_schema: pa.Schema
    # Output partitions in shard order, each with its split -> shard count: shard numbers run
    # over all of them, so engines see one flat list of shards. One ``{}`` partition unless
    # ``partition_by`` is set.
    layout: tuple[tuple[dict[str, str], dict[str, int]], ...]
    staging: str  # URL of this run's scratch directory

    @property
    def splits(self) -> list[str]:
        return list(self.config.split.fractions())

    @property
    def shards(self) -> dict[str, int]:
        """Split -> shard count over every partition."""
        return {s: sum(counts.get(s, 0) for _, counts in self.layout) for s in self.splits}

    def shard_range(self, source: InputFile, split: str) -> tuple[int, int]:
        """``(first shard, count)`` of ``split`` in the output partition ``source`` goes to."""
        column = self.config.partition_by
        first = 0
        for partition, counts in self.layout:
            if not column or partition[column] == source.partition[column]:
                return first, counts[split]
            first += counts[split]
        raise ValueError(f"{source.url}: not in any planned partition")  # make_plan grouped every input

    def partition_of(self, split: str, shard: int) -> dict[str, str]:
        """The output partition that shard ``shard`` of ``split`` belongs to."""
        for partition, counts in self.layout:
            if shard < counts[split]:
                return partition
            shard -= counts[split]
        raise IndexError(shard)


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
    named = [("label", config.label), ("split.key", config.split.key)] + [
        (f"augment.{setting}", name) for setting in ("noise_columns", "mask_columns", "image_columns")
        for name in getattr(config.augment, setting) or ()]
    for role, name in named:
        if name is not None and name not in schema.names:
            raise ValueError(f"Invalid value for `{role}`: {name!r}. Columns are {schema.names}.")
    groups = _partition_groups(config, inputs)
    inputs = [i for _, group in groups for i in group]
    rows_of, bytes_per_row = _row_counts(config, inputs, schema)
    output_schema = schema.append(pa.field(COPY_COLUMN, pa.int32(), nullable=False)) if config.augment.enabled else schema
    layout = tuple((partition, _shard_counts(config, sum(rows_of[i.url] for i in group), bytes_per_row))
                   for partition, group in groups)
    return Plan(config=config, inputs=tuple(inputs), schema=schema, output_schema=output_schema, layout=layout,
                staging=join_url(config.output, "_staging", f"run-{run_token}"))


def _partition_groups(config: PipelineConfig, inputs: list[InputFile]) -> list[tuple[dict[str, str], list[InputFile]]]:
    """The inputs grouped by output partition (one group when ``partition_by`` is not set),
    keeping only the ``partitions`` asked for.

    Raises:
        ValueError: an input outside any ``partition_by=value/`` directory, or a value asked for
            that no input has, naming it.
    """
    column = config.partition_by
    if not column:
        return [({}, inputs)]
    groups: dict[str, list[InputFile]] = {}
    for source in inputs:
        if column not in source.partition:
            found = ", ".join(sorted(source.partition)) or "none"
            raise ValueError(f"Invalid value for `partition_by`: {column!r}. {redact_url(source.url)} is not under a "
                             f"`{column}=VALUE/` directory (its partition columns: {found}).")
        groups.setdefault(source.partition[column], []).append(source)
    wanted = sorted(groups) if config.partitions is None else sorted(set(config.partitions))
    missing = [v for v in wanted if v not in groups]
    if missing:
        raise ValueError(f"Invalid value for `partitions`: {missing[0]!r}. The input has no `{column}={missing[0]}/` "
                         f"files (its {column} values: {', '.join(sorted(groups))}).")
    return [({column: value}, groups[value]) for value in wanted]


def _row_counts(config: PipelineConfig, inputs: list[InputFile], schema: pa.Schema) -> tuple[dict[str, float], float]:
    """Rows of each input (exact for a committed dataset, else estimated from the first file's
    rows per byte) and the in-memory bytes per row (0 when not measured)."""
    options = config.storage_options
    if all(i.rows is not None for i in inputs) and not config.bytes_per_shard:
        return {i.url: float(i.rows or 0) for i in inputs}, 0.0
    first = read_input(inputs[0], schema=schema, batch_rows=config.batch_rows, extra_columns=_extra_columns(config),
                       storage_options=options)
    first_rows = sum(b.num_rows for _, b in first.batches)
    bytes_per_row = sum(b.nbytes for _, b in first.batches) / max(first_rows, 1)
    fs, _ = resolve(inputs[0].url, options)
    sizes = [i.bytes if i.bytes is not None else fs.size(resolve(i.url, options)[1]) for i in inputs]
    return {i.url: first_rows * size / max(sizes[0], 1) for i, size in zip(inputs, sizes)}, bytes_per_row


def _extra_columns(config: PipelineConfig) -> str:
    """Columns beyond the schema: left out when the user named the columns, refused when the
    schema was inferred from the first file (they would be lost unnoticed)."""
    return "ignore" if config.columns else "error"


_FAILURES = {t.__name__: t for t in (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                                     NotADirectoryError, OSError, ValueError)}


@contextlib.contextmanager
def _reported(plan: Plan, task: str) -> Iterator[None]:
    """Leave an expected failure (bad input, storage) in the run's staging directory before it
    propagates: engines and runners wrap it (Beam in its own traceback text), and the launcher
    shows the user this one line instead (:func:`recorded_failure`)."""
    try:
        yield
    except (OSError, ValueError) as e:
        kind = next(t.__name__ for t in type(e).__mro__ if t.__name__ in _FAILURES and _FAILURES[t.__name__] is t)
        url = join_url(plan.staging, "errors", f"{task}.json")
        with contextlib.suppress(Exception):  # a full disk may refuse this too: the engine's error then stands
            fs, path = resolve(url, plan.config.storage_options)
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            message = redact_text(str(e), secret_values(plan.config.storage_options))
            fs.pipe_file(path, json.dumps({"type": kind, "message": message}).encode())
        raise


def recorded_failure(plan: Plan) -> Exception | None:
    """The first failure a task of this run left (:func:`_reported`), as its built-in type, or None."""
    url = join_url(plan.staging, "errors")
    fs, path = resolve(url, plan.config.storage_options)
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)
        first = sorted(fs.ls(path, detail=False))[0]
        failure = json.loads(fs.cat_file(first))
        return _FAILURES.get(failure["type"], ValueError)(failure["message"])
    return None


def map_file(plan: Plan, index: int) -> MapResult:
    """Parse, validate, split, augment and shard one input file into staged pieces."""
    with _reported(plan, f"map-{index:07d}"):
        return _map_file(plan, index)


def _map_file(plan: Plan, index: int) -> MapResult:
    config = plan.config
    source = plan.inputs[index]
    required = {config.label} if config.label else set()
    read = read_input(source, schema=plan.schema, required=required, batch_rows=config.batch_rows,
                      extra_columns=_extra_columns(config), storage_options=config.storage_options)
    result = MapResult(index=index, rows_read=read.rows_read, bad_rows=read.bad.num_rows)
    for reason in read.bad.column("reason").to_pylist():
        key = reason.split(":")[0] if reason.startswith("column") else reason.split(":")[0][:80]
        result.bad_reasons[key] = result.bad_reasons.get(key, 0) + 1
    if read.bad.num_rows:
        result.bad_url = join_url(plan.staging, "bad", f"{index:07d}.arrow")
        _write_ipc(result.bad_url, read.bad, config.storage_options)
    if not read.batches:
        return result
    # The whole file at once (memory already holds it): one hash and one gather per split, not one per batch
    table = pa.Table.from_batches([b for _, b in read.batches]).combine_chunks()
    ids = np.concatenate([row_identity(source.relative, first_row, b.num_rows) for first_row, b in read.batches])
    key_columns = [config.split.key] if config.split.key else plan.schema.names
    hashes = np.concatenate([content_hash(b, key_columns, config.seed) for b in table.to_batches()])  # >2 GiB: 2+
    which = assign_split(hashes, config.split.fractions(), config.seed)
    for split_index, split in enumerate(plan.splits):
        rows = np.flatnonzero(which == split_index)
        if rows.size:
            result.rows_out[split] = _stage_split(plan, result, source, split, table, rows, ids[rows])
    return result


def _stage_split(plan: Plan, result: MapResult, source: InputFile, split: str, table: pa.Table, rows: np.ndarray,
                 ids: np.ndarray) -> int:
    """Stage the rows ``rows`` of ``table`` that go to ``split`` as one piece per shard; returns the rows staged."""
    config = plan.config
    part = None  # gathered once, in shard order, below
    if config.augment.enabled and split == "train":
        part, ids = augment(table.take(rows), ids, config.augment, label=config.label, seed=config.seed)
    keys = mix(ids, config.seed, 0x5AFF1E)
    first, count = plan.shard_range(source, split)
    shard_of = keys % np.uint64(count) + np.uint64(first)
    # One gather, then each shard is a slice. Stable, so the gather reads the file in order: more
    # than twice as fast as sorting by key here too, which would only halve the reduce's gather
    order = np.argsort(shard_of, kind="stable")
    part = table.take(rows[order]) if part is None else part.take(order)
    if config.augment.enabled and split != "train":
        part = part.append_column(COPY_COLUMN, pa.array(np.zeros(part.num_rows, np.int32)))
    part = part.append_column(_KEY, pa.array(keys[order]))
    bounds = np.searchsorted(shard_of[order], np.arange(first, first + count + 1, dtype=np.uint64))
    for i in np.flatnonzero(np.diff(bounds)):
        url = join_url(plan.staging, "pieces", split, f"{first + i:05d}", f"{result.index:07d}.arrow")
        _write_ipc(url, part.slice(bounds[i], bounds[i + 1] - bounds[i]), config.storage_options)
        result.pieces.append((split, int(first + i), url))
    return part.num_rows


def reduce_shard(plan: Plan, split: str, shard: int, piece_urls: Sequence[str]) -> list[tuple[str, int, str, dict]]:
    """Gather one shard's pieces, shuffle its rows by their seeded keys, write each format and publish.

    Returns:
        ``(split, shard, format, Shard JSON)`` for each format written (not yet committed).
    """
    with _reported(plan, f"shard-{split}-{shard:05d}"):
        return _reduce_shard(plan, split, shard, piece_urls)


def _reduce_shard(plan: Plan, split: str, shard: int, piece_urls: Sequence[str]) -> list[tuple[str, int, str, dict]]:
    config = plan.config
    table = pa.concat_tables([_read_ipc(u, config.storage_options) for u in sorted(piece_urls)])
    order = pc.sort_indices(table.column(_KEY))
    table = table.drop_columns([_KEY]).take(order).cast(plan.output_schema)
    out = []
    with tempfile.TemporaryDirectory(prefix="shardflow-shard-") as tmp:
        for fmt in config.formats:
            local = os.path.join(tmp, f"shard.{fmt}")
            if fmt == "parquet":
                pq.write_table(table, local, compression=config.parquet_compression,
                               row_group_size=config.parquet_row_group_size,
                               write_statistics=statistics_columns(table.schema))
                name = "parquet"
            else:
                write_tfrecords(local, table.to_batches(max_chunksize=config.batch_rows),
                                gzip_compressed=config.tfrecord_gzip)
                name = "tfrecord.gz" if config.tfrecord_gzip else "tfrecord"
            record = publish_shard(config.output, local, split=split, rows=table.num_rows, format=name,
                                   partition=plan.partition_of(split, shard), storage_options=config.storage_options)
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



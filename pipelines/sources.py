"""Sources: list the input files of a URL, glob or partitioned directory; read them as typed Arrow batches.

Reading is one file per task, in row order, so every engine numbers rows the same way.
Rows that cannot be parsed or typed are not dropped: they come back as bad rows with the
raw text and the reason, for the dead-letter output.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from shardflow.storage import open_dataset, resolve
from shardflow.storage.urls import join_url, redact_url, translate_errors

__all__ = ["InputFile", "list_inputs", "read_input", "infer_schema", "BAD_ROW_SCHEMA"]

_MAX_BLOCK = (1 << 31) - 1  # Arrow's CSV block size is an int32
_CAST_SLICE = 65536  # values walked one by one at most, around a value that does not cast
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
BAD_ROW_SCHEMA = pa.schema([("source", pa.string()), ("row", pa.int64()), ("raw", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class InputFile:
    """One input file: its URL, its path relative to the input root (for stable row ids), its format."""

    url: str
    relative: str
    format: str
    partition: dict[str, str] = field(default_factory=dict)
    rows: int | None = None  # known for a committed dataset's shards
    bytes: int | None = None


def _format_of(path: str, declared: str | None) -> str | None:
    if declared:
        return declared
    for ext, fmt in _EXTENSIONS.items():
        if path.endswith(ext) or path.endswith(ext + ".gz"):
            return fmt
    return None


def _partition(relative: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in relative.split("/")[:-1] if "=" in part)


def list_inputs(url: str, *, input_format: str | None = None,
                storage_options: Mapping[str, Any] | None = None) -> list[InputFile]:
    """The input files of ``url``, sorted: a file, a glob, a directory tree, or a committed dataset.

    A committed shardflow dataset is read through its manifest (never its uncommitted files);
    in a plain directory, names starting with ``_`` or ``.`` are skipped.

    Raises:
        FileNotFoundError: nothing to read at ``url``.
        ValueError: a file whose format cannot be told from its name (pass ``input_format``).
    """
    fs, root = resolve(url, storage_options)
    shown = redact_url(url)
    with translate_errors(url, storage_options):
        if any(ch in root for ch in "*?["):
            base = root[: min(root.index(ch) for ch in "*?[" if ch in root)].rsplit("/", 1)[0]
            paths = sorted(fs.glob(root))
        elif fs.isdir(root):
            try:
                dataset = open_dataset(url, storage_options=storage_options)
            except FileNotFoundError:
                dataset = None
            if dataset is not None:
                return _dataset_inputs(dataset, input_format)
            base = root
            paths = sorted(p for p in fs.find(root) if not any(
                part.startswith(("_", ".")) for part in p[len(root):].strip("/").split("/")))
        elif fs.isfile(root):
            base, paths = posixpath.dirname(root), [root]
        else:
            raise FileNotFoundError(f"No input at {shown}.")
    inputs = []
    for path in paths:
        relative = path[len(base):].lstrip("/") if path.startswith(base) else posixpath.basename(path)
        fmt = _format_of(path, input_format)
        if fmt is None:
            raise ValueError(f"Cannot tell the format of {redact_url(join_url(url, relative))}; "
                             "pass `input_format` (csv, jsonl, parquet).")
        file_url = fs.unstrip_protocol(path) if "://" in url else path
        inputs.append(InputFile(file_url, relative, fmt, _partition(relative)))
    if not inputs:
        raise FileNotFoundError(f"No input files at {shown}.")
    return inputs


def _dataset_inputs(dataset: Any, input_format: str | None) -> list[InputFile]:
    """A committed dataset's shards in one readable format: each format holds every row, so
    reading two would read every row twice (Parquet is preferred)."""
    if not dataset.manifest.shards:
        raise ValueError(f"{redact_url(dataset.url)} version {dataset.manifest.version} holds no shards: "
                         "nothing to read.")
    readable = [f for f in ("parquet", "csv", "jsonl") if f in {s.format for s in dataset.manifest.shards}]
    if input_format is not None:
        readable = [f for f in readable if f == input_format]
    if not readable:
        have = sorted({s.format for s in dataset.manifest.shards})
        raise ValueError(f"{redact_url(dataset.url)} holds {have} shards; the pipeline reads parquet, csv or jsonl"
                         + (f" (`input_format` is {input_format!r})." if input_format else "."))
    return [InputFile(dataset.shard_url(s), s.path, s.format, dict(s.partition), s.rows, s.bytes)
            for s in dataset.manifest.shards if s.format == readable[0]]


@dataclass
class ReadResult:
    """Typed batches of one file (with the file row number of each batch's first row) and its bad rows."""

    batches: list[tuple[int, pa.RecordBatch]]
    bad: pa.Table
    rows_read: int


def _bad_rows(source: str, rows: list[int], raws: list[str], reasons: list[str]) -> pa.Table:
    return pa.table({"source": [source] * len(rows), "row": rows, "raw": raws, "reason": reasons},
                    schema=BAD_ROW_SCHEMA)


def _cast_column(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, list[tuple[int, str]]]:
    """Cast, keeping good values; returns the cast array (bad entries null) and ``(index, reason)`` of bad ones."""
    if values.type == target:
        return values, []
    try:
        return pc.cast(values, target), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if len(values) > _CAST_SLICE:  # a whole file: find the slices that hold the bad values first
        parts = [(start, _cast_column(values.slice(start, _CAST_SLICE), target))
                 for start in range(0, len(values), _CAST_SLICE)]
        return (pa.concat_arrays([cast for _, (cast, _) in parts]),
                [(start + i, reason) for start, (_, bad) in parts for i, reason in bad])
    out, bad = [], []
    for i, value in enumerate(values):  # the slow path runs only for a slice that holds bad values
        try:
            out.append(pc.cast(pa.array([value.as_py()], values.type), target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError, ValueError):
            out.append(None)
            bad.append((i, f"cannot convert {value.as_py()!r} to {target}"))
    return pa.array(out, target), bad


def _enforce(batch: pa.RecordBatch, schema: pa.Schema, required: set[str]) -> tuple[pa.RecordBatch, dict[int, str]]:
    """Give ``batch`` exactly ``schema`` (columns, order, types); bad rows by index with the first reason."""
    bad: dict[int, str] = {}
    missing = [f.name for f in schema if f.name not in batch.schema.names]
    if missing:
        return batch, {i: f"missing column(s) {missing}" for i in range(batch.num_rows)}
    columns = []
    for target in schema:
        column, problems = _cast_column(batch.column(target.name), target.type)
        for i, reason in problems:
            bad.setdefault(i, f"column {target.name!r}: {reason}")
        if target.name in required and column.null_count:
            for i in pc.indices_nonzero(pc.is_null(column)).to_pylist():
                bad.setdefault(i, f"column {target.name!r}: required value is missing")
        if target.name in required and pa.types.is_floating(target.type):  # a NaN or infinite label trains nothing
            for i in pc.indices_nonzero(pc.invert(pc.fill_null(pc.is_finite(column), True))).to_pylist():
                bad.setdefault(i, f"column {target.name!r}: {column[i].as_py()} is not a finite number")
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema), bad


def _raw_text(batch: pa.RecordBatch, index: int) -> str:
    return json.dumps({k: (v if isinstance(v, (str, int, float, bool)) or v is None else repr(v))
                       for k, v in batch.slice(index, 1).to_pylist()[0].items()}, ensure_ascii=False)


def _check_names(source: InputFile, names: list[str]) -> None:
    """Raises ValueError naming the file and the column when two columns share a name (which
    one would a reader get?)."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{redact_url(source.url)}: duplicate column name(s) {twice}; every column needs its own name.")


def _json_column(values: list[Any]) -> pa.Array:
    """One JSON key's values as Arrow; values of mixed kinds as JSON text, so that the schema
    cast rejects only the rows that do not fit (as bad rows), not the file."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())


def _iter_raw(source: InputFile, data: bytes, schema: pa.Schema | None, batch_rows: int,
              bad: list[tuple[int, str, str]], extra: set[str]) -> Iterator[pa.RecordBatch]:
    """Raw batches of a file (strings for text formats); parse failures go to ``bad``, JSON keys
    outside ``schema`` to ``extra`` (CSV and Parquet batches carry every column of the file)."""
    if source.format == "parquet":
        # Arrow readers over Arrow buffers: a Python file object would take the GIL on every read.
        # The whole file at once (the map stage holds it anyway): its columns come out contiguous.
        reader = pq.ParquetFile(pa.BufferReader(data))
        _check_names(source, reader.schema_arrow.names)
        yield from reader.read(use_threads=False).to_batches()
        return
    if source.format == "csv":
        if not data.strip():  # a zero-byte part file (as many writers leave) holds no rows
            return
        header = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
        _check_names(source, header)

        def invalid(row: pacsv.InvalidRow) -> str:
            bad.append((row.number or -1, row.text, f"expected {row.expected_columns} fields, found {row.actual_columns}"))
            return "skip"

        reader = pacsv.open_csv(
            pa.BufferReader(data),
            # one block for the whole file (already in memory): a record longer than a block would fail
            read_options=pacsv.ReadOptions(use_threads=False, block_size=min(max(len(data) + 1, 1 << 22), _MAX_BLOCK)),
            parse_options=pacsv.ParseOptions(invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                 strings_can_be_null=True, quoted_strings_can_be_null=False))
        yield from reader  # one batch per block: one for a file under 2 GiB
        return
    lines = data.decode("utf-8", "replace").splitlines()
    for start in range(0, len(lines), batch_rows):
        chunk = lines[start:start + batch_rows]
        good, records = [], []
        for offset, line in enumerate(chunk):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                records.append(record)
                good.append(offset)
            except ValueError as e:
                bad.append((start + offset + 1, line, f"invalid JSON: {e}"))
        if records:
            keys = list(dict.fromkeys(k for r in records for k in r))
            names = list(schema.names) if schema is not None else keys
            extra.update(k for k in keys if k not in names)
            yield pa.RecordBatch.from_arrays([_json_column([r.get(k) for r in records]) for k in names], names=names)


def read_input(source: InputFile, *, schema: pa.Schema | None, required: set[str] = frozenset(),
               batch_rows: int = 65536, extra_columns: str = "ignore",
               storage_options: Mapping[str, Any] | None = None) -> ReadResult:
    """Read one input file as batches of exactly ``schema`` (or its own, if None), rows numbered from 1.

    Args:
        extra_columns: ``"ignore"`` leaves out columns of the file that ``schema`` lacks (the
            user chose the columns); ``"error"`` refuses the file (the schema was inferred from
            another file, so they would be lost unnoticed).

    Raises:
        OSError / FileNotFoundError: the file cannot be read, naming it.
        ValueError: the file cannot be parsed, repeats a column name, or has extra columns
            under ``extra_columns="error"``, naming the file and the columns.
    """
    fs, path = resolve(source.url, storage_options)
    with translate_errors(source.url, storage_options):
        data = fs.cat_file(path)
    if source.url.endswith(".gz") and source.format != "parquet":
        import gzip

        data = gzip.decompress(data)
    parse_bad: list[tuple[int, str, str]] = []
    batches: list[tuple[int, pa.RecordBatch]] = []
    bad_rows, bad_raw, bad_reason = [], [], []
    row = 1
    extra: set[str] = set()
    try:
        for raw in _iter_raw(source, data, schema, batch_rows, parse_bad, extra):
            if schema is not None:
                extra.update(n for n in raw.schema.names if n not in schema.names)
            if extra and extra_columns == "error":
                raise ValueError(f"{redact_url(source.url)} has column(s) {sorted(extra)} that the schema "
                                    f"(inferred from the first input file) lacks; name the columns to keep in "
                                    f"`columns` (the others are then left out).")
            typed, bad = _enforce(raw, schema, required) if schema is not None else (raw, {})
            if bad:
                keep = pa.array([i not in bad for i in range(raw.num_rows)])
                for i, reason in sorted(bad.items()):
                    bad_rows.append(row + i)
                    bad_raw.append(_raw_text(raw, i))
                    bad_reason.append(reason)
                typed = typed.filter(keep)
            if typed.num_rows:
                batches.append((row, typed))
            row += raw.num_rows
    except (pa.ArrowInvalid, ValueError) as e:
        shown = redact_url(source.url)
        raise ValueError(str(e) if str(e).startswith(shown) else f"{shown}: cannot parse as {source.format}: {e}") from None
    for number, raw_text, reason in parse_bad:
        bad_rows.append(number)
        bad_raw.append(raw_text)
        bad_reason.append(reason)
    rows_read = row - 1 + len(parse_bad)
    return ReadResult(batches, _bad_rows(redact_url(source.url), bad_rows, bad_raw, bad_reason), rows_read)


def infer_schema(source: InputFile, *, storage_options: Mapping[str, Any] | None = None,
                 sample_rows: int = 10000) -> pa.Schema:
    """Infer column types once, from the start of the first file; the pipeline then fixes them.

    Raises:
        ValueError: the file is empty, repeats a column name or cannot be parsed, naming it and
            saying to declare ``columns``.
    """
    fs, path = resolve(source.url, storage_options)
    shown = redact_url(source.url)
    if source.format == "parquet":  # the footer only
        with translate_errors(source.url, storage_options), fs.open(path, "rb") as f:
            try:
                schema = pq.ParquetFile(f).schema_arrow
            except pa.ArrowInvalid as e:
                raise ValueError(f"{shown}: cannot read as parquet: {e}") from None
        _check_names(source, schema.names)
        return schema
    with translate_errors(source.url, storage_options), fs.open(path, "rb", compression="infer") as f:
        head = f.read(8 << 20)
    if not head.strip():
        raise ValueError(f"{shown} is empty: no columns to infer the schema from. Declare `columns` "
                         "(name: type), or put a non-empty file first.")
    try:
        if source.format == "csv":
            _check_names(source, head.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(","))
            cut = head[: head.rfind(b"\n") + 1] or head
            table = pacsv.read_csv(pa.BufferReader(cut), read_options=pacsv.ReadOptions(
                use_threads=False, block_size=min(len(cut) + 1, _MAX_BLOCK)))
        else:
            lines = [ln for ln in head.decode("utf-8", "replace").splitlines()[:sample_rows] if ln.strip()]
            text = "\n".join(lines[:-1] or lines).encode()
            table = pajson.read_json(pa.BufferReader(text), read_options=pajson.ReadOptions(
                use_threads=False, block_size=min(len(text) + 1, _MAX_BLOCK)))
    except pa.ArrowInvalid as e:
        raise ValueError(f"{shown}: cannot infer the column types from its first rows ({' '.join(str(e).split())}); "
                         "declare `columns` (name: type) to fix them.") from None
    fields = [pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in table.schema]
    return pa.schema(fields)

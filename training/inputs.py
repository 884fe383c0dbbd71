"""Training input: each worker reads its own shards of a committed dataset with tf.data.

Which shards a worker reads is decided from the manifest (file-level sharding: sorted shard
paths, every W-th from the worker's index). The tf.data graph runs on the worker, so
everything it opens must be a local file there. A worker's host therefore *prepares* its
shards first: remote shards are fetched through storage's shard cache, and Parquet shards
are decoded by pyarrow into a columnar TFRecord file (one record per chunk of rows, one
serialized tensor per column) that tf.data reads without per-row parsing. Local TFRecord
shards are read in place.

The stream a worker reads is a pure function of (its shards, seed, epoch), so a resumed
run skips exactly the batches it had consumed (``skip_batches``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shardflow.storage import ChecksumMismatchError, Dataset, Shard, ShardCache, open_dataset
from shardflow.storage.commit import checksum_file, temp_token
from shardflow.storage.tfrecord import first_corrupt_record
from shardflow.storage.urls import is_local, redact_url

from ._tf import tf

__all__ = ["InputSpec", "ShardReader", "choose_format", "training_data", "worker_shards", "make_dataset", "CHUNK_ROWS",
           "verify_hint"]

log = logging.getLogger(__name__)

CHUNK_ROWS = 1024  # rows per record of a columnar file
_DTYPES = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
_NUMPY = {"float32": np.float32, "int64": np.int64, "string": object}
_RECORD_OFFSET = re.compile(r"(?:corrupted|truncated) record at (\d+)")  # TensorFlow's DataLossError text


def verify_hint(dataset: Dataset) -> str:
    """What a user runs next when a shard of ``dataset`` is corrupt."""
    return f"run `shardflow data verify {redact_url(dataset.url)}` to check every shard"


@dataclass(frozen=True)
class InputSpec:
    """The columns a model sees, from the manifest's feature spec (scalar columns only)."""

    feature_spec: Mapping[str, Mapping[str, Any]]
    label: str

    @classmethod
    def from_dataset(cls, dataset: Dataset, label: str | None) -> InputSpec:
        spec = dataset.manifest.feature_spec
        recorded = (dataset.manifest.metadata.get("pipeline") or {}).get("label") or \
            (dataset.manifest.metadata.get("synth") or {}).get("label")
        label = label or recorded or "label"
        if label not in spec:
            raise ValueError(f"Invalid value for `label`: {label!r}. {dataset.url} has columns {sorted(spec)}.")
        usable = {n: e for n, e in spec.items() if e.get("kind") == "fixed_len" and e.get("shape") == []}
        skipped = sorted(set(spec) - set(usable))
        if skipped:
            log.warning("Skipping non-scalar columns %s: the built-in input reads scalar columns.", skipped)
        return cls(feature_spec=usable, label=label)

    @property
    def features(self) -> list[str]:
        return [n for n in self.feature_spec if n != self.label]

    def dtype(self, name: str) -> tf.DType:
        return _DTYPES[self.feature_spec[name]["dtype"]]

    def default(self, name: str) -> Any:
        """What a null reads as: NaN for nullable floats (so a model can tell "missing" from 0),
        else the manifest's default ("" or 0)."""
        entry = self.feature_spec[name]
        if entry["dtype"] == "float32" and entry.get("nullable", True):
            return float("nan")
        return entry.get("default")

    def parse_spec(self) -> dict[str, tf.io.FixedLenFeature]:
        return {n: tf.io.FixedLenFeature([], self.dtype(n), default_value=self.default(n)) for n in self.feature_spec}


def training_data(config: Any) -> Dataset:
    """The dataset a run reads: ``config.data`` (a :class:`TrainConfig`), restricted to
    ``config.partitions`` when set (a retrain's window of partitions)."""
    dataset = open_dataset(config.data, storage_options=config.storage_options)
    return dataset.select(config.partitions) if config.partitions else dataset


def choose_format(dataset: Dataset, split: str, wanted: str) -> str:
    """``"tfrecord"`` or ``"parquet"``: the format to read ``split`` in (``auto`` prefers TFRecord)."""
    have = {"tfrecord" if s.format.startswith("tfrecord") else s.format for s in dataset.shards(split)}
    if not have:
        raise ValueError(f"{redact_url(dataset.url)} has no shards in split {split!r}; it has "
                         f"{sorted(dataset.manifest.splits())}.")
    if wanted == "auto":
        return "tfrecord" if "tfrecord" in have else "parquet" if "parquet" in have else sorted(have)[0]
    if wanted not in have:
        raise ValueError(f"Invalid value for `format`: {wanted!r}. Split {split!r} of {dataset.url} has {sorted(have)}.")
    return wanted


def worker_shards(shards: Sequence[Shard], worker: int, workers: int) -> tuple[list[Shard], bool]:
    """The shards ``worker`` of ``workers`` reads, and whether it must also keep only its stripe of
    rows (when there are fewer shards than workers, every worker reads every shard)."""
    ordered = sorted(shards, key=lambda s: s.path)
    if len(ordered) >= workers:
        return ordered[worker::workers], False
    return ordered, workers > 1


class ShardReader:
    """Makes a dataset's shards readable by tf.data on this host, and says where they are."""

    def __init__(self, dataset: Dataset, spec: InputSpec, *, cache_dir: str, cache_bytes: int) -> None:
        self.dataset = dataset
        self.spec = spec
        self.cache_dir = os.path.abspath(cache_dir)
        self.cache_bytes = cache_bytes
        self.local = is_local(dataset.fs)
        self._shard_cache: ShardCache | None = None  # remote datasets only

    def path(self, shard: Shard) -> str:
        """Where tf.data reads ``shard`` on a prepared host (pure: the coordinator calls it too)."""
        if shard.format == "parquet":
            return os.path.join(self.cache_dir, "columns", f"{shard.checksum.split(':')[-1]}-{CHUNK_ROWS}.tfrecord")
        if self.local:
            return self.dataset.shard_path(shard)
        return self._cache().entry_path(shard)

    def _cache(self) -> ShardCache:
        if self._shard_cache is None:
            self._shard_cache = ShardCache(self.cache_dir, max_bytes=self.cache_bytes)
        return self._shard_cache

    def prepare(self, shards: Sequence[Shard], on_shard: Callable[[Shard], None] | None = None) -> list[str]:
        """Fetch and decode ``shards`` as needed; returns their local paths, in order."""
        paths = []
        for shard in shards:
            target = self.path(shard)
            if not os.path.exists(target):
                if shard.format == "parquet" and self.local:
                    source = self.dataset.shard_path(shard)
                    self._check_local(shard, source, full=True)  # a flipped bit can decode silently
                    self._write_columns(source, target, shard)
                elif shard.format == "parquet":  # the cache verified it on arrival
                    with self._cache().pinned(self.dataset, shard) as fetched:
                        self._write_columns(fetched, target, shard)
                elif not self.local:
                    self._cache().fetch(self.dataset, shard)
                else:
                    raise FileNotFoundError(f"{self.dataset.shard_url(shard)}: listed in the manifest but missing.")
            elif self.local and shard.format != "parquet":
                self._check_local(shard, target, full=False)  # read in place: bit flips surface in tf.data
            paths.append(target)
            if on_shard:
                on_shard(shard)
        return paths

    def _check_local(self, shard: Shard, path: str, *, full: bool) -> None:
        """Compare a local shard with its manifest entry: its size, and its checksum when ``full``.

        Raises:
            ChecksumMismatchError: naming the shard and what to run next.
        """
        size = os.path.getsize(path)
        problem = _size_problem(shard, size) or (_checksum_problem(shard, checksum_file(path)) if full else None)
        if problem:
            raise ChecksumMismatchError(f"{redact_url(self.dataset.shard_url(shard))}: corrupt shard ({problem}); "
                                        f"{verify_hint(self.dataset)}")

    def corrupt_shard_error(self, shards: Sequence[Shard], error: BaseException) -> ChecksumMismatchError:
        """The one-line error for a ``DataLossError`` that tf.data raised reading ``shards``.

        TensorFlow names the offset of the bad record, not the file (tensorflow#37751), and under
        ParameterServerStrategy the read ran on some worker. So the files read are checked here,
        only now that one failed: first those whose size is wrong, then by checksum against the
        manifest. A corrupt copy that this host made (a cache entry, a decoded Parquet file) is
        removed, so that a rerun fetches or decodes it again.
        """
        match = _RECORD_OFFSET.search(str(error))
        offset = int(match.group(1)) if match else None
        at = f" at byte {offset}" if offset is not None else ""
        for shard in self._suspects(shards, offset):
            problem = self._problem(shard)
            if problem:
                return ChecksumMismatchError(f"{redact_url(self.dataset.shard_url(shard))}: corrupt "
                                             f"record{at} ({problem}); {verify_hint(self.dataset)}")
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return ChecksumMismatchError(f"{redact_url(self.dataset.url)}: TensorFlow found a corrupt record{at} "
                                     f"({first.strip()}) but every shard read matches its manifest entry; "
                                     f"{verify_hint(self.dataset)}")

    def _suspects(self, shards: Sequence[Shard], offset: int | None) -> list[Shard]:
        """``shards`` that can hold a bad record at ``offset``, those of the wrong size first."""
        def size(shard: Shard) -> int | None:
            try:
                return os.path.getsize(self.path(shard))
            except OSError:
                return None  # not on this host (a worker elsewhere read it): checked where it is stored

        sized = [(shard, size(shard)) for shard in {s.path: s for s in shards}.values()]
        # TensorFlow's offset counts uncompressed bytes: it says nothing of a gzipped shard's size
        possible = [(s, n) for s, n in sized if n is None or offset is None or n > offset or s.format.endswith(".gz")]
        return [s for s, n in sorted(possible, key=lambda e: e[0].format == "parquet" or e[1] == e[0].bytes)]

    def _problem(self, shard: Shard) -> str | None:
        """What is wrong with the copy of ``shard`` that tf.data read, or None."""
        path = self.path(shard)
        if not os.path.exists(path):
            found = self.dataset.check_shard(shard)
            return found.problem if found else None
        if shard.format == "parquet":  # a decoded copy, made here from a verified shard
            offset = first_corrupt_record(path)
            if offset is None:
                return None
            os.unlink(path)
            return (f"its decoded copy {path} was corrupt at byte {offset}; removed, a rerun decodes the shard "
                    "again")
        checksum, size = checksum_file(path)
        problem = _size_problem(shard, size) or _checksum_problem(shard, (checksum, size))
        if problem and not self.local and self.dataset.check_shard(shard) is None:
            os.unlink(path)
            return f"its cached copy {path} was corrupt ({problem}); removed, a rerun fetches the shard again"
        return problem

    def _write_columns(self, parquet_path: str, target: str, shard: Shard) -> None:
        """Decode a Parquet shard into a columnar TFRecord file (nulls read as ``InputSpec.default``)."""
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{temp_token()}"
        names = list(self.spec.feature_spec)
        try:
            with tf.io.TFRecordWriter(tmp) as writer:
                for batch in pq.ParquetFile(parquet_path).iter_batches(batch_size=CHUNK_ROWS, columns=names):
                    feature = {}
                    for name in names:
                        entry = self.spec.feature_spec[name]
                        column = batch.column(name)
                        if column.null_count:
                            column = pc.fill_null(column, pa.scalar(self.spec.default(name)).cast(column.type))
                        values = column.to_numpy(zero_copy_only=False).astype(_NUMPY[entry["dtype"]])
                        tensor = tf.io.serialize_tensor(tf.constant(values, dtype=self.spec.dtype(name)))
                        feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[tensor.numpy()]))
                    writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            os.replace(tmp, target)  # whole or absent: a reader never sees half a file
        except Exception as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise ValueError(f"{redact_url(self.dataset.shard_url(shard))}: cannot decode Parquet shard: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}; "
                             f"{verify_hint(self.dataset)}") from e


def _size_problem(shard: Shard, size: int) -> str | None:
    if size == shard.bytes:
        return None
    if size < shard.bytes:
        return f"truncated at byte {size}, the manifest says {shard.bytes} bytes"
    return f"{size} bytes, the manifest says {shard.bytes}"


def _checksum_problem(shard: Shard, found: tuple[str, int]) -> str | None:
    return None if found[0] == shard.checksum else "its checksum differs from the manifest's"


def make_dataset(paths: Sequence[str], fmt: str, spec: InputSpec, *, batch_size: int, shuffle_buffer: int = 0,
                 seed: int = 0, repeat: bool = True, skip_batches: int | tf.Tensor = 0,
                 stripe: tuple[int, int] | None = None, compressed: bool = False) -> tf.data.Dataset:
    """``(features, label)`` batches of ``batch_size`` read from local ``paths``, in parallel.

    Args:
        fmt: ``"tfrecord"`` (tf.train.Example records) or ``"parquet"`` (prepared columnar files).
        shuffle_buffer: Rows in the shuffle buffer (0: no shuffling; files are then read in order).
        repeat: Repeat forever, reshuffling the file order each epoch (seeded).
        skip_batches: Batches already consumed (a resumed run, a restarted worker).
        stripe: ``(index, count)``: keep only every count-th row from index. The stripes of one
            set of files partition its rows only when all are read with the same ``seed``.
        compressed: TFRecord files are GZIP-compressed.
    """
    if not paths:
        raise ValueError("No shards to read.")
    files = tf.data.Dataset.from_tensor_slices(list(paths))
    if shuffle_buffer:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        files = files.repeat()
    compression = "GZIP" if compressed else ""
    records = files.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
                               cycle_length=min(4, len(paths)), block_length=16 if fmt == "tfrecord" else 1,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if stripe is not None:
        records = records.shard(stripe[1], stripe[0])
    label = spec.label
    if fmt == "tfrecord":
        if shuffle_buffer:
            records = records.shuffle(shuffle_buffer, seed=seed)
        batches = records.batch(batch_size, drop_remainder=repeat).skip(skip_batches)
        parse_spec = spec.parse_spec()
        batches = batches.map(lambda b: tf.io.parse_example(b, parse_spec), num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
    elif fmt == "parquet":
        column_spec = {n: tf.io.FixedLenFeature([], tf.string) for n in spec.feature_spec}

        def columns(record: tf.Tensor) -> dict[str, tf.Tensor]:
            raw = tf.io.parse_single_example(record, column_spec)
            return {n: tf.ensure_shape(tf.io.parse_tensor(raw[n], spec.dtype(n)), [None]) for n in spec.feature_spec}

        chunks = records.map(columns, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if shuffle_buffer:  # rows within a shard were shuffled by the pipeline; mix chunks here
            chunks = chunks.shuffle(max(2, shuffle_buffer // CHUNK_ROWS), seed=seed)
        batches = chunks.rebatch(batch_size, drop_remainder=repeat).skip(skip_batches)
    else:
        raise ValueError(f"Invalid value for `format`: {fmt!r}. Expected 'tfrecord' or 'parquet'.")
    batches = batches.map(lambda b: _split_label(b, label))
    return batches.prefetch(tf.data.AUTOTUNE)


def _split_label(batch: dict[str, tf.Tensor], label: str) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    features = {n: t for n, t in batch.items() if n != label}
    return features, tf.cast(batch[label], tf.float32)

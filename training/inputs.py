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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shardflow.storage import Dataset, Shard, ShardCache, open_dataset
from shardflow.storage.commit import temp_token
from shardflow.storage.urls import is_local, redact_url

from ._tf import tf

__all__ = ["InputSpec", "ShardReader", "choose_format", "training_data", "worker_shards", "make_dataset", "CHUNK_ROWS"]

log = logging.getLogger(__name__)

CHUNK_ROWS = 1024  # rows per record of a columnar file
_DTYPES = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
_NUMPY = {"float32": np.float32, "int64": np.int64, "string": object}


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
                    self._write_columns(self.dataset.shard_path(shard), target, shard)
                elif shard.format == "parquet":
                    with self._cache().pinned(self.dataset, shard) as fetched:
                        self._write_columns(fetched, target, shard)
                elif not self.local:
                    self._cache().fetch(self.dataset, shard)
                else:
                    raise FileNotFoundError(f"{self.dataset.shard_url(shard)}: listed in the manifest but missing.")
            paths.append(target)
            if on_shard:
                on_shard(shard)
        return paths

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
            raise ValueError(f"{self.dataset.shard_url(shard)}: cannot decode Parquet shard: {e}") from e


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

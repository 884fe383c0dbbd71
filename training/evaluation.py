"""Scoring a model on a split of a committed dataset, in this process: the trainer's periodic
evaluation, ``shardflow checkpoints evaluate`` and the export report all read rows here."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from shardflow.storage import Dataset
from shardflow.storage.urls import redact_url

from ._tf import tf, tf_keras
from .inputs import InputSpec, ShardReader, choose_format, make_dataset
from .report import classification_metrics

__all__ = ["split_data", "predict_logits", "evaluate_model", "read_rows"]

_BATCH = 4096


def split_data(dataset: Dataset, spec: InputSpec, reader: ShardReader, *, split: str, fmt: str = "auto",
               rows: int | None = None, batch_size: int = _BATCH, **stream: Any) -> tf.data.Dataset:
    """``(features, label)`` batches of ``split``: in file order, the first ``rows`` only if
    given; or, with ``stream`` (``make_dataset``'s ``shuffle_buffer``, ``seed``, ``repeat``), a
    training stream.

    Raises:
        ValueError: the dataset has no such split (naming the ones it has), or lacks a column
            ``spec`` needs, or holds it with another type.
    """
    have = dataset.manifest.feature_spec
    for name, entry in spec.feature_spec.items():
        if name not in have or have[name].get("dtype") != entry.get("dtype"):
            found = f"holds it as {have[name].get('dtype')}" if name in have else "has no such column"
            raise ValueError(f"{redact_url(dataset.url)}: the model reads column {name!r} as {entry.get('dtype')}, "
                             f"but the dataset {found}.")
    fmt = choose_format(dataset, split, fmt)
    shards = [s for s in dataset.shards(split) if s.format.startswith(fmt)]
    if rows and not stream:  # the first ``rows`` rows: prepare (fetch, decode) only the shards that hold them
        held = list(itertools.accumulate(s.rows for s in shards))
        shards = shards[:next((i + 1 for i, n in enumerate(held) if n >= rows), len(shards))]
    batch = min(batch_size, rows or batch_size)
    ds = make_dataset(reader.prepare(shards), fmt, spec, batch_size=batch, **{"repeat": False, **stream},
                      compressed=any(s.format.endswith(".gz") for s in shards))
    if not rows:
        return ds
    # Whole batches, the last one cut to size: the first ``rows`` rows exactly, without unbatching.
    return ds.take(math.ceil(rows / batch)).enumerate().map(
        lambda i, batch_: tf.nest.map_structure(lambda t: t[:rows - tf.cast(i, tf.int32) * batch], batch_))


def predict_logits(model: tf_keras.Model) -> Callable[[dict[str, Any]], np.ndarray]:
    """One traced inference function for ``model`` (not rebuilt per batch)."""
    predict = tf.function(lambda features: model(features, training=False))
    return lambda features: predict(features).numpy()


def evaluate_model(logits_of: Callable[[dict[str, Any]], np.ndarray], data: tf.data.Dataset) -> dict[str, float]:
    """Log loss, AUC, accuracy and rows of ``logits_of`` over every batch of ``data``."""
    labels, logits = [], []
    for features, label in data:
        logits.append(np.asarray(logits_of(features)))
        labels.append(label.numpy())
    if not labels:
        raise ValueError("No rows to evaluate on.")
    return classification_metrics(np.concatenate(labels), np.concatenate(logits))


def read_rows(data: tf.data.Dataset) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All of ``data`` as NumPy columns (strings as bytes, nulls as NaN or "") and labels."""
    columns: dict[str, list[np.ndarray]] = {}
    labels = []
    for features, label in data:
        for name, value in features.items():
            columns.setdefault(name, []).append(value.numpy())
        labels.append(label.numpy())
    return {n: np.concatenate(v) for n, v in columns.items()}, np.concatenate(labels)

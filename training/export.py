"""Export a trained model as a SavedModel with ordinary (un-sharded) variables.

The trained model's variables may be sharded across parameter servers; the export rebuilds
the same model outside any strategy, copies the values in, and saves it with a serving
signature over the raw feature columns, so ``tf.saved_model.load(path)`` works anywhere
without shardflow. The directory is finished locally and published: renamed into place on
local disk, committed through storage's :class:`CheckpointStore` on object storage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from shardflow.storage import CheckpointStore
from shardflow.storage.commit import temp_token
from shardflow.storage.urls import is_local, resolve

from ._tf import tf, tf_keras
from .config import ModelConfig
from .inputs import InputSpec
from .model import build_model

__all__ = ["export_saved_model"]


def _plain_copy(trained: tf_keras.Model, spec: InputSpec, config: ModelConfig) -> tf_keras.Model:
    """The same model with ordinary variables, through a checkpoint: TensorFlow saves a
    sharded variable as one whole tensor and restores it into any partitioning."""
    with tf.distribute.get_strategy().scope():  # the default strategy: ordinary variables
        plain = build_model(spec, config)
    with tempfile.TemporaryDirectory(prefix="shardflow-unshard-") as tmp:
        prefix = tf.train.Checkpoint(model=trained).write(os.path.join(tmp, "model"))
        tf.train.Checkpoint(model=plain).read(prefix).assert_existing_objects_matched()
    return plain


def _save_local(model: tf_keras.Model, spec: InputSpec, directory: str) -> None:
    signature = {n: tf.TensorSpec([None], spec.dtype(n), name=n) for n in spec.features}

    @tf.function(input_signature=[signature])
    def serve(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        logits = model(features, training=False)
        return {"probability": tf.sigmoid(logits), "logit": logits}

    tf.saved_model.save(model, directory, signatures={"serving_default": serve})


def export_saved_model(trained: tf_keras.Model, spec: InputSpec, config: ModelConfig, url: str, *, step: int,
                       storage_options: Mapping[str, Any] | None = None) -> str:
    """Write the SavedModel for ``step`` under ``url``; returns where it can be loaded from.

    Local: ``<url>/<step>`` (renamed into place whole). Object storage: a committed entry of
    ``CheckpointStore(url)``; its record names the directory.
    """
    plain = _plain_copy(trained, spec, config)
    fs, root = resolve(url, storage_options)
    if is_local(fs):
        final = os.path.join(root, f"{step:012d}")
        os.makedirs(root, exist_ok=True)
        tmp = os.path.join(root, f".tmp-{temp_token()}")
        try:
            _save_local(plain, spec, tmp)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final
    with tempfile.TemporaryDirectory(prefix="shardflow-export-") as tmp:
        _save_local(plain, spec, os.path.join(tmp, "model"))
        store = CheckpointStore(url, storage_options=storage_options)
        record = store.publish(os.path.join(tmp, "model"), step, metadata={"kind": "saved_model"})
    return store.url_of(record)

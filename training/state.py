"""What a checkpoint holds, built in one place: the model, its optimizer and every worker's
input position; restored into a plain model without a cluster.

Training builds the state under its strategy (:func:`build_state`). Everyone else (the
``shardflow checkpoints`` commands, exports, retraining) restores a committed checkpoint into
ordinary variables in this process (:func:`load_checkpoint`): TensorFlow saves a sharded
variable as one whole tensor and restores it into any partitioning (DESIGN.md fact 12). The
checkpoint's record names the settings and columns the model was built from.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shardflow.storage import Checkpoint, CheckpointStore
from shardflow.storage.urls import redact_url

from ._tf import tf, tf_keras
from .config import TrainConfig
from .inputs import InputSpec
from .model import build_model

__all__ = ["PREFIX", "FusedAdagrad", "LoadedCheckpoint", "TrainState", "build_state", "checkpoint_layout",
           "load_checkpoint", "make_optimizer", "plain_copy", "read_into"]

PREFIX = "ckpt"  # the TensorFlow checkpoint prefix inside each checkpoint directory


class FusedAdagrad(tf_keras.optimizers.Adagrad):
    """tf_keras's Adagrad (same slots, so the same checkpoints), each update one fused kernel.

    The stock update is five to six ops per variable: for a sparse gradient a scatter-add into
    the accumulator, a gather of it back, then a scatter-add into the variable. Under
    ParameterServerStrategy all of them run on the ps, where they were most of its op time in a
    trace of a scheduled step (the scatter-adds alone 45 %). ``ResourceSparseApplyAdagradV2``
    (and ``ResourceApplyAdagradV2`` for dense gradients) do it in one pass, as the legacy
    optimizer does: ``accum += g²; var -= lr·g / (√accum + ε)``; the stock one divides by
    ``√(accum + ε)``, a relative difference under 2e-7 (two float32 ulps) for accumulators from
    the initial 0.1 up. Indices arrive deduplicated (``apply_gradients`` sums duplicates first),
    so rows are applied once; the kernels lock the variable, as the stock scatter-adds do, so two
    workers updating the same rows lose nothing. The stock path remains for variables mirrored
    across replicas (MirroredStrategy, TPU) and under XLA (``jit_compile``, tf_keras's default
    where a GPU is seen), which has no kernel for the sparse update.
    """

    def update_step(self, grad: tf.Tensor | tf.IndexedSlices, variable: tf.Variable) -> None:
        """Apply one gradient to ``variable`` and its accumulator."""
        accumulator = self._accumulators[self._index_dict[self._var_key(variable)]]
        if self.jit_compile or any(isinstance(v, tf.distribute.DistributedValues) for v in (variable, accumulator)):
            super().update_step(grad, variable)
            return
        lr = tf.cast(self.learning_rate, variable.dtype)
        epsilon = tf.cast(self.epsilon, variable.dtype)
        if isinstance(grad, tf.IndexedSlices):
            tf.raw_ops.ResourceSparseApplyAdagradV2(var=variable.handle, accum=accumulator.handle, lr=lr, epsilon=epsilon,
                                                    grad=grad.values, indices=grad.indices, use_locking=True)
        else:
            tf.raw_ops.ResourceApplyAdagradV2(var=variable.handle, accum=accumulator.handle, lr=lr, epsilon=epsilon,
                                              grad=grad, use_locking=True)


def make_optimizer(config: TrainConfig) -> tf_keras.optimizers.Optimizer:
    return {"adagrad": FusedAdagrad, "adam": tf_keras.optimizers.Adam, "sgd": tf_keras.optimizers.SGD,
            "ftrl": tf_keras.optimizers.Ftrl}[config.optimizer](learning_rate=config.learning_rate)


@dataclass
class TrainState:
    model: tf_keras.Model
    optimizer: tf_keras.optimizers.Optimizer
    positions: tf.Variable  # batches consumed, per worker
    checkpoint: tf.train.Checkpoint


def build_state(spec: InputSpec, config: TrainConfig, *, workers: int) -> TrainState:
    """Model, optimizer (slots built) and input positions, under the current strategy's scope."""
    model = build_model(spec, config.model)
    optimizer = make_optimizer(config)
    optimizer.build(model.trainable_variables)
    positions = tf.Variable(tf.zeros([workers], tf.int64), trainable=False, name="batches_consumed")
    return TrainState(model, optimizer, positions,
                      tf.train.Checkpoint(model=model, optimizer=optimizer, batches_consumed=positions))


def checkpoint_layout(checkpoint: tf.train.Checkpoint) -> dict[str, dict[str, Any]]:
    """Checkpoint key of every variable, with its name and how many ps tasks hold its shards (a
    checkpoint holds a sharded variable as one whole tensor, so only the live object knows)."""
    sharded = tf.__internal__.distribute.ShardedVariable  # the only public name for the type
    found: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()

    def walk(node: Any, path: str) -> None:
        for name, child in tf.train.TrackableView(node).children(node).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            where = f"{path}/{name}" if path else name
            if isinstance(child, (sharded, tf.Variable)):
                parts = child.variables if isinstance(child, sharded) else [child]
                found[f"{where}/.ATTRIBUTES/VARIABLE_VALUE"] = {"name": _NAME_SUFFIX.sub("", parts[0].name),
                                                                 "shards": len(parts)}
            else:
                walk(child, where)

    walk(checkpoint, "")
    return found


_NAME_SUFFIX = re.compile(r"(/part_\d+)?:\d+$")


def read_into(checkpoint: tf.train.Checkpoint, directory: str, *, what: str, partial: bool = False) -> None:
    """Restore ``checkpoint`` from the files in ``directory``; every variable it has must be there."""
    try:  # a changed model is not restored
        status = checkpoint.read(os.path.join(directory, PREFIX))
        status.assert_existing_objects_matched()
        if partial:
            status.expect_partial()  # the optimizer and input positions are not wanted
    except (AssertionError, ValueError) as e:  # unmatched objects; a variable of another shape
        raise ValueError(f"{what} does not match this model (changed since it was written?): "
                         f"{str(e).splitlines()[0][:300]}.") from e


def plain_copy(trained: tf_keras.Model, spec: InputSpec, config: TrainConfig) -> tf_keras.Model:
    """The same model with ordinary variables (a trained model's may be sharded across ps tasks)."""
    with tf.distribute.get_strategy().scope():  # the default strategy: ordinary variables
        plain = build_model(spec, config.model)
    with tempfile.TemporaryDirectory(prefix="shardflow-unshard-") as tmp:
        tf.train.Checkpoint(model=trained).write(os.path.join(tmp, PREFIX))
        read_into(tf.train.Checkpoint(model=plain), tmp, what="The trained model")
    return plain


@dataclass
class LoadedCheckpoint:
    """A committed checkpoint restored into a plain model in this process."""

    model: tf_keras.Model
    spec: InputSpec
    config: TrainConfig
    record: Checkpoint
    url: str  # of the checkpoint's files
    optimizer: tf_keras.optimizers.Optimizer | None = None


def recorded_config(record: Checkpoint, *, where: str) -> tuple[TrainConfig, InputSpec]:
    """The training settings and columns a checkpoint's record names."""
    meta = record.metadata
    if "train_config" not in meta or "input_spec" not in meta:
        raise ValueError(f"{where}: the record of step {record.step} does not name its model settings and columns "
                         "(written before shardflow recorded them); rerun the training to write a new one.")
    config = TrainConfig.model_validate(meta["train_config"])
    spec = InputSpec(feature_spec=meta["input_spec"]["feature_spec"], label=meta["input_spec"]["label"])
    return config, spec


def load_checkpoint(url: str, *, step: int | None = None, local_dir: str,
                    storage_options: Mapping[str, Any] | None = None, with_optimizer: bool = False) -> LoadedCheckpoint:
    """Restore the committed checkpoint at ``step`` (default: latest) of ``url`` into a plain
    model (and optimizer), no cluster. Remote files are fetched into ``local_dir``; every file
    is verified against its record.

    Raises:
        FileNotFoundError: no committed checkpoint there, or not at ``step``.
        ChecksumMismatchError: a file's bytes differ from its record.
        ValueError: the record names no model settings, or the files do not match them.
    """
    store = CheckpointStore(url, storage_options=storage_options)
    record = store.find(step)
    where = f"The checkpoint at step {record.step} in {redact_url(store.url)}"
    config, spec = recorded_config(record, where=where)
    directory = store.download(record, os.path.join(local_dir, f"step-{record.step:012d}"), verify=True)
    with tf.distribute.get_strategy().scope():
        model = build_model(spec, config.model)
        optimizer = None
        if with_optimizer:
            optimizer = make_optimizer(config)
            optimizer.build(model.trainable_variables)
    parts = {"model": model, **({"optimizer": optimizer} if optimizer is not None else {})}
    read_into(tf.train.Checkpoint(**parts), directory, what=where, partial=True)
    return LoadedCheckpoint(model=model, spec=spec, config=config, record=record, url=store.url_of(record),
                            optimizer=optimizer)


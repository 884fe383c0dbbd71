"""Smaller models: id tables stored as int8 or float16 and dequantized at lookup (in int8,
dense kernels too, with one scale per output unit), and
magnitude pruning of dense kernels and id-table rows, with an optional fine-tune.

Pruning is done here, not with tensorflow-model-optimization: its 0.8.1 release declares
``absl-py~=1.2``, which pip cannot resolve beside the pinned TensorFlow 2.21 set (absl-py
2.x), and its wrappers prune single weights, where an id table is best pruned by whole rows
(a pruned row is an id the model no longer stores). The compressed layers keep the trained
model's structure, so a compressed SavedModel has the float one's signature.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from ._tf import tf, tf_keras
from .config import TrainConfig
from .inputs import InputSpec
from .model import CORE, build_model, is_builtin

__all__ = ["QuantizedDense", "QuantizedEmbedding", "quantize_table", "compressed_model", "prune_model", "fine_tune"]

TableMode = Literal["int8", "float16"]
_VALUES_PER_SCALE = 16  # an int8 scale covers one row of a wide table, several rows of a narrow one


def _rows_per_scale(dim: int) -> int:
    return max(1, math.ceil(_VALUES_PER_SCALE / dim))


def _int8(values: np.ndarray, peak: np.ndarray, scale_dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``values`` with scales ``peak / 127`` (broadcast against ``values``),
    stored as ``scale_dtype`` and never rounded below the peak; an all-zero group gets scale 1."""
    scales = (peak / 127.0).astype(scale_dtype)
    short = scales.astype(np.float32) * 127.0 < peak  # the scale's dtype rounded it down: step it up
    scales[short] = np.nextafter(scales[short], scale_dtype(np.inf))
    scales[scales == 0] = 1.0  # a pruned row stays zero
    return np.clip(np.rint(values / scales.astype(np.float32)), -127, 127).astype(np.int8), scales


def quantize_table(table: np.ndarray, mode: TableMode) -> dict[str, np.ndarray]:
    """``{"values": ...}`` as float16, or int8 ``values`` with one float16 ``scales`` entry per
    row (per group of rows when a row holds fewer than 16 values), symmetric, round to nearest."""
    if mode == "float16":
        return {"values": table.astype(np.float16)}
    rows, dim = table.shape
    group = _rows_per_scale(dim)
    padded = np.zeros((math.ceil(rows / group) * group, dim), np.float32)
    padded[:rows] = table
    grouped = padded.reshape(-1, group * dim)
    values, scales = _int8(grouped, np.abs(grouped).max(axis=1, keepdims=True), np.float16)
    return {"values": values.reshape(-1, dim)[:rows], "scales": scales[:, 0]}


@tf_keras.utils.register_keras_serializable("shardflow")
class QuantizedEmbedding(tf_keras.layers.Layer):
    """An id table stored as int8 (with float16 scales) or float16, dequantized at lookup."""

    def __init__(self, input_dim: int, output_dim: int, *, mode: TableMode, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.input_dim, self.output_dim, self.mode = input_dim, output_dim, mode
        self.group = _rows_per_scale(output_dim)

    def build(self, input_shape: Any) -> None:
        dtype = tf.int8 if self.mode == "int8" else tf.float16
        self.values = self.add_weight(name="values", shape=(self.input_dim, self.output_dim), dtype=dtype,
                                      initializer="zeros", trainable=False)
        if self.mode == "int8":
            self.scales = self.add_weight(name="scales", shape=(math.ceil(self.input_dim / self.group),),
                                          dtype=tf.float16, initializer="ones", trainable=False)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        rows = tf.cast(tf.gather(self.values, inputs), tf.float32)
        if self.mode == "float16":
            return rows
        scale = tf.cast(tf.gather(self.scales, inputs // self.group), tf.float32)
        return rows * scale[..., None]

    def load(self, table: np.ndarray) -> None:
        for name, array in quantize_table(table, self.mode).items():
            getattr(self, name).assign(array)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim, "mode": self.mode}


@tf_keras.utils.register_keras_serializable("shardflow")
class QuantizedDense(tf_keras.layers.Layer):
    """A dense layer whose kernel is int8 with one float32 scale per output unit (bias float)."""

    def __init__(self, units: int, *, activation: str | None = None, use_bias: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units, self.use_bias = units, use_bias
        self.activation = tf_keras.activations.get(activation)

    def build(self, input_shape: Any) -> None:
        self.values = self.add_weight(name="values", shape=(int(input_shape[-1]), self.units), dtype=tf.int8,
                                      initializer="zeros", trainable=False)
        self.scales = self.add_weight(name="scales", shape=(self.units,), initializer="ones", trainable=False)
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros", trainable=False) \
            if self.use_bias else None
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        y = tf.matmul(inputs, tf.cast(self.values, tf.float32)) * self.scales
        return self.activation(y + self.bias if self.bias is not None else y)

    def load(self, source: tf_keras.layers.Dense) -> None:
        kernel = source.kernel.numpy()
        values, scales = _int8(kernel, np.abs(kernel).max(axis=0, keepdims=True), np.float32)
        self.values.assign(values)
        self.scales.assign(scales[0])
        if self.bias is not None:
            self.bias.assign(source.bias.numpy())

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
                "activation": tf_keras.activations.serialize(self.activation)}


def _require_builtin(config: TrainConfig, what: str) -> None:
    if not is_builtin(config.model):
        raise ValueError(f"{what} needs the built-in model; this checkpoint's model is {config.model.function!r} "
                         "(export it as a float SavedModel).")


def _tables(core: tf_keras.Model) -> dict[str, tf_keras.layers.Embedding]:
    return {layer.name: layer for layer in core.layers if isinstance(layer, tf_keras.layers.Embedding)}


def compressed_model(plain: tf_keras.Model, spec: InputSpec, config: TrainConfig, mode: TableMode) -> tf_keras.Model:
    """``plain`` (the built-in model) with its id tables stored as ``mode`` (and, in int8, its
    dense kernels); other layers copied."""
    _require_builtin(config, f"--quantize {mode}")
    dense = QuantizedDense if mode == "int8" else tf_keras.layers.Dense
    with tf.distribute.get_strategy().scope():
        model = build_model(spec, config.model, dense=dense, embedding=lambda rows, dim, name: QuantizedEmbedding(
            rows, dim, mode=mode, name=name))
    source, target = plain.get_layer(CORE), model.get_layer(CORE)
    tables = _tables(source)
    for layer in target.layers:
        if layer.name in tables:
            layer.load(tables[layer.name].embeddings.numpy())
        elif isinstance(layer, QuantizedDense):
            layer.load(source.get_layer(layer.name))
        else:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return model


def _prunable(core: tf_keras.Model) -> list[tuple[tf.Variable, str]]:
    """(variable, how): dense kernels by single weights, id tables by whole rows."""
    found = [(layer.kernel, "weights") for layer in core.layers if isinstance(layer, tf_keras.layers.Dense)]
    return found + [(table.embeddings, "rows") for table in _tables(core).values()]


def prune_model(model: tf_keras.Model, config: TrainConfig, sparsity: float) -> dict[str, Any]:
    """Zero the smallest-magnitude ``sparsity`` of each dense kernel's weights and of each id
    table's rows (by L2 norm), in place. Returns the masks (for :func:`fine_tune`) and the
    sparsity reached per variable."""
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"Invalid value for `--prune`: {sparsity}. Expected a sparsity between 0 and 1, exclusive.")
    _require_builtin(config, "--prune")
    masks, reached = [], {}
    for variable, how in _prunable(model.get_layer(CORE)):
        value = variable.numpy()
        magnitude = np.linalg.norm(value, axis=1, keepdims=True) if how == "rows" else np.abs(value)
        cut = np.quantile(magnitude, sparsity)
        mask = (magnitude > cut).astype(np.float32)
        variable.assign(value * mask)
        masks.append((variable, tf.constant(mask)))
        reached[variable.name] = float(1.0 - mask.mean())
    return {"masks": masks, "sparsity": reached}


def fine_tune(model: tf_keras.Model, optimizer: tf_keras.optimizers.Optimizer, masks: list[tuple[tf.Variable, tf.Tensor]],
              data: tf.data.Dataset, steps: int) -> float:
    """Train ``steps`` batches of ``data`` with the pruned weights held at zero; returns the mean loss."""
    @tf.function
    def step(features: dict[str, tf.Tensor], labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = model(features, training=True)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        for variable, mask in masks:
            variable.assign(variable * mask)
        return loss

    losses = [float(step(features, labels)) for features, labels in data.take(steps)]
    return float(np.mean(losses)) if losses else float("nan")

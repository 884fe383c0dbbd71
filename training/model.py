"""Models: the built-in click-through model derived from a dataset's schema, or a user's own.

Built on ``tf_keras`` (Keras 2): Keras 3 cannot train with ParameterServerStrategy and a
``variable_partitioner`` (DESIGN.md fact 3). A model takes a dict of raw feature columns
(strings, floats, ints: what the dataset holds) and returns one logit per row.

The built-in model is two parts: an encoder (string columns hashed to ids; numeric columns
to ``sign(x) * log(1 + |x|)``, nulls filled and flagged) and a ``core`` model on those numbers. The core alone is what
runs where string hashing cannot (TFLite, DESIGN.md fact 9); :mod:`.encoding` gives clients
the same encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shardflow.configs import load_function

from ._tf import tf, tf_keras
from .config import ModelConfig
from .inputs import InputSpec

__all__ = ["CORE", "build_model", "ctr_core", "fill_missing", "hash_ids", "is_builtin", "signed_log", "FillMissing",
           "HashIds", "SignedLog", "SumColumns", "UniqueEmbedding"]

CORE = "core"  # the name of the built-in model's core (ids and numbers in, logit out)
EmbeddingFactory = Callable[..., tf_keras.layers.Layer]  # (input_dim, output_dim, name=...) -> layer
DenseFactory = Callable[..., tf_keras.layers.Layer]  # (units, activation=..., use_bias=..., name=...) -> layer


def hash_ids(columns: Sequence[str], values: Sequence[tf.Tensor], buckets: int) -> tf.Tensor:
    """``[rows, columns]`` int64 ids in one shared space: FarmHash Fingerprint64 of
    ``"<column>=<value>"`` modulo ``buckets`` (``tf.strings.to_hash_bucket_fast``)."""
    ids = [tf.strings.to_hash_bucket_fast(tf.strings.join([f"{c}=", x if x.dtype == tf.string else tf.strings.as_string(x)]),
                                          buckets) for c, x in zip(columns, values)]
    return tf.stack(ids, axis=1)


def fill_missing(values: Sequence[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """Numeric columns (nulls read as NaN) to ``[rows, columns]`` values with nulls (and
    infinities) as 0, and float missing flags (1 where null)."""
    x = tf.stack([tf.cast(v, tf.float32) for v in values], axis=1)
    present = tf.math.is_finite(x)
    return tf.where(present, x, tf.zeros_like(x)), 1.0 - tf.cast(present, tf.float32)


def signed_log(x: tf.Tensor) -> tf.Tensor:
    """Heavy-tailed counts to a tame scale, ``sign(x) * log(1 + |x|)``."""
    return tf.sign(x) * tf.math.log(1.0 + tf.abs(x))


@tf_keras.utils.register_keras_serializable("shardflow")
class HashIds(tf_keras.layers.Layer):
    """String columns to ids (:func:`hash_ids`)."""

    def __init__(self, columns: list[str], buckets: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.columns = list(columns)
        self.buckets = buckets

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        return hash_ids(self.columns, inputs, self.buckets)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "columns": self.columns, "buckets": self.buckets}


@tf_keras.utils.register_keras_serializable("shardflow")
class FillMissing(tf_keras.layers.Layer):
    """Numeric columns to ``[values, missing flags]`` (:func:`fill_missing`)."""

    def call(self, inputs: list[tf.Tensor]) -> list[tf.Tensor]:
        return list(fill_missing(inputs))


@tf_keras.utils.register_keras_serializable("shardflow")
class SignedLog(tf_keras.layers.Layer):
    """:func:`signed_log` as a layer."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return signed_log(inputs)


@tf_keras.utils.register_keras_serializable("shardflow")
class UniqueEmbedding(tf_keras.layers.Embedding):
    """An embedding that, in training, looks each distinct id of a batch up once: popular ids
    repeat across rows and columns, so fewer rows travel from the parameter servers and fewer
    are updated. Serving does a plain lookup."""

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        flat = tf.reshape(inputs, [-1])  # a table sharded across ps tasks takes 1-D ids only
        if training:
            unique, position = tf.unique(flat)
            rows = tf.gather(tf.nn.embedding_lookup(self.embeddings, unique), position)
        else:
            rows = tf.nn.embedding_lookup(self.embeddings, flat)
        return tf.reshape(rows, tf.concat([tf.shape(inputs), [self.output_dim]], axis=0))


@tf_keras.utils.register_keras_serializable("shardflow")
class SumColumns(tf_keras.layers.Layer):
    """``[rows, k]`` to ``[rows, 1]``: the wide part's per-feature weights, summed."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(inputs, axis=1, keepdims=True)


def ctr_core(categorical: int, numeric: int, config: ModelConfig, *, embedding: EmbeddingFactory = UniqueEmbedding,
             dense: DenseFactory = tf_keras.layers.Dense) -> tf_keras.Model:
    """The built-in model after encoding: inputs ``ids`` ``[rows, categorical]`` int64 and
    ``numeric`` (signed logs), ``missing`` ``[rows, numeric]`` float32 (those it has); one logit
    per row. Its inputs are in a tame range, so a full-int8 TFLite model quantizes them well.

    Args:
        embedding, dense: Build each id table and dense layer (compressed exports pass quantized ones).
    """
    inputs: dict[str, tf_keras.layers.Layer] = {}
    parts, wide = [], []
    if categorical:
        inputs["ids"] = ids = tf_keras.Input(shape=(categorical,), dtype=tf.int64, name="ids")
        parts.append(tf_keras.layers.Flatten(name="flatten_embeddings")(
            embedding(config.hash_buckets, config.embedding_dim, name="embedding")(ids)))
        wide.append(tf_keras.layers.Flatten(name="flatten_wide")(embedding(config.hash_buckets, 1, name="wide_weights")(ids)))
    if numeric:
        inputs["numeric"] = values = tf_keras.Input(shape=(numeric,), dtype=tf.float32, name="numeric")
        inputs["missing"] = missing = tf_keras.Input(shape=(numeric,), dtype=tf.float32, name="missing")
        scaled = tf_keras.layers.Concatenate(name="scaled_numeric")([values, missing])
        normalized = tf_keras.layers.BatchNormalization(name="normalize_numeric")(scaled)
        parts.append(normalized)
        wide.append(dense(1, use_bias=False, name="wide_numeric")(normalized))
    x = parts[0] if len(parts) == 1 else tf_keras.layers.Concatenate(name="deep_input")(parts)
    for i, units in enumerate(config.hidden_units):
        x = dense(units, activation="relu", name=f"deep_{i}")(x)
    deep = dense(1, name="deep_logit")(x)
    logit = tf_keras.layers.Add(name="logit")([deep, *[SumColumns(name=f"wide_sum_{i}")(w) for i, w in enumerate(wide)]])
    return tf_keras.Model(inputs=inputs, outputs=tf_keras.layers.Reshape((), name="one_logit_per_row")(logit), name=CORE)


def _ctr_model(spec: InputSpec, config: ModelConfig, embedding: EmbeddingFactory, dense: DenseFactory) -> tf_keras.Model:
    inputs = {n: tf_keras.Input(shape=(), dtype=spec.dtype(n), name=n) for n in spec.features}
    categorical = [n for n in spec.features if spec.dtype(n) == tf.string]
    numeric = [n for n in spec.features if n not in categorical]
    encoded = {}
    if categorical:
        encoded["ids"] = HashIds(categorical, config.hash_buckets, name="hash_ids")([inputs[n] for n in categorical])
    if numeric:
        values, encoded["missing"] = FillMissing(name="fill_missing")([inputs[n] for n in numeric])
        encoded["numeric"] = SignedLog(name="signed_log")(values)
    core = ctr_core(len(categorical), len(numeric), config, embedding=embedding, dense=dense)
    return tf_keras.Model(inputs=inputs, outputs=core(encoded), name="ctr")


def is_builtin(config: ModelConfig) -> bool:
    return config.function is None


def build_model(spec: InputSpec, config: ModelConfig, *, embedding: EmbeddingFactory = UniqueEmbedding,
                dense: DenseFactory = tf_keras.layers.Dense) -> tf_keras.Model:
    """The model for ``spec``: the built-in click-through model, or ``config.function(spec, config)``.

    A user function receives the :class:`InputSpec` (``spec.features``, ``spec.dtype(name)``,
    ``spec.feature_spec`` from the manifest) and the model config, and returns a
    ``tf_keras.Model`` mapping a dict of feature columns to one logit per row.

    Args:
        embedding, dense: The id tables and dense layers of the built-in model (compressed exports pass their own).
    """
    if is_builtin(config):
        return _ctr_model(spec, config, embedding, dense)
    model = load_function(config.function, setting="model.function")(spec, config)
    if not isinstance(model, tf_keras.Model):
        raise ValueError(f"`model.function` {config.function} returned {type(model).__name__}, "
                         "not a tf_keras.Model (Keras 3 models cannot train with ParameterServerStrategy).")
    return model

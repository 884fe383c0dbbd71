"""Models: the built-in click-through model derived from a dataset's schema, or a user's own.

Built on ``tf_keras`` (Keras 2): Keras 3 cannot train with ParameterServerStrategy and a
``variable_partitioner`` (DESIGN.md fact 3). A model takes a dict of raw feature columns
(strings, floats, ints: what the dataset holds) and returns one logit per row.
"""

from __future__ import annotations

from typing import Any

from shardflow.configs import load_function

from ._tf import tf, tf_keras
from .config import ModelConfig
from .inputs import InputSpec

__all__ = ["build_model", "HashIds", "SignedLog", "SumColumns", "UniqueEmbedding"]


@tf_keras.utils.register_keras_serializable("shardflow")
class HashIds(tf_keras.layers.Layer):
    """String columns to ids in one shared space: ``hash("<column>=<value>") mod buckets``."""

    def __init__(self, columns: list[str], buckets: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.columns = list(columns)
        self.buckets = buckets

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        ids = [tf.strings.to_hash_bucket_fast(tf.strings.join([f"{c}=", tf.strings.as_string(x) if x.dtype != tf.string
                                                               else x]), self.buckets)
               for c, x in zip(self.columns, inputs)]
        return tf.stack(ids, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "columns": self.columns, "buckets": self.buckets}


@tf_keras.utils.register_keras_serializable("shardflow")
class SignedLog(tf_keras.layers.Layer):
    """Heavy-tailed counts to a tame scale, ``sign(x) * log1p(|x|)``, beside a missing flag per
    column (nulls read as NaN): ``[rows, 2 * columns]``."""

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        x = tf.stack([tf.cast(v, tf.float32) for v in inputs], axis=1)
        present = tf.math.is_finite(x)
        x = tf.where(present, x, tf.zeros_like(x))
        return tf.concat([tf.sign(x) * tf.math.log1p(tf.abs(x)), 1.0 - tf.cast(present, tf.float32)], axis=1)


@tf_keras.utils.register_keras_serializable("shardflow")
class UniqueEmbedding(tf_keras.layers.Embedding):
    """An embedding that looks each distinct id of a batch up once: popular ids repeat across
    rows and columns, so fewer rows travel from the parameter servers and fewer are updated."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        unique, position = tf.unique(tf.reshape(inputs, [-1]))
        rows = tf.gather(tf.nn.embedding_lookup(self.embeddings, unique), position)
        return tf.reshape(rows, tf.concat([tf.shape(inputs), [self.output_dim]], axis=0))


@tf_keras.utils.register_keras_serializable("shardflow")
class SumColumns(tf_keras.layers.Layer):
    """``[rows, k]`` to ``[rows, 1]``: the wide part's per-feature weights, summed."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(inputs, axis=1, keepdims=True)


def _ctr_model(spec: InputSpec, config: ModelConfig) -> tf_keras.Model:
    inputs = {n: tf_keras.Input(shape=(), dtype=spec.dtype(n), name=n) for n in spec.features}
    categorical = [n for n in spec.features if spec.dtype(n) == tf.string]
    numeric = [n for n in spec.features if n not in categorical]
    parts, wide = [], []
    if categorical:
        ids = HashIds(categorical, config.hash_buckets, name="hash_ids")([inputs[n] for n in categorical])
        embedded = UniqueEmbedding(config.hash_buckets, config.embedding_dim, name="embedding")(ids)
        parts.append(tf_keras.layers.Flatten(name="flatten_embeddings")(embedded))
        weights = UniqueEmbedding(config.hash_buckets, 1, name="wide_weights")(ids)
        wide.append(tf_keras.layers.Flatten(name="flatten_wide")(weights))
    if numeric:
        scaled = SignedLog(name="signed_log")([inputs[n] for n in numeric])
        normalized = tf_keras.layers.BatchNormalization(name="normalize_numeric")(scaled)
        parts.append(normalized)
        wide.append(tf_keras.layers.Dense(1, use_bias=False, name="wide_numeric")(normalized))
    x = parts[0] if len(parts) == 1 else tf_keras.layers.Concatenate(name="deep_input")(parts)
    for i, units in enumerate(config.hidden_units):
        x = tf_keras.layers.Dense(units, activation="relu", name=f"deep_{i}")(x)
    deep = tf_keras.layers.Dense(1, name="deep_logit")(x)
    logit = tf_keras.layers.Add(name="logit")([deep, *[SumColumns(name=f"wide_sum_{i}")(w) for i, w in enumerate(wide)]])
    return tf_keras.Model(inputs=inputs, outputs=tf_keras.layers.Reshape((), name="one_logit_per_row")(logit), name="ctr")


def build_model(spec: InputSpec, config: ModelConfig) -> tf_keras.Model:
    """The model for ``spec``: the built-in click-through model, or ``config.function(spec, config)``.

    A user function receives the :class:`InputSpec` (``spec.features``, ``spec.dtype(name)``,
    ``spec.feature_spec`` from the manifest) and the model config, and returns a
    ``tf_keras.Model`` mapping a dict of feature columns to one logit per row.
    """
    if config.function is None:
        return _ctr_model(spec, config)
    model = load_function(config.function, setting="model.function")(spec, config)
    if not isinstance(model, tf_keras.Model):
        raise ValueError(f"`model.function` {config.function} returned {type(model).__name__}, "
                         "not a tf_keras.Model (Keras 3 models cannot train with ParameterServerStrategy).")
    return model

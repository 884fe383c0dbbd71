"""A user model for tests, loaded by import path (``model.function``)."""

from __future__ import annotations

import tensorflow as tf
import tf_keras

# Layer names no built-in model uses: tests find them in the checkpoint and the export.
NORM_LAYER = "tiny_numeric_norm"
LOGIT_LAYER = "tiny_linear_logit"


def linear_model(spec, config) -> tf_keras.Model:
    """Logistic regression on the numeric columns only (nulls, read as NaN, become 0)."""
    numeric = [n for n in spec.features if spec.dtype(n) != tf.string]
    inputs = {n: tf_keras.Input(shape=(), dtype=spec.dtype(n), name=n) for n in spec.features}
    stacked = tf_keras.layers.Lambda(
        lambda xs: tf.where(tf.math.is_nan(tf.stack(xs, axis=1)), 0.0, tf.stack(xs, axis=1)))([inputs[n] for n in numeric])
    normalized = tf_keras.layers.BatchNormalization(name=NORM_LAYER)(stacked)
    logit = tf_keras.layers.Dense(1, name=LOGIT_LAYER)(normalized)
    return tf_keras.Model(inputs, tf_keras.layers.Reshape(())(logit))

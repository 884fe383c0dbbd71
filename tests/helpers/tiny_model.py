"""A user model for tests, loaded by import path (``model.function``)."""

from __future__ import annotations

import tensorflow as tf
import tf_keras


def linear_model(spec, config) -> tf_keras.Model:
    """Logistic regression on the numeric columns only (nulls, read as NaN, become 0)."""
    numeric = [n for n in spec.features if spec.dtype(n) != tf.string]
    inputs = {n: tf_keras.Input(shape=(), dtype=spec.dtype(n), name=n) for n in spec.features}
    stacked = tf_keras.layers.Lambda(
        lambda xs: tf.where(tf.math.is_nan(tf.stack(xs, axis=1)), 0.0, tf.stack(xs, axis=1)))([inputs[n] for n in numeric])
    logit = tf_keras.layers.Dense(1)(tf_keras.layers.BatchNormalization()(stacked))
    return tf_keras.Model(inputs, tf_keras.layers.Reshape(())(logit))

"""TFLite models of the built-in model's core (ids and numbers in, logit out), in the four
variants devices use: float32, float16, dynamic-range int8 and full int8 (calibrated)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import numpy as np

from . import quiet_native_stderr
from ._tf import tf, tf_keras
from .model import CORE

__all__ = ["VARIANTS", "convert", "TFLiteModel"]

Variant = Literal["float32", "float16", "dynamic", "int8"]
VARIANTS: tuple[Variant, ...] = ("float32", "float16", "dynamic", "int8")


def _serving_function(core: tf_keras.Model) -> tf.types.experimental.ConcreteFunction:
    signature = {name: tf.TensorSpec([None, *inp.shape[1:]], inp.dtype, name=name)
                 for name, inp in zip(core.input_names, core.inputs)}

    @tf.function(input_signature=[signature])
    def serve(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"logit": core(inputs, training=False)}

    return serve.get_concrete_function()


def convert(model: tf_keras.Model, variant: Variant,
            representative: Callable[[], Iterator[dict[str, np.ndarray]]] | None = None) -> bytes:
    """The TFLite flatbuffer of ``model``'s core, builtin ops only.

    Args:
        representative: Batches of encoded train rows; ``int8`` calibrates on them.
    """
    core = model.get_layer(CORE)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_serving_function(core)], core)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        if representative is None:
            raise ValueError("A full int8 TFLite model needs representative rows to calibrate on.")
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings(), quiet_native_stderr():  # "tf.lite is moving to LiteRT" (DESIGN.md fact 9)
        warnings.simplefilter("ignore")
        return converter.convert()


class TFLiteModel:
    """A TFLite core loaded in the plain ``tf.lite.Interpreter``: encoded rows to logits."""

    def __init__(self, path: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "tf.lite is moving to LiteRT"
            self.interpreter = tf.lite.Interpreter(model_path=path)
        self.runner = self.interpreter.get_signature_runner()

    def logits(self, inputs: Mapping[str, np.ndarray], batch: int = 4096) -> np.ndarray:
        rows = len(next(iter(inputs.values())))
        with quiet_native_stderr():  # the XNNPACK delegate's note, at the first run
            out = [self.runner(**{k: v[i:i + batch] for k, v in inputs.items()})["logit"] for i in range(0, rows, batch)]
        return np.concatenate(out).astype(np.float64)

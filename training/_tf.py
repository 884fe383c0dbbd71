"""TensorFlow and tf_keras for this package, imported with their C++ start-up banner hidden.

Modules that need them import them from here, so the supervisor of a local cluster (which
needs neither) starts without loading TensorFlow.
"""

import logging

from . import quiet_native_stderr

with quiet_native_stderr():
    import tensorflow as tf
    import tf_keras

__all__ = ["quiet_python_warnings", "tf", "tf_keras"]


def quiet_python_warnings(caller: logging.Logger) -> None:
    """TensorFlow's Python warnings (retracing hints ...) are noise unless ``caller`` logs at INFO."""
    if not caller.isEnabledFor(logging.INFO):
        tf.get_logger().setLevel(logging.ERROR)

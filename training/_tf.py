"""TensorFlow and tf_keras for this package, imported with their C++ start-up banner hidden.

Modules that need them import them from here, so the supervisor of a local cluster (which
needs neither) starts without loading TensorFlow.
"""

from . import quiet_native_stderr

with quiet_native_stderr():
    import tensorflow as tf
    import tf_keras

__all__ = ["tf", "tf_keras"]

"""shardflow.training: ParameterServerStrategy jobs that read committed datasets' shards in
parallel and checkpoint to any URL. Uses :mod:`shardflow.storage`, never :mod:`shardflow.pipelines`."""

import os as _os


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow and tf_keras with the C++ start-up banner (oneDNN, CUDA probing) hidden:
    it is written to fd 2 before any log level applies. Python errors still propagate."""
    import sys

    if "tensorflow" in sys.modules:
        return
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = _os.dup(2)
    try:
        with open(_os.devnull, "wb") as devnull:
            _os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
            import tf_keras  # noqa: F401
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)


_import_tensorflow_quietly()

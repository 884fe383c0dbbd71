"""shardflow.training: ParameterServerStrategy jobs that read committed datasets' shards in
parallel and checkpoint to any URL. Uses :mod:`shardflow.storage`, never :mod:`shardflow.pipelines`."""

import contextlib as _contextlib
import os as _os
from collections.abc import Iterator as _Iterator


@_contextlib.contextmanager
def quiet_native_stderr() -> _Iterator[None]:
    """Hide what TensorFlow's C++ side writes to fd 2 at start-up (oneDNN notes, CUDA probing on
    machines without a GPU): it comes before any log level applies. Python errors still propagate."""
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = _os.dup(2)
    try:
        with open(_os.devnull, "wb") as devnull:
            _os.dup2(devnull.fileno(), 2)
            yield
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)


_LAZY = {"encode_rows": "encoding", "load_encoding": "encoding"}  # imported on first use: they load TensorFlow


def __getattr__(name: str) -> object:
    """``shardflow.training.encode_rows`` and friends, without importing TensorFlow for the
    modules that need none (a local cluster's supervisor)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

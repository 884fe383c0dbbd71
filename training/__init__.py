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

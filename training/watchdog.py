"""A coordinator whose cluster stops answering ends, rather than waiting forever.

TensorFlow's ClusterCoordinator retries a step whose worker *failed* (its connection broke) on
another worker. A worker that *hangs* (stopped by SIGSTOP, deadlocked, behind a partition that
leaves its TCP connection open) keeps its step forever, and every ``join()`` and ``fetch()``
waits with it: on this machine a local cluster whose worker 0 of 2 was stopped froze at its next
checkpoint for good, one thread blocked inside TensorFlow *holding the GIL*, so no Python thread
could even notice. So each call the training loop makes into the cluster (schedule, fetch, join, and
the reads of an evaluation or a checkpoint save) arms :func:`faulthandler.dump_traceback_later`, a timer in a C thread that needs no GIL: a call
blocked for ``seconds`` writes every thread's traceback to :func:`stall_path` and ends the
coordinator. The local cluster's supervisor finds that file (:func:`take_stall`) and restarts
every task from the last committed checkpoint, as for a lost ps; under an orchestrator
(Kubernetes, Vertex AI) the coordinator's restart policy does. Evaluations and the blocking part
of a checkpoint save (reading the variables) are timed too; the background upload is not: it
may be slow without anything being hung.
"""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any, TypeVar

__all__ = ["StallWatchdog", "stall_path", "take_stall"]

T = TypeVar("T")


def stall_path(run_dir: str) -> str:
    """Where a stalled coordinator leaves its threads' tracebacks."""
    return os.path.join(run_dir, "logs", "coordinator-stalled.txt")


def take_stall(run_dir: str, attempt: int) -> str | None:
    """If the coordinator of ``run_dir`` stalled: its tracebacks, kept as ``coordinator-stalled-<attempt>.txt``
    (returned), so a later attempt starts clean; else None."""
    path = stall_path(run_dir)
    try:
        if os.path.getsize(path) == 0:
            return None
    except FileNotFoundError:
        return None
    root, ext = os.path.splitext(path)
    kept = f"{root}-{attempt}{ext}"
    os.replace(path, kept)
    return kept


class StallWatchdog:
    """``with StallWatchdog(seconds, run_dir) as w: w.timed(call)(...)``; ``seconds=None`` disables it."""

    def __init__(self, seconds: float | None, run_dir: str) -> None:
        self.seconds = seconds
        self.path = stall_path(run_dir)
        self._file: IO[str] | None = None
        self._depth = 0  # timed calls in progress (the training loop's thread makes them)

    def timed(self, call: Callable[..., T]) -> Callable[..., T]:
        """``call``, the coordinator ended (exit code 1, tracebacks written) if it blocks ``seconds``."""
        def timed_call(*args: Any) -> T:
            if self._file is None or self._depth:  # off, or inside a timed call already (evaluate's fetch)
                return call(*args)
            faulthandler.dump_traceback_later(self.seconds, exit=True, file=self._file)
            self._depth += 1
            try:
                return call(*args)
            finally:
                self._depth -= 1
                faulthandler.cancel_dump_traceback_later()
        return timed_call

    def __enter__(self) -> StallWatchdog:
        if self.seconds:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._file = open(self.path, "w")  # empty until a stall: the supervisor looks for its content
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._file is not None:
            faulthandler.cancel_dump_traceback_later()
            self._file.close()
            self._file = None
            os.unlink(self.path)

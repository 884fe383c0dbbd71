"""A coordinator that stops making progress ends, rather than waiting forever.

TensorFlow's ClusterCoordinator retries a step whose worker *failed* (its connection broke) on
another worker. A worker that *hangs* (stopped by SIGSTOP, deadlocked, behind a partition that
leaves its TCP connection open) keeps its step forever, and every ``join()`` and ``fetch()``
waits with it: on this machine a local cluster whose worker 0 of 2 was stopped froze at its next
checkpoint for good. So the training loop beats this watchdog whenever it gets past a step,
an evaluation or a checkpoint; after ``seconds`` without a beat it logs one line and ends the
coordinator with :data:`EXIT_STALLED`. The local cluster's supervisor then restarts every task
from the last committed checkpoint (as for a lost ps); under an orchestrator (Kubernetes, Vertex
AI) the coordinator's restart policy does.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import TracebackType

__all__ = ["EXIT_STALLED", "StallWatchdog"]

log = logging.getLogger(__name__)

EXIT_STALLED = 76  # no progress for the configured time: restart from the last checkpoint


class StallWatchdog:
    """``with StallWatchdog(seconds) as watchdog: ... watchdog.beat() ...``; ``None`` disables it."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self._last = time.monotonic()

    def __enter__(self) -> StallWatchdog:
        if self.seconds:
            self.beat()
            self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        assert self.seconds
        while not self._stop.wait(min(self.seconds / 4, 5.0)):
            idle = time.monotonic() - self._last
            if idle >= self.seconds:
                log.error("training made no progress for %.0f s (stall_seconds): a worker or ps is hung (stopped, "
                          "deadlocked or unreachable); exiting so that the cluster restarts from the last checkpoint",
                          idle)
                sys.stderr.flush()
                os._exit(EXIT_STALLED)  # a hung step cannot be cancelled; threads blocked on it never return

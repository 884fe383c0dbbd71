"""Checkpoints that never block training for long and are never half visible.

``save`` starts TensorFlow's asynchronous checkpoint write to local disk and returns at once
(DESIGN.md fact 11). When the write completes, a callback hands the directory to one
background uploader thread, which publishes it through storage's :class:`CheckpointStore`
(files first, the commit record last) and then applies retention. Errors in that thread, and
a local write that failed, are raised in the training thread at the next ``save`` or at
``wait``/``close``.

Each committed checkpoint directory also holds a ``checkpoint`` state file, so anyone who
downloads it can call ``tf.train.load_checkpoint(directory)``.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shardflow.storage import Checkpoint, CheckpointStore, ChecksumMismatchError, ManifestError
from shardflow.storage.urls import join_url, redact_url

from ._tf import tf
from .state import PREFIX, read_into

__all__ = ["CheckpointWriter", "CheckpointStats", "restore", "restore_newest_intact"]

log = logging.getLogger(__name__)

@dataclass
class CheckpointStats:
    saves: int = 0
    blocked_seconds: float = 0.0  # training time spent inside save()
    last_committed: int | None = None


class CheckpointWriter:
    """Saves ``checkpoint`` asynchronously and commits it to ``store`` in the background."""

    def __init__(self, checkpoint: tf.train.Checkpoint, store: CheckpointStore, *, local_dir: str, keep: int,
                 keep_every_hours: float | None = None, protect: tuple[int, ...] = ()) -> None:
        """
        Args:
            protect: Steps that retention never removes (the checkpoint a warm start came from).
        """
        self.checkpoint = checkpoint
        self.store = store
        self.local_dir = local_dir
        self.keep = keep
        self.keep_every_hours = keep_every_hours
        self.protect = protect
        self.stats = CheckpointStats()
        self._queue: queue.Queue[tuple[int, str, dict[str, Any]] | None] = queue.Queue()
        self._error: BaseException | None = None
        # One options object for every save (a new callback each time would retrace TF's save
        # function); writes finish in the order they start, so the callback takes the oldest.
        self._writing: collections.deque[tuple[int, str, dict[str, Any]]] = collections.deque()
        self._options = tf.train.CheckpointOptions(
            experimental_enable_async_checkpoint=True,
            experimental_write_callbacks=[lambda: self._queue.put(self._writing.popleft())])
        self._thread = threading.Thread(target=self._upload_loop, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"Checkpoint upload to {redact_url(self.store.url)} failed: {error}") from error

    def save(self, step: int, metadata: Mapping[str, Any] | None = None) -> float:
        """Start saving the state at ``step``; returns the seconds training was blocked."""
        self._raise_pending()
        started = time.perf_counter()
        directory = os.path.join(self.local_dir, f"step-{step:012d}")
        if os.path.exists(directory):
            shutil.rmtree(directory)
        self._writing.append((step, directory, dict(metadata or {})))
        try:
            self.checkpoint.write(os.path.join(directory, PREFIX), options=self._options)
        except Exception as e:
            self._writing.pop()  # this write never started
            if not self._writing:
                raise
            raise self._lost_writes(e) from e  # an earlier write failed: TensorFlow raises its error here
        blocked = time.perf_counter() - started
        self.stats.saves += 1
        self.stats.blocked_seconds += blocked
        return blocked

    def _upload_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            step, directory, metadata = item
            try:
                with open(os.path.join(directory, "checkpoint"), "w") as f:  # for tf.train.load_checkpoint(dir)
                    f.write(f'model_checkpoint_path: "{PREFIX}"\nall_model_checkpoint_paths: "{PREFIX}"\n')
                self.store.publish(directory, step, metadata=metadata)
                self.stats.last_committed = step
                self.store.prune(keep_last=self.keep, keep_every_hours=self.keep_every_hours, protect=self.protect)
                shutil.rmtree(directory, ignore_errors=True)
                log.info("committed checkpoint at step %d to %s", step, redact_url(self.store.url))
            except BaseException as e:  # handed to the training thread by _raise_pending
                self._error = e
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        """Block until every checkpoint saved so far is committed (or raise its error)."""
        self.checkpoint.sync()
        # A write that failed never calls back, and TensorFlow keeps its error for the next
        # write: without this, the last checkpoint of a run could be lost without a word.
        lost = self._lost_writes(self._take_write_error()) if self._writing else None
        self._queue.join()
        self._raise_pending()
        if lost is not None:
            raise lost

    def _take_write_error(self) -> BaseException | None:
        """TensorFlow's stored write error, where this version keeps it (no public accessor);
        taken, so that TensorFlow does not raise it again at exit."""
        helper = getattr(self.checkpoint, "_async_checkpointer_impl", None)
        error = getattr(helper, "_async_error", None)
        if error is not None:
            helper._async_error = None
        return error

    def _lost_writes(self, cause: BaseException | None) -> RuntimeError:
        """The error for writes that will never call back; they are forgotten, so that a later
        write's callback cannot take their place."""
        lost, self._writing = list(self._writing), collections.deque()
        steps = ", ".join(str(step) for step, _, _ in lost)
        error = RuntimeError(f"Checkpoint at step {steps} was not committed: writing it to {lost[0][1]} "
                             f"failed{f': {cause}' if cause else ''}.")
        error.__cause__ = cause
        return error

    def close(self) -> None:
        """Finish pending uploads and stop the uploader."""
        try:
            self.wait()
        finally:
            self._queue.put(None)
            self._thread.join()


def restore(checkpoint: tf.train.Checkpoint, store: CheckpointStore, record: Checkpoint, *, local_dir: str,
            partial: bool = False) -> None:
    """Restore ``checkpoint`` from the committed checkpoint ``record`` of ``store`` (``partial``:
    ``checkpoint`` holds only some of what was saved, e.g. no input positions).

    The files are kept in ``local_dir`` (fetched there when the store is remote) for the
    rest of the run: variables created later (optimizer slots) restore from them then. Each is
    checked against its size and checksum in ``record`` before TensorFlow reads any.

    Raises:
        ChecksumMismatchError: a file differs from its record, naming it.
        FileNotFoundError: a file of the record is missing.
    """
    directory = store.download(record, os.path.join(local_dir, f"step-{record.step:012d}"), verify=True)
    where = f"The checkpoint at step {record.step} in {redact_url(store.url)}"
    try:
        read_into(checkpoint, directory, what=where, partial=partial)
    except ValueError as e:
        raise ValueError(f"{e} Train into a new checkpoint directory, or restore the model settings it was "
                         "written with.") from e


def restore_newest_intact(checkpoint: tf.train.Checkpoint, store: CheckpointStore, *, local_dir: str,
                          belongs: Callable[[Checkpoint], bool] = lambda record: True,
                          check: Callable[[Checkpoint], None] = lambda record: None) -> Checkpoint | None:
    """Restore the newest committed checkpoint of ``store`` whose files match their record.

    Every file is checked against the size and checksum in the record before anything is
    read (:func:`restore`). A corrupt checkpoint (a file truncated, changed or missing, or the
    record itself unreadable) is named in a warning and the one before it is tried; once one
    restores, the corrupt newer ones are set aside (:meth:`CheckpointStore.set_aside`), so that
    "latest" is the one restored and their steps can be saved again.

    Args:
        belongs: Whether a record is one to resume from; the search stops at the first that is
            not (another run's checkpoint: nothing is restored).
        check: Called with the record about to be restored; raises if it cannot be resumed.

    Returns:
        The record restored, or None when there is nothing to resume from.

    Raises:
        ChecksumMismatchError: every checkpoint there was to resume from is corrupt.
    """
    corrupt: list[tuple[int, str]] = []
    for step in reversed(store.steps()):
        try:
            record = store.get(step)
        except ManifestError as e:
            problem = str(e)
        else:
            if not belongs(record):
                break
            check(record)
            try:
                restore(checkpoint, store, record, local_dir=local_dir)
            except (ChecksumMismatchError, FileNotFoundError) as e:
                problem = str(e)
            else:
                for bad, _ in corrupt:
                    try:
                        moved = store.set_aside(bad)
                    except OSError as e:  # training can go on; the next resume checks it again
                        log.warning("could not set the corrupt checkpoint at step %d aside: %s", bad, e)
                    else:
                        log.warning("set the corrupt checkpoint at step %d aside: its record is now %s", bad,
                                    redact_url(moved))
                return record
        log.warning("The checkpoint at step %d in %s is corrupt, not restored: %s; trying the one before.",
                    step, redact_url(store.url), problem)
        corrupt.append((step, problem))
    if corrupt:
        steps = ", ".join(str(step) for step, _ in corrupt)
        which = f"the one at step {steps} is" if len(corrupt) == 1 else f"those at steps {steps} are"
        raise ChecksumMismatchError(
            f"{redact_url(store.url)}: no intact checkpoint to resume from: {which} corrupt "
            f"(step {corrupt[0][0]}: {corrupt[0][1]}); train into a "
            f"new checkpoint directory, or remove {redact_url(join_url(store.url, '_checkpoints'))}/c<step>.json "
            "to start this one over.")
    return None

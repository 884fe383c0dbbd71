"""Why a coordinator failed, handed to the supervisor that started it (no TensorFlow here).

A local cluster's coordinator is a process of its own: the supervisor only sees its exit code.
When training fails with an error meant for the user (a corrupt shard, a bad setting), the
coordinator writes that one line into the run directory, and the supervisor makes it the last
line the user reads, instead of "training failed (coordinator exit code 2)".
"""

from __future__ import annotations

import contextlib
import os

from shardflow.storage.urls import redact_text

__all__ = ["SUPERVISED_ENV", "failure_path", "record_failure", "supervised", "take_failure"]

SUPERVISED_ENV = "SHARDFLOW_SUPERVISED"  # set for a local cluster's coordinator: its supervisor shows failures


def supervised() -> bool:
    """True in a coordinator whose supervisor prints its failure (so the coordinator itself need not)."""
    return os.environ.get(SUPERVISED_ENV) == "1"


def failure_path(run_dir: str) -> str:
    """Where the coordinator of a run notes why it failed."""
    return os.path.join(run_dir, "logs", "coordinator-error.txt")


def record_failure(run_dir: str, message: str) -> None:
    """Note ``message`` (its first line, secrets blanked) as the reason this run's coordinator failed."""
    lines = str(message).strip().splitlines()
    path = failure_path(run_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(redact_text(lines[0] if lines else message) + "\n")
    os.replace(tmp, path)  # the supervisor reads the whole line or none


def take_failure(run_dir: str) -> str | None:
    """The reason the coordinator of a run noted, removed so a later attempt starts clean; None if none."""
    path = failure_path(run_dir)
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return text or None

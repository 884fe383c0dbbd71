"""Find the processes a test started, by a tag in their environment (children inherit it)."""

from __future__ import annotations

import contextlib
import os
import signal
import time


def tagged_processes(tag: str, *needles: bytes) -> list[int]:
    """Pids of processes whose environment holds ``SHARDFLOW_TEST_TAG=tag`` and whose command
    line or environment hold every needle (this process excluded)."""
    marker = f"SHARDFLOW_TEST_TAG={tag}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f, open(f"/proc/{pid}/environ", "rb") as e:
                text = f.read() + b"\0" + e.read()
        except OSError:
            continue
        if int(pid) != os.getpid() and marker in text.split(b"\0") and all(n in text for n in needles):
            found.append(int(pid))
    return found


def wait_until_gone(tag: str, seconds: float) -> list[int]:
    """Wait up to ``seconds`` for every process tagged ``tag`` to end; returns those left."""
    deadline = time.monotonic() + seconds
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_tagged(tag: str) -> None:
    """SIGKILL every process tagged ``tag`` (continued first: a stopped one, too)."""
    for pid in tagged_processes(tag):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)

"""Child processes that end when the process that started them dies, however it dies.

A launcher killed by SIGKILL, the OOM killer or a closed container runs no cleanup, and its
children (started in their own sessions, so a terminal's Ctrl-C reaches only the launcher)
would be re-parented to init and run on, holding ports and CPU. Two mechanisms stop that:

- on Linux the kernel sends the child ``SIGTERM`` when its parent dies (``PR_SET_PDEATHSIG``,
  set between fork and exec by :func:`death_signal`);
- everywhere, the child watches its parent's pid (:func:`exit_with_parent`, called by our own
  child entry points) and exits when it changes: the fallback where prctl does not exist.

Only the standard library here: ``storage``, ``pipelines`` and ``training`` may all use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping

__all__ = ["PARENT_ENV", "alive", "child_env", "death_signal", "exit_with_parent", "parent_env"]

PARENT_ENV = "SHARDFLOW_PARENT_PID"  # set for a child of ours: the pid it must outlive no longer
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_SECONDS = 1.0
_GRACE_SECONDS = 5.0  # after SIGTERM, before exiting regardless


def death_signal(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when this process dies (Linux).

    ``prctl`` is looked up here, in the parent, so the child between fork and exec only makes
    two system calls. If the parent died before ``prctl`` took effect, the child exits. The
    signal follows the *thread* that forked: start long-lived children from a thread that
    lives as long as they should (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_death_signal


@contextlib.contextmanager
def parent_env() -> Iterator[None]:
    """:data:`PARENT_ENV` names this process in ``os.environ`` for the block: for children that a
    library starts with this process's environment (Beam's SDK workers)."""
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) plus :data:`PARENT_ENV` naming this process."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def exit_with_parent() -> None:
    """In a child started with :func:`child_env`: exit as soon as that parent is gone.

    A daemon thread polls the parent pid once a second. The variable is removed so that this
    process's own children do not watch the wrong pid. A value naming a live process other than
    the parent was inherited from further up and is ignored; one naming a dead process means the
    parent died before this process got here.
    """
    value = os.environ.pop(PARENT_ENV, "")
    if not value.isdigit():
        return
    parent = int(value)
    if os.getppid() != parent:
        if not alive(parent):
            os._exit(1)  # it died before we got here
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_SECONDS)
        # As the kernel's parent-death signal would: SIGTERM first, so handlers can clean up (a
        # retrain releases its lease); whatever we write is committed or invisible if they cannot.
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(_GRACE_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped by its parent) is dead."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process
            return True
        return True

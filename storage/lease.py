"""A lease: one holder at a time for a job on a URL (one retrain per dataset), with no server
but the storage itself.

Leases are numbered records (``<url>/l00000001.json`` ...), each created exclusively: the
newest is the lease. Taking it means creating the next number, so of two processes racing
for it exactly one wins. The holder renews it (rewrites its own record with a later expiry)
while it works and deletes it when done; a lease not renewed before it expires (its holder
died) is taken over by creating the next number, at once when the holder ran on this machine
and its process is gone. Released records are kept, marked released, so numbers are never
reused. A holder that finds a newer record than its own has lost the lease and must stop
before it commits anything.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from .commit import temp_token
from .errors import ShardflowError
from .records import Record, RecordLog
from .urls import redact_url

__all__ = ["LEASE_DIR", "Lease", "LeaseHeldError", "LeaseLostError"]

LEASE_DIR = "_leases"  # where a job leases a dataset: <dataset>/_leases/ (gc leaves it alone)

log = logging.getLogger(__name__)


class LeaseHeldError(ShardflowError):
    """Another holder has the lease and it has not expired."""


class LeaseLostError(ShardflowError):
    """This holder's lease expired and was taken over."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _process_identity() -> dict[str, Any]:
    """Who holds a lease: this process, its pid namespace and the kernel boot it runs in (a pid
    means the same process only within both, on one host)."""
    def read(path: str, how: Any) -> Any:
        try:
            return how(path)
        except OSError:
            return None

    return {"host": socket.gethostname(), "pid": os.getpid(),
            "boot": read("/proc/sys/kernel/random/boot_id", lambda p: open(p).read().strip()),
            "pid_namespace": read("/proc/self/ns/pid", lambda p: os.stat(p).st_ino)}


class Lease:
    """Hold the lease at ``url`` for the ``with`` block, renewing it in a background thread."""

    def __init__(self, url: str, *, what: str, seconds: float, storage_options: Mapping[str, Any] | None = None) -> None:
        """
        Args:
            url: Where the lease records live (e.g. ``<dataset>/_leases``).
            what: What holds it, shown to whoever is refused (``"shardflow retrain"``).
            seconds: How long a lease lasts unless renewed (renewed every third of that).
        """
        self.log = RecordLog(url, "l", storage_options=storage_options)
        self.what = what
        self.seconds = seconds
        self.holder = f"{what} on {socket.gethostname()} (pid {os.getpid()}, {temp_token()[:6]})"
        self.record: Record | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _body(self) -> dict[str, Any]:
        now = _now()
        return {"holder": self.holder, **_process_identity(), "renewed_at": now.isoformat(),
                "expires_at": (now + _dt.timedelta(seconds=self.seconds)).isoformat()}

    @staticmethod
    def _free(data: Mapping[str, Any]) -> bool:
        """Released, expired, or held by a process of this machine (same kernel boot, same pid
        namespace) that is gone: killed, it never released, and waiting for the expiry would
        only delay the rerun."""
        if data.get("released_at") or _dt.datetime.fromisoformat(data["expires_at"]) <= _now():
            return True
        here = _process_identity()
        if any(data.get(key) != here[key] for key in ("host", "boot", "pid_namespace")) or data.get("pid") in (None, here["pid"]):
            return False
        try:
            os.kill(data["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        return False

    def acquire(self) -> Lease:
        """Take the lease if it is free (see :meth:`_free`).

        Raises:
            LeaseHeldError: another holder's lease is current; the message names it and its expiry.
        """
        current = self.log.latest()
        if current is not None and not self._free(current.data):
            raise LeaseHeldError(
                f"{redact_url(self.log.url)}: held by {current.data['holder']} until "
                f"{_dt.datetime.fromisoformat(current.data['expires_at']):%Y-%m-%d %H:%M:%S} UTC; another run is in "
                "progress (it is taken over if not renewed by then).")
        if current is not None and not current.data.get("released_at"):
            log.warning("taking over the lease of %s (it expired, or its process is gone)", current.data["holder"])
        try:
            self.record = self.log.append(self._body())
        except FileExistsError:
            raise LeaseHeldError(f"{redact_url(self.log.url)}: another process took the lease just now.") from None
        for older in self.log.list():  # numbers are never reused: the newest record is the lease
            if older.number < self.record.number:
                self.log.delete(older.number)
        return self

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost (call before committing anything)."""
        if self._error is not None:
            raise self._error
        latest = self.log.latest()
        if self.record is None or latest is None or latest.number != self.record.number or \
                latest.data.get("holder") != self.holder:
            raise LeaseLostError(f"{redact_url(self.log.url)}: this run's lease was taken over (it was not renewed "
                                 "in time); stopping before committing anything.")

    def renew(self) -> None:
        self.check()
        assert self.record is not None
        self.log.rewrite(self.record.number, self._body())

    def _renew_loop(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.seconds / 6 if time.monotonic() - renewed > self.seconds / 3 else self.seconds / 3):
            try:
                self.renew()
                renewed = time.monotonic()
            except LeaseLostError as e:  # handed to the job at its next check()
                self._error = e
                return
            except Exception as e:  # a storage hiccup: the record stays valid until it expires
                if time.monotonic() - renewed > self.seconds / 2:
                    self._error = LeaseLostError(f"renewing the lease failed for {self.seconds / 2:.0f} s: {e}")
                    return
                log.warning("renewing the lease failed (%s); trying again", e)

    def release(self) -> None:
        """Stop renewing; mark the record released (kept, so that its number is never reused)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.record is not None and self._error is None:
            latest = self.log.latest()
            if latest is not None and latest.number == self.record.number and latest.data.get("holder") == self.holder:
                self.log.rewrite(self.record.number, {**self._body(), "released_at": _now().isoformat()})
        self.record = None

    def __enter__(self) -> Lease:
        self.acquire()
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

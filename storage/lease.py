"""A lease: one holder at a time for a job on a URL (one retrain per dataset), with no server
but the storage itself.

Leases are numbered records (``<url>/l00000001.json`` ...), each created exclusively: the
newest is the lease. Taking it means creating the next number, so of two processes racing
for it exactly one wins. The holder renews it (rewrites its own record with a later expiry)
while it works and deletes it when done; a lease not renewed before it expires (its holder
died) is taken over by creating the next number, at once when the holder ran on this host
and its process is gone. A holder that finds a newer record than its own has lost the lease
and must stop before it commits anything.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from .commit import publish_bytes, temp_token
from .errors import ShardflowError
from .manifest import record_json
from .records import Record, RecordLog
from .urls import redact_url, translate_errors

__all__ = ["LEASE_DIR", "Lease", "LeaseHeldError", "LeaseLostError"]

LEASE_DIR = "_leases"  # where a job leases a dataset: <dataset>/_leases/ (gc leaves it alone)

log = logging.getLogger(__name__)


class LeaseHeldError(ShardflowError):
    """Another holder has the lease and it has not expired."""


class LeaseLostError(ShardflowError):
    """This holder's lease expired and was taken over."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


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
        return {"holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(), "renewed_at": now.isoformat(),
                "expires_at": (now + _dt.timedelta(seconds=self.seconds)).isoformat()}

    @staticmethod
    def _holder_gone(data: Mapping[str, Any]) -> bool:
        """The holder ran on this host and its process is gone (killed: it never released):
        no need to wait for the expiry. In a restarted container this process may have the
        dead holder's pid, which is then gone too."""
        if data.get("host") != socket.gethostname() or not isinstance(data.get("pid"), int):
            return False
        if data["pid"] == os.getpid():
            return True
        try:
            os.kill(data["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def acquire(self) -> Lease:
        """Take the lease, or take over an expired one.

        Raises:
            LeaseHeldError: another holder's lease is current; the message names it and its expiry.
        """
        current = self.log.latest()
        if current is not None:
            expires = _dt.datetime.fromisoformat(current.data["expires_at"])
            if expires > _now() and not self._holder_gone(current.data):
                raise LeaseHeldError(
                    f"{redact_url(self.log.url)}: held by {current.data['holder']} until {expires:%Y-%m-%d %H:%M:%S} "
                    "UTC; another run is in progress (it is taken over if not renewed by then).")
            log.warning("taking over the lease of %s (expiry %s; its process is gone or it expired)",
                        current.data["holder"], expires)
        try:
            self.record = self.log.append(self._body())
        except FileExistsError:
            raise LeaseHeldError(f"{redact_url(self.log.url)}: another process took the lease just now.") from None
        if current is not None:  # the expired one, and any older: the newest record is the lease
            for older in self.log.list()[:-1]:
                if older.number < self.record.number:
                    self._delete(older.number)
        return self

    def _delete(self, number: int) -> None:
        with translate_errors(self.log.url, self.log.storage_options):
            try:
                self.log.fs.rm_file(self.log._path(number))
            except FileNotFoundError:
                pass

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost (call before committing anything)."""
        if self._error is not None:
            raise self._error
        latest = self.log.latest()
        if self.record is None or latest is None or latest.number != self.record.number:
            raise LeaseLostError(f"{redact_url(self.log.url)}: this run's lease was taken over (it was not renewed "
                                 "in time); stopping before committing anything.")

    def renew(self) -> None:
        self.check()
        assert self.record is not None
        body = {"number": self.record.number, **self._body()}
        with translate_errors(self.log.url, self.log.storage_options):
            publish_bytes(self.log.fs, self.log._path(self.record.number), record_json(body).encode())

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except BaseException as e:  # handed to the job at its next check()
                self._error = e if isinstance(e, LeaseLostError) else LeaseLostError(f"renewing the lease failed: {e}")
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.record is not None and self._error is None:
            latest = self.log.latest()
            if latest is not None and latest.number == self.record.number:
                self._delete(self.record.number)
        self.record = None

    def __enter__(self) -> Lease:
        self.acquire()
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

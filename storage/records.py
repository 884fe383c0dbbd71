"""Numbered JSON records under a URL, each created exclusively: the newest is the current state
(a promotion pointer, a run history, a lease), and two writers racing for the same number
cannot both win. Promotion and run records are never rewritten; a lease's holder rewrites its
own record to renew it.

``<url>/<prefix>00000001.json``, ``<prefix>00000002.json`` ... (e.g. ``_promotions/p00000003.json``).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .commit import publish_bytes, temp_token
from .errors import ManifestError
from .manifest import record_json
from .urls import join_url, redact_url, resolve, translate_errors

__all__ = ["Record", "RecordLog"]


@dataclass(frozen=True)
class Record:
    number: int
    url: str
    data: dict[str, Any]


class RecordLog:
    """The records ``<prefix>NNNNNNNN.json`` in ``url``: list, newest, append."""

    def __init__(self, url: str, prefix: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        """
        Args:
            url: The directory holding the records (created on the first append).
            prefix: One letter or word naming the kind of record (``"p"`` for promotions).
        """
        self.url = url.rstrip("/")
        self.prefix = prefix
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = resolve(self.url, storage_options)
        self._name = re.compile(rf"^{re.escape(prefix)}(\d{{8}})\.json$")

    def _numbers(self) -> list[int]:
        with translate_errors(self.url, self.storage_options):
            self.fs.invalidate_cache(self.root)
            try:
                names = [posixpath.basename(p) for p in self.fs.ls(self.root, detail=False)]
            except FileNotFoundError:
                return []
        return sorted(int(m.group(1)) for n in names if (m := self._name.match(n)))

    def _path(self, number: int) -> str:
        return posixpath.join(self.root, f"{self.prefix}{number:08d}.json")

    def read(self, number: int) -> Record:
        url = join_url(self.url, f"{self.prefix}{number:08d}.json")
        with translate_errors(self.url, self.storage_options):
            text = self.fs.cat_file(self._path(number))
        try:
            return Record(number, url, json.loads(text))
        except ValueError as e:
            raise ManifestError(f"{redact_url(url)}: not a valid record: {e}") from None

    def _read_present(self, numbers: list[int]) -> list[Record]:
        found = []
        for number in numbers:
            try:
                found.append(self.read(number))
            except FileNotFoundError:  # deleted since it was listed (an old lease tidied away)
                continue
        return found

    def list(self) -> list[Record]:
        return self._read_present(self._numbers())

    def latest(self) -> Record | None:
        for _ in range(3):  # the newest may be deleted between listing and reading: list again
            numbers = self._numbers()
            if not numbers:
                return None
            found = self._read_present(numbers[-1:])
            if found:
                return found[0]
        return (self.list() or [None])[-1]

    def rewrite(self, number: int, data: Mapping[str, Any]) -> None:
        """Replace record ``number``'s content (readers see the old or the new one, whole)."""
        with translate_errors(self.url, self.storage_options):
            publish_bytes(self.fs, self._path(number), record_json({**data, "number": number}).encode())

    def delete(self, number: int) -> None:
        with translate_errors(self.url, self.storage_options):
            try:
                self.fs.rm_file(self._path(number))
            except FileNotFoundError:
                pass

    def append(self, data: Mapping[str, Any]) -> Record:
        """Create the next record exclusively (``number`` is added to ``data``).

        Raises:
            FileExistsError: another writer created that number first.
        """
        numbers = self._numbers()
        number = (numbers[-1] if numbers else 0) + 1
        body = {"number": number, **data, "writer_token": temp_token()}  # tells a lost reply from a rival
        with translate_errors(self.url, self.storage_options):
            try:
                publish_bytes(self.fs, self._path(number), record_json(body).encode(), exclusive=True)
            except FileExistsError:
                raise FileExistsError(f"{redact_url(self.url)}: another writer created record {number} meanwhile; "
                                      "this one was not written.") from None
        return Record(number, join_url(self.url, f"{self.prefix}{number:08d}.json"), body)

"""Checkpoints on any URL, committed the way datasets are: files first, record last.

A checkpoint is a directory of files (whatever the trainer wrote: TensorFlow's ``.index`` and
``.data-*`` files, a ``checkpoint`` state file, ...). Publishing one:

1. uploads every file under ``<dir>/ckpt-<step>-<token>/`` (a fresh token per attempt, so a
   retried or concurrent upload never overwrites another's files);
2. creates ``<dir>/_checkpoints/c<step>.json`` exclusively, listing the files with sizes and
   checksums. That create is the commit: a checkpoint without its record is invisible, so an
   upload cut short is never "latest".

Pruning removes the record first, then the files, so a reader never sees a record whose
files are half deleted. It also removes what uploads that died left: file directories no
record commits (and, on S3, their unfinished multipart uploads) at steps up to the newest
commit, which can never be committed any more. A committed checkpoint found corrupt (its
files no longer match the sizes and checksums of its record) is set aside: its record moves
to ``_checkpoints/corrupt/``, so it is no longer "latest" and its step can be saved again.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from .commit import checksum_file, checksum_stream, publish_bytes, require_exclusive_create, temp_token
from .errors import ChecksumMismatchError, ManifestError
from .gc import abort_stale_uploads
from .manifest import check_relative_path, record_json
from .urls import is_local, join_url, redact_url, resolve, translate_errors

__all__ = ["CORRUPT_DIR", "Checkpoint", "CheckpointStore", "RECORD_DIR"]

RECORD_DIR = "_checkpoints"
CORRUPT_DIR = f"{RECORD_DIR}/corrupt"  # records of checkpoints found corrupt, kept for people
_RECORD = re.compile(r"^c(\d{12})\.json$")
_FILES = re.compile(r"^ckpt-(\d{12})-[0-9a-f]{16}$")


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint: its step, its files (relative to ``directory``) and what the trainer noted."""

    step: int
    directory: str  # relative to the store's URL: "ckpt-<step>-<token>"
    files: tuple[dict[str, Any], ...]  # {"path", "bytes", "checksum"}
    created_at: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.files)

    @property
    def created(self) -> _dt.datetime:
        return _dt.datetime.fromisoformat(self.created_at)

    def to_json(self) -> str:
        return record_json({**asdict(self), "files": list(self.files)})

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str) -> Checkpoint:
        try:
            data = json.loads(text)
            checkpoint = cls(step=int(data["step"]), directory=str(data["directory"]),
                             files=tuple({"path": str(f["path"]), "bytes": int(f["bytes"]),
                                          "checksum": str(f["checksum"])} for f in data["files"]),
                             created_at=str(data["created_at"]), metadata=dict(data.get("metadata") or {}))
            _dt.datetime.fromisoformat(checkpoint.created_at)
        except (ValueError, KeyError, TypeError) as e:
            raise ManifestError(f"{where}: malformed checkpoint record: {type(e).__name__}: {e}") from e
        check_relative_path(checkpoint.directory, where=where)
        for f in checkpoint.files:
            check_relative_path(f["path"], where=where)
        return checkpoint


def _record_name(step: int) -> str:
    return f"{RECORD_DIR}/c{step:012d}.json"


class CheckpointStore:
    """Committed checkpoints under one URL (local directory, s3://, gs://, az://, memory://)."""

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = resolve(self.url, self.storage_options)

    def __repr__(self) -> str:
        return f"CheckpointStore({redact_url(self.url)!r})"

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # -- reading -------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Committed steps, ascending (listed fresh)."""
        records = self._path(RECORD_DIR)
        with translate_errors(self.url, self.storage_options):
            self.fs.invalidate_cache(records)
            try:
                names = self.fs.ls(records, detail=False)
            except FileNotFoundError:
                return []
        found = (_RECORD.match(posixpath.basename(n.rstrip("/"))) for n in names)
        return sorted(int(m.group(1)) for m in found if m)

    def get(self, step: int) -> Checkpoint:
        name = _record_name(step)
        with translate_errors(self.url, self.storage_options):
            try:
                text = self.fs.cat_file(self._path(name))
            except FileNotFoundError:
                raise FileNotFoundError(f"{redact_url(self.url)}: no committed checkpoint at step {step}.") from None
        checkpoint = Checkpoint.from_json(text, where=redact_url(join_url(self.url, name)))
        if checkpoint.step != step:
            raise ManifestError(f"{redact_url(join_url(self.url, name))}: names step {checkpoint.step}.")
        return checkpoint

    def list(self) -> list[Checkpoint]:
        return [self.get(step) for step in self.steps()]

    def latest(self) -> Checkpoint | None:
        steps = self.steps()
        return self.get(steps[-1]) if steps else None

    def find(self, step: int | None = None) -> Checkpoint:
        """The committed checkpoint at ``step`` (default: the latest).

        Raises:
            FileNotFoundError: nothing committed here, or not at ``step`` (naming what there is).
        """
        steps = self.steps()
        if not steps:
            uncommitted = self.uncommitted()
            extra = f" ({len(uncommitted)} uncommitted upload(s): steps {sorted(uncommitted)})" if uncommitted else ""
            raise FileNotFoundError(f"{redact_url(self.url)}: no committed checkpoints{extra}.")
        if step is None:
            return self.get(steps[-1])
        if step not in steps:
            state = "uncommitted (its upload never finished)" if step in self.uncommitted() else "not there"
            raise FileNotFoundError(f"{redact_url(self.url)}: the checkpoint at step {step} is {state}; committed "
                                    f"steps: {', '.join(map(str, steps))}.")
        return self.get(step)

    def url_of(self, checkpoint: Checkpoint) -> str:
        return join_url(self.url, checkpoint.directory)

    def _file_dirs(self) -> dict[str, int]:
        """Every checkpoint file directory under the store (listed fresh), with its step."""
        with translate_errors(self.url, self.storage_options):
            self.fs.invalidate_cache(self.root)
            try:
                names = self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                return {}
        found = {}
        for name in names:
            base = posixpath.basename(name.rstrip("/"))
            if match := _FILES.match(base):
                found[base] = int(match.group(1))
        return found

    def uncommitted(self, committed: Sequence[Checkpoint] | None = None) -> dict[int, list[str]]:
        """Checkpoint file directories that no record commits (uploads cut short, or in
        progress), by step: never "latest", never restored from.

        Args:
            committed: The committed checkpoints, when the caller has listed them already.
        """
        referenced = {c.directory for c in (self.list() if committed is None else committed)}
        found: dict[int, list[str]] = {}
        for directory, step in self._file_dirs().items():
            if directory not in referenced:
                found.setdefault(step, []).append(directory)
        return found

    def directory_bytes(self, directory: str) -> int:
        """Bytes under one of the store's directories (e.g. an uncommitted upload)."""
        with translate_errors(join_url(self.url, directory), self.storage_options):
            return int(self.fs.du(self._path(directory)))

    def download(self, checkpoint: Checkpoint, local_dir: str, *, verify: bool = False,
                 on_bytes: Callable[[int], None] | None = None) -> str:
        """The local directory holding a checkpoint's files: its own directory when the store is
        local (checked in place if ``verify``), else ``local_dir`` with the files fetched there
        (always checked).

        Raises:
            ChecksumMismatchError: a file's bytes differ from its record, naming the file.
        """
        if is_local(self.fs):
            if verify:
                self.verify(checkpoint, on_bytes=on_bytes)
            return self._path(checkpoint.directory)
        return self.copy(checkpoint, local_dir, on_bytes=on_bytes)

    def copy(self, checkpoint: Checkpoint, local_dir: str, *, files: Sequence[str] | None = None,
             on_bytes: Callable[[int], None] | None = None) -> str:
        """Fetch a checkpoint's files (or only ``files``, relative paths) into ``local_dir``,
        each verified against its size and checksum. Returns ``local_dir``."""
        entries = self._entries(checkpoint, files)
        os.makedirs(local_dir, exist_ok=True)

        def fetch(entry: dict[str, Any]) -> None:
            dest = os.path.join(local_dir, *entry["path"].split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with translate_errors(join_url(self.url, checkpoint.directory, entry["path"]), self.storage_options):
                self.fs.get_file(self._path(checkpoint.directory, entry["path"]), dest)
            self._compare(checkpoint, entry, *checksum_file(dest))
            if on_bytes:
                on_bytes(int(entry["bytes"]))

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(fetch, entries))
        return local_dir

    def verify(self, checkpoint: Checkpoint, *, on_bytes: Callable[[int], None] | None = None) -> None:
        """Read every file of a checkpoint where it is and check its size and checksum."""
        def check(entry: dict[str, Any]) -> None:
            with translate_errors(join_url(self.url, checkpoint.directory, entry["path"]), self.storage_options):
                with self.fs.open(self._path(checkpoint.directory, entry["path"]), "rb") as f:
                    checksum, size = checksum_stream(f.read)
            self._compare(checkpoint, entry, checksum, size)
            if on_bytes:
                on_bytes(int(entry["bytes"]))

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(check, checkpoint.files))

    def _entries(self, checkpoint: Checkpoint, files: Sequence[str] | None) -> list[dict[str, Any]]:
        if files is None:
            return list(checkpoint.files)
        by_path = {f["path"]: f for f in checkpoint.files}
        missing = [p for p in files if p not in by_path]
        if missing:
            raise FileNotFoundError(f"{redact_url(join_url(self.url, checkpoint.directory))}: the checkpoint at step "
                                    f"{checkpoint.step} has no file {missing[0]!r}.")
        return [by_path[p] for p in files]

    def _compare(self, checkpoint: Checkpoint, entry: dict[str, Any], checksum: str, size: int) -> None:
        if (checksum, size) != (entry["checksum"], entry["bytes"]):
            url = redact_url(join_url(self.url, checkpoint.directory, entry["path"]))
            raise ChecksumMismatchError(f"{url}: {size} bytes with {checksum}; its record says "
                                        f"{entry['bytes']} bytes with {entry['checksum']}.")

    # -- writing -------------------------------------------------------------------------------
    def publish(self, local_dir: str, step: int, *, metadata: Mapping[str, Any] | None = None,
                on_bytes: Callable[[int], None] | None = None) -> Checkpoint:
        """Upload every file under ``local_dir`` and commit them as the checkpoint of ``step``.

        Checksums are computed while the upload runs (the two overlap), from the local files.

        Raises:
            FileExistsError: a checkpoint of ``step`` is already committed.
        """
        require_exclusive_create(self.fs, redact_url(self.url))  # before uploading, not at the record
        directory = f"ckpt-{step:012d}-{temp_token()}"
        relative = sorted(os.path.relpath(os.path.join(d, f), local_dir).replace(os.sep, "/")
                          for d, _, files in os.walk(local_dir) for f in files)
        lock = threading.Lock()

        def checksum(path: str) -> tuple[str, int]:
            with open(os.path.join(local_dir, *path.split("/")), "rb") as f:
                return checksum_stream(f.read)

        def upload(path: str) -> None:
            source = os.path.join(local_dir, *path.split("/"))
            dest = self._path(directory, path)
            with translate_errors(join_url(self.url, directory, path), self.storage_options):
                if is_local(self.fs):
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                self.fs.put_file(source, dest)
            if on_bytes:
                with lock:
                    on_bytes(os.path.getsize(source))

        with ThreadPoolExecutor(4) as pool:
            sums = [pool.submit(checksum, p) for p in relative]
            for done in [pool.submit(upload, p) for p in relative]:
                done.result()
            files = tuple({"path": p, "bytes": s.result()[1], "checksum": s.result()[0]} for p, s in zip(relative, sums))
        checkpoint = Checkpoint(step=step, directory=directory, files=files,
                                created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                                metadata=dict(metadata or {}))
        with translate_errors(self.url, self.storage_options):
            try:
                publish_bytes(self.fs, self._path(_record_name(step)), checkpoint.to_json().encode(), exclusive=True)
            except FileExistsError:
                raise FileExistsError(f"{redact_url(self.url)}: a checkpoint of step {step} is already committed "
                                      f"({_record_name(step)}), by another writer; this one was not.") from None
        return checkpoint

    def prune(self, *, keep_last: int, keep_every_hours: float | None = None,
              protect: Sequence[int] = ()) -> list[Checkpoint]:
        """Remove committed checkpoints beyond the last ``keep_last`` (plus one every
        ``keep_every_hours`` of creation time, if set, and the steps in ``protect``: a promoted
        model's), and uncommitted file directories (and unfinished multipart uploads) at steps up
        to the latest commit: uploads that died, which no record can commit any more (the record
        of a step is created once). Returns the checkpoints removed."""
        checkpoints = self.list()
        keep = {c.step for c in checkpoints[-keep_last:]} if keep_last > 0 else set()
        keep |= set(protect)
        if keep_every_hours:
            last_kept: _dt.datetime | None = None
            for c in checkpoints:
                if last_kept is None or (c.created - last_kept).total_seconds() >= keep_every_hours * 3600:
                    keep.add(c.step)
                    last_kept = c.created
        removed = [c for c in checkpoints if c.step not in keep]
        with translate_errors(self.url, self.storage_options):
            for c in removed:  # the record first: from then on nobody reads these files
                self.fs.rm_file(self._path(_record_name(c.step)))
                self._remove_dir(c.directory)
            if checkpoints:
                referenced = {c.directory for c in checkpoints if c.step in keep}
                newest = checkpoints[-1].step
                for directory, step in self._file_dirs().items():
                    if directory not in referenced and step <= newest:
                        self._remove_dir(directory)
                self._abort_leftover_uploads(referenced, newest)
        return removed

    def set_aside(self, step: int) -> str:
        """Uncommit the checkpoint of ``step`` (found corrupt): its record moves to
        ``_checkpoints/corrupt/``, its files become leftovers for :meth:`prune`.

        Returns:
            The URL the record now has.
        """
        source = self._path(_record_name(step))
        kept = f"{CORRUPT_DIR}/c{step:012d}-{temp_token()}.json"
        with translate_errors(join_url(self.url, _record_name(step)), self.storage_options):
            publish_bytes(self.fs, self._path(kept), self.fs.cat_file(source))  # the copy first: nothing is lost
            self.fs.rm_file(source)
        return join_url(self.url, kept)

    def _abort_leftover_uploads(self, referenced: set[str], newest: int) -> None:
        """Abort the unfinished multipart uploads (S3) into uncommitted file directories at steps
        up to ``newest``: a writer killed mid-upload leaves them, invisible but stored."""
        pending = {key.split("/", 1)[0] for key in abort_stale_uploads(self.fs, self.root, older_than=0, dry_run=True)}
        for directory in sorted(pending - referenced):
            match = _FILES.match(directory)
            if match and int(match.group(1)) <= newest:
                abort_stale_uploads(self.fs, self._path(directory), older_than=0)

    def _remove_dir(self, directory: str) -> None:
        path = self._path(directory)
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

"""The commit protocol's primitives: checksums, publishing a finished file, and a local
directory that appears whole or not at all.

A file is always finished (written, checksummed) under a temporary local name first,
then published to its final name in one step that readers never see half done:
``os.replace`` on local disk, a single PUT (or multipart upload, which becomes visible
only when complete) on object stores, so no rename is needed there. Final shard names are
derived from content, so publishing the same bytes twice is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

from .urls import is_local

__all__ = ["CHECKSUM_ALGORITHM", "checksum_file", "checksum_stream", "publish_file", "publish_bytes",
           "require_exclusive_create", "require_new_dir", "staged_dir", "temp_token"]

CHECKSUM_ALGORITHM = "sha256"
_MEMORY_LOCK = threading.Lock()
_BLOCK = 4 << 20

# Where two writers racing to create one name were seen to get exactly one winner
# (tests/test_exclusive_create.py): link(2) on local disk, memory://, s3fs (If-None-Match: *,
# on moto), gcsfs (ifGenerationMatch=0, on fake-gcs-server), adlfs (If-None-Match: *, on Azurite).
_EXCLUSIVE_PROTOCOLS = frozenset({"file", "local", "memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def temp_token() -> str:
    """A unique token for temporary names."""
    return uuid.uuid4().hex[:16]


def checksum_stream(read: Callable[[int], bytes], on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Hash a stream read in blocks; returns ``("sha256:<hex>", size)``."""
    digest = hashlib.new(CHECKSUM_ALGORITHM)
    size = 0
    while block := read(_BLOCK):
        digest.update(block)
        size += len(block)
        if on_bytes:
            on_bytes(len(block))
    return f"{CHECKSUM_ALGORITHM}:{digest.hexdigest()}", size


def checksum_file(local_path: str) -> tuple[str, int]:
    """Checksum and size of a local file."""
    with open(local_path, "rb") as f:
        return checksum_stream(f.read)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def require_exclusive_create(fs: fsspec.AbstractFileSystem, where: str) -> None:
    """Refuse a filesystem not known to create a file exclusively: a commit there could race.

    Args:
        fs: The filesystem to commit to.
        where: What to name in the error (a redacted URL or path).

    Raises:
        ValueError: ``fs`` is none of local disk, ``memory://``, ``s3://``, ``gs://``, ``az://``.
    """
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & _EXCLUSIVE_PROTOCOLS:
        raise ValueError(
            f"{where}: {type(fs).__name__} ({sorted(protocols)[0]}://) is not known to create files exclusively, so a "
            "commit there could race another writer's; use a local path, memory://, s3://, gs:// or az://.")


def publish_file(fs: fsspec.AbstractFileSystem, local_path: str, dest: str) -> None:
    """Move a finished local file to ``dest`` in one step that readers never see half done.

    Args:
        fs: Destination filesystem.
        local_path: The finished file on local disk; gone afterwards.
        dest: Final path in ``fs``.
    """
    if is_local(fs):
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        with open(local_path, "rb+") as f:
            os.fsync(f.fileno())
        try:
            os.replace(local_path, dest)
        except OSError:  # another device: copy to a temporary name beside dest, then rename
            tmp = os.path.join(parent, f".tmp-{temp_token()}-{os.path.basename(dest)}")
            shutil.copyfile(local_path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            os.unlink(local_path)
        _fsync_dir(parent)
    else:  # no makedirs: object stores have no directories, and s3fs would create a missing bucket
        try:
            fs.put_file(local_path, dest)
        except FileNotFoundError:
            # A multipart upload whose completion reply was lost: the client's retry finds the upload
            # gone (NoSuchUpload). Final names derive from content, so an object of this size is ours.
            fs.invalidate_cache(dest)
            if not fs.exists(dest) or fs.size(dest) != os.path.getsize(local_path):
                raise
        os.unlink(local_path)


def publish_bytes(fs: fsspec.AbstractFileSystem, dest: str, data: bytes, *, exclusive: bool = False) -> None:
    """Write a small file (a manifest) so readers see the old or the new content, never a mix.

    Args:
        exclusive: Fail with ``FileExistsError`` if ``dest`` exists, atomically: ``link(2)``
            on local disk, a conditional PUT (``If-None-Match: *``) on S3, GCS and Azure.
            A conditional PUT whose reply was lost is retried by the client and then finds
            its own object: ``dest`` holding exactly ``data`` counts as this call's own earlier
            success, so whatever is created exclusively carries a token of its writer.

    Raises:
        ValueError: ``exclusive`` on a filesystem not known to honour it (:func:`require_exclusive_create`).
    """
    if exclusive:
        require_exclusive_create(fs, dest)
    if is_local(fs):
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".tmp-{temp_token()}-{os.path.basename(dest)}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            if exclusive:
                os.link(tmp, dest)
            else:
                os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _fsync_dir(parent)
    else:
        # memory:// checks for the file on open and stores it on close: threads could both "create" it
        serial = _MEMORY_LOCK if isinstance(fs, MemoryFileSystem) else contextlib.nullcontext()
        try:
            with serial:
                fs.pipe_file(dest, data, mode="create" if exclusive else "overwrite")
        except FileExistsError:
            if not (exclusive and _holds(fs, dest, data)):
                raise


def _holds(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """True when ``path`` exists with exactly ``data`` (read fresh, not from a listing cache)."""
    fs.invalidate_cache(path)
    try:
        return fs.cat_file(path) == data
    except FileNotFoundError:
        return False


def require_new_dir(path: str) -> None:
    """Refuse a local ``path`` that exists and is not an empty directory."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{path}: already exists and is not an empty directory; choose a new one.")


@contextlib.contextmanager
def staged_dir(target: str, *, replace: bool = False) -> Iterator[str]:
    """A fresh directory beside local ``target`` to fill; when the block ends without error it
    is renamed to ``target`` in one step, otherwise removed. ``target`` must then still be new
    (or an empty directory) unless ``replace``, which swaps out what is there.
    """
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staged = os.path.join(parent, f".tmp-{temp_token()}")  # beside it: the rename stays on one filesystem
    os.makedirs(staged)
    try:
        yield staged
        if os.path.isdir(target) and not os.listdir(target):
            os.rmdir(target)
        elif os.path.exists(target):
            if not replace:
                raise FileExistsError(f"{target}: appeared while this was being written; nothing was written there.")
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)

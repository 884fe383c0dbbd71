"""A local shard cache ("SSD cache") for remote datasets.

TensorFlow cannot read ``s3://`` or ``az://`` itself, so training reads remote shards
through this cache: shards are fetched on demand or ahead of use, verified against the
manifest checksum on arrival, and the least recently used are evicted above a size
limit. Several processes on one machine can share one cache directory: per-entry file
locks (``flock``) make one process download while others wait, and a shard in use
(pinned) is never evicted.

Layout under the cache directory: ``data/<sha256><suffix>`` entries (named by content,
so equal shards of different datasets share an entry), ``locks/`` and ``tmp/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .commit import checksum_stream, temp_token
from .dataset import Dataset
from .errors import ChecksumMismatchError
from .manifest import Shard
from .tfrecord import first_corrupt_record
from .urls import redact_url

__all__ = ["ShardCache", "CacheStats"]

log = logging.getLogger(__name__)
_BLOCK = 8 << 20


@dataclass
class CacheStats:
    """Counters for this process's use of the cache."""

    hits: int = 0  # fetches served from the cache
    downloads: int = 0
    bytes_downloaded: int = 0
    evictions: int = 0


def _suffix(shard: Shard) -> str:
    name = os.path.basename(shard.path)
    return name[name.index("."):] if "." in name else ""


def _what(shard: Shard, path: str) -> str:
    """What is wrong with the bytes of ``shard`` fetched to ``path``: where its first bad record
    begins, for TFRecord (its records carry CRCs; other formats name no place)."""
    offset = first_corrupt_record(path) if shard.format == "tfrecord" else None
    if offset is None:
        return "corrupt shard, the bytes fetched do not match the manifest"
    return f"corrupt record at byte {offset} of the bytes fetched"


def _short(problem: str, shard: Shard, size: int) -> str:
    if size < shard.bytes:
        return f"truncated at byte {size}, the manifest says {shard.bytes} bytes"
    return problem if size != shard.bytes else "its checksum differs from the manifest's"


class ShardCache:
    """Fetch, verify, keep and evict remote shards in a local directory.

    Example:
        >>> cache = ShardCache("/mnt/ssd/shardflow-cache", max_bytes=50 << 30)  # doctest: +SKIP
        >>> for path in cache.iter_local(dataset, dataset.shards("train"), ahead=4):
        ...     read(path)  # the file stays until the next iteration
    """

    def __init__(self, directory: str, *, max_bytes: int, workers: int = 4) -> None:
        """
        Args:
            directory: Local cache directory (created if missing); may be shared by processes.
            max_bytes: Evict least recently used shards when the cache holds more than this.
            workers: Threads downloading ahead of use.
        """
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"Invalid value for `max_bytes`: {max_bytes!r}. Expected a positive integer.")
        if workers < 1:
            raise ValueError(f"Invalid value for `workers`: {workers!r}. Expected a positive integer.")
        self.directory = os.path.abspath(directory)
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._stats_lock = threading.Lock()  # fetches run on pool threads
        for sub in ("data", "locks", "tmp"):
            os.makedirs(os.path.join(self.directory, sub), exist_ok=True)
        self._remove_stale_downloads()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard-cache")

    def close(self) -> None:
        """Stop background downloads (waits for those running)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ShardCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entries -------------------------------------------------------------------------

    def _key(self, shard: Shard) -> str:
        algorithm, _, digest = shard.checksum.partition(":")
        if algorithm != "sha256" or not digest.isalnum():
            raise ValueError(f"Shard {shard.path!r} has checksum {shard.checksum!r}; the cache needs sha256.")
        return digest

    def entry_path(self, shard: Shard) -> str:
        """Where ``shard`` lives in the cache once fetched."""
        return os.path.join(self.directory, "data", self._key(shard) + _suffix(shard))

    @contextlib.contextmanager
    def _lock(self, key: str, mode: int) -> Iterator[int]:
        fd = os.open(os.path.join(self.directory, "locks", key + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def usage(self) -> int:
        """Bytes held in cache entries."""
        with os.scandir(os.path.join(self.directory, "data")) as it:
            return sum(e.stat().st_size for e in it if e.is_file())

    # -- fetching ------------------------------------------------------------------------

    def _remove_stale_downloads(self) -> None:
        """Delete partial downloads of processes that died.

        A download runs under its entry's exclusive lock, so a temporary file whose entry
        lock can be taken belongs to nobody.
        """
        tmp_dir = os.path.join(self.directory, "tmp")
        for name in os.listdir(tmp_dir):
            key = name.split(".", 1)[0]
            try:
                with self._lock(key, fcntl.LOCK_EX | fcntl.LOCK_NB):
                    os.unlink(os.path.join(tmp_dir, name))
            except (BlockingIOError, FileNotFoundError):
                pass  # being downloaded now, or already gone

    def _download(self, dataset: Dataset, shard: Shard, final: str) -> None:
        """Fetch into ``tmp/<key>.<token>``; the caller holds the entry's exclusive lock."""
        tmp = os.path.join(self.directory, "tmp", f"{self._key(shard)}.{temp_token()}{_suffix(shard)}")
        try:
            with dataset.open_shard(shard, block_size=_BLOCK) as src, open(tmp, "wb") as dst:
                def read(n: int) -> bytes:
                    block = src.read(n)
                    dst.write(block)
                    return block

                checksum, size = checksum_stream(read)
            problem = shard.mismatch(checksum, size)
            if problem:
                raise ChecksumMismatchError(f"{redact_url(dataset.shard_url(shard))}: {_what(shard, tmp)} "
                                            f"({_short(problem, shard, size)}); run `shardflow data verify "
                                            f"{redact_url(dataset.url)}` to check every shard")
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        with self._stats_lock:
            self.stats.downloads += 1
            self.stats.bytes_downloaded += size

    def _ensure(self, dataset: Dataset, shard: Shard) -> str:
        """Make the entry present; the caller holds its exclusive lock."""
        final = self.entry_path(shard)
        try:
            present = os.path.getsize(final) == shard.bytes
        except FileNotFoundError:
            present = False
        if present:
            with self._stats_lock:
                self.stats.hits += 1
        else:
            self._download(dataset, shard, final)
            self.evict()  # our own entry is locked, so it is safe from this
        os.utime(final)  # recency for LRU
        return final

    def fetch(self, dataset: Dataset, shard: Shard) -> str:
        """Return a local path holding ``shard``, downloading and verifying it if needed.

        The file may be evicted later; use :meth:`pinned` while reading it.

        Raises:
            ChecksumMismatchError: the fetched bytes do not match the manifest (nothing is cached).
        """
        with self._lock(self._key(shard), fcntl.LOCK_EX):
            return self._ensure(dataset, shard)

    @contextlib.contextmanager
    def pinned(self, dataset: Dataset, shard: Shard) -> Iterator[str]:
        """Fetch ``shard`` and keep it from eviction until the block ends."""
        key = self._key(shard)
        final = self.entry_path(shard)
        while True:
            with self._lock(key, fcntl.LOCK_SH):
                if os.path.exists(final):
                    os.utime(final)
                    yield final
                    return
            self.fetch(dataset, shard)  # then take the shared lock again: it may be evicted in between

    def iter_local(self, dataset: Dataset, shards: Iterable[Shard], *, ahead: int = 2) -> Iterator[str]:
        """Yield local paths of ``shards`` in order, fetching ``ahead`` shards in the background.

        Each yielded file stays pinned until the next one is requested.
        """
        order = list(shards)
        futures: dict[int, Future[str]] = {}
        try:
            for i, shard in enumerate(order):
                for j in range(i, min(len(order), i + ahead + 1)):
                    if j not in futures:
                        futures[j] = self._pool.submit(self.fetch, dataset, order[j])
                futures.pop(i).result()  # surfaces download errors here, in the caller
                with self.pinned(dataset, shard) as path:
                    yield path
        finally:
            for future in futures.values():
                future.cancel()

    # -- eviction ------------------------------------------------------------------------

    def evict(self) -> list[str]:
        """Delete least recently used, unpinned entries until usage is within ``max_bytes``."""
        removed: list[str] = []
        lock_path = os.path.join(self.directory, "locks", ".evict.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data_dir = os.path.join(self.directory, "data")
            with os.scandir(data_dir) as it:
                entries = sorted(((e.stat().st_mtime, e.stat().st_size, e.name) for e in it if e.is_file()))
            total = sum(size for _, size, _ in entries)
            for _, size, name in entries:
                if total <= self.max_bytes:
                    break
                key = name.split(".", 1)[0]
                entry_fd = os.open(os.path.join(self.directory, "locks", key + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(entry_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # pinned or being fetched
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(data_dir, name))
                        total -= size
                        removed.append(name)
                finally:
                    os.close(entry_fd)
            if total > self.max_bytes:
                log.warning("shard cache %s holds %d bytes, over its %d limit: the rest is in use",
                            self.directory, total, self.max_bytes)
        finally:
            os.close(fd)
        with self._stats_lock:
            self.stats.evictions += len(removed)
        return removed



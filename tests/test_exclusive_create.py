"""Exclusive creation raced for real on every backend: the commit of a manifest version, a
checkpoint record, a lease rests on it, so two creators of one name must never both win."""

from __future__ import annotations

import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest

from shardflow.storage import DatasetWriter, resolve
from shardflow.storage.commit import publish_bytes

from .conftest import Location

TRIALS = 20


def _race(fs, path: str, writers: int = 2) -> list[BaseException | None]:
    """``writers`` threads released together by a barrier, each creating ``path`` exclusively."""
    barrier = threading.Barrier(writers)

    def create(i: int) -> None:
        barrier.wait(timeout=30)
        publish_bytes(fs, path, f"writer {i}".encode(), exclusive=True)

    with ThreadPoolExecutor(writers) as pool:
        futures = [pool.submit(create, i) for i in range(writers)]
    return [f.exception() for f in futures]


def test_racing_exclusive_creates_have_exactly_one_winner(location: Location) -> None:
    fs, root = resolve(location.url, location.storage_options)
    for trial in range(TRIALS):
        path = posixpath.join(root, f"_manifests/v{trial + 1:08d}.json")
        outcomes = _race(fs, path)
        winners = [i for i, error in enumerate(outcomes) if error is None]
        assert len(winners) == 1, f"trial {trial}: {outcomes}"
        losers = [error for error in outcomes if error is not None]
        assert all(isinstance(error, FileExistsError) for error in losers), f"trial {trial}: {losers}"
        fs.invalidate_cache()
        assert fs.cat_file(path) == f"writer {winners[0]}".encode()  # the winner's bytes, not overwritten


def test_an_exclusive_create_over_an_existing_object_fails_and_keeps_it(location: Location) -> None:
    fs, root = resolve(location.url, location.storage_options)
    path = posixpath.join(root, "_leases/l00000001.json")
    publish_bytes(fs, path, b"already here")  # a plain, non-exclusive write made it
    with pytest.raises(FileExistsError):
        publish_bytes(fs, path, b"newcomer", exclusive=True)
    fs.invalidate_cache()
    assert fs.cat_file(path) == b"already here"


def test_a_filesystem_not_known_to_create_exclusively_is_refused_before_any_write() -> None:
    url = "simplecache::memory://shardflow-tests/through-a-cache"  # its "create" mode overwrites silently
    with pytest.raises(ValueError, match="SimpleCacheFileSystem .* not known to create files exclusively"):
        DatasetWriter(url, name="test")
    fs, path = fsspec.core.url_to_fs(url)
    with pytest.raises(ValueError, match="could race another writer"):
        publish_bytes(fs, f"{path}/_leases/l00000001.json", b"{}", exclusive=True)
    assert not fsspec.filesystem("memory").exists(path)  # refused before anything was written

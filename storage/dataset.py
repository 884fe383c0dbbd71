"""Datasets that are either whole or invisible.

Writing: shards are finished locally under temporary names, published under
content-derived final names (``part-<split>-<sha256 prefix>.<ext>``), checked to be in
place, and only then is a new manifest version created, exclusively, last. Readers open
the latest version in ``_manifests/`` and see exactly the shards it lists: an interrupted
write leaves the previous version readable and its own files unreferenced (``gc``
removes them). Rewriting identical content is a no-op; appending commits a new version
that lists the old shards plus the new ones.

Two writers racing for the same version cannot both win: the loser's exclusive create
fails and it raises ``FileExistsError`` having committed nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import pyarrow as pa

from .commit import checksum_file, checksum_stream, publish_bytes, publish_file, require_exclusive_create, temp_token
from .errors import ChecksumMismatchError, ManifestError
from .manifest import HISTORY_DIR, MANIFEST_NAME, Manifest, Shard, check_relative_path, history_name, parse_history_name
from .schema import feature_spec_from_schema, schema_from_json, schema_to_json
from .urls import is_local, join_url, redact_url, resolve, scrub, translate_errors

__all__ = [
    "Dataset",
    "DatasetWriter",
    "ShardProblem",
    "open_dataset",
    "publish_shard",
    "read_version",
    "STAGING_DIR",
]

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"
SHARD_PREFIX = "part-"
_FORMAT_SUFFIX = {"parquet": ".parquet", "tfrecord": ".tfrecord", "tfrecord.gz": ".tfrecord.gz"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shardflow")
    except PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _partition_dir(partition: Mapping[str, str]) -> str:
    parts = []
    for key, value in partition.items():
        part = f"{key}={value}"
        check_relative_path(part, where=f"partition {dict(partition)!r}")
        parts.append(part)
    return "/".join(parts)


def publish_shard(
    url: str,
    local_path: str,
    *,
    split: str,
    rows: int,
    format: str,
    partition: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Shard:
    """Publish one finished local shard file into the dataset at ``url``; not yet committed.

    Safe to call from any process (a Beam or Dask worker): it needs only the URL and the
    options, and returns the :class:`Shard` record to hand to :meth:`DatasetWriter.add`.
    The local file is moved away (or deleted after upload).

    Raises:
        ValueError: an unknown ``format``, empty ``split`` or negative ``rows``.
    """
    if format not in _FORMAT_SUFFIX:
        raise ValueError(f"Invalid value for `format`: {format!r}. Expected one of {sorted(_FORMAT_SUFFIX)}.")
    if not split or "/" in split:
        raise ValueError(f"Invalid value for `split`: {split!r}. Expected a non-empty name without '/'.")
    if rows < 0:
        raise ValueError(f"Invalid value for `rows`: {rows}. Expected a non-negative integer.")
    partition = dict(partition or {})
    checksum, size = checksum_file(local_path)
    name = f"{SHARD_PREFIX}{split}-{checksum.split(':', 1)[1][:20]}{_FORMAT_SUFFIX[format]}"
    rel = posixpath.join(_partition_dir(partition), name) if partition else name
    fs, root = resolve(url, storage_options)
    dest = posixpath.join(root, rel)
    with translate_errors(join_url(url, rel), storage_options):
        if is_local(fs) and os.path.isfile(dest) and os.path.getsize(dest) == size:
            os.utime(dest)  # a rerun: same name means same bytes; refresh its age so gc leaves it be
            os.unlink(local_path)
        else:  # object stores: upload again, which also refreshes its age; identical bytes either way
            publish_file(fs, local_path, dest)
    return Shard(path=rel, format=format, split=split, rows=rows, bytes=size, checksum=checksum, partition=partition)


def _read_manifest(fs: fsspec.AbstractFileSystem, path: str, url: str) -> Manifest | None:
    try:
        text = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return Manifest.from_json(text, where=redact_url(url))


def committed_versions(fs: fsspec.AbstractFileSystem, root: str) -> list[int]:
    """Committed versions of the dataset at ``root``, ascending (listed fresh, not from a cache)."""
    history = posixpath.join(root, HISTORY_DIR)
    fs.invalidate_cache(history)
    try:
        names = fs.ls(history, detail=False)
    except FileNotFoundError:
        return []
    versions = (parse_history_name(posixpath.basename(n.rstrip("/"))) for n in names)
    return sorted(v for v in versions if v is not None)


def read_version(fs: fsspec.AbstractFileSystem, root: str, url: str, version: int) -> Manifest | None:
    """Manifest ``version`` of the dataset at ``root``, or None if that version was never committed."""
    name = history_name(version)
    manifest = _read_manifest(fs, posixpath.join(root, name), join_url(url, name))
    if manifest is not None and manifest.version != version:
        raise ManifestError(f"{redact_url(join_url(url, name))}: names version {manifest.version}.")
    return manifest


def latest_manifest(fs: fsspec.AbstractFileSystem, root: str, url: str) -> Manifest | None:
    """The latest committed manifest, or None when nothing was ever committed."""
    versions = committed_versions(fs, root)
    if not versions:
        return None
    manifest = read_version(fs, root, url, versions[-1])
    if manifest is None:
        raise ManifestError(f"{redact_url(join_url(url, history_name(versions[-1])))}: listed but unreadable.")
    return manifest


class DatasetWriter:
    """Collects published shards and commits them as one new manifest version.

    Use as a context manager: on an exception nothing is committed and the staging
    directory is removed.

    Example:
        >>> with DatasetWriter("s3://bucket/clicks", name="synth", params={...}) as w:  # doctest: +SKIP
        ...     path = w.staging_path(".parquet")
        ...     ...  # write the file
        ...     w.publish(path, split="train", rows=n, format="parquet")
        ...     w.commit(schema=table.schema)
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        params: Mapping[str, Any] | None = None,
        mode: Literal["overwrite", "append"] = "overwrite",
        storage_options: Mapping[str, Any] | None = None,
        staging_dir: str | None = None,
    ) -> None:
        """
        Args:
            url: Dataset root URL.
            name: What writes (``"shardflow data synth"``), recorded in the manifest.
            params: The resolved parameters of the write, recorded in the manifest (no secrets).
            mode: ``"overwrite"`` replaces the dataset's content; ``"append"`` adds shards to it.
            storage_options: Filesystem options (endpoint, credentials); never recorded.
            staging_dir: Local directory for unfinished files of remote datasets (default: system temp).
        """
        if mode not in ("overwrite", "append"):
            raise ValueError(f"Invalid value for `mode`: {mode!r}. Expected 'overwrite' or 'append'.")
        self.url = url
        self.name = name
        self.params = scrub(params or {})
        self.mode = mode
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = resolve(url, storage_options)
        require_exclusive_create(self.fs, redact_url(url))  # before any shard is written, not at the commit
        with translate_errors(url, storage_options):
            versions = committed_versions(self.fs, self.root)
        self._base_version = versions[-1] if versions else 0  # what this write starts from
        token = temp_token()
        if is_local(self.fs):  # same device as the final files: publishing is a rename
            self._staging = os.path.join(self.root, STAGING_DIR, token)
        else:
            self._staging = os.path.join(staging_dir or tempfile.gettempdir(), f"shardflow-staging-{token}")
        self._shards: list[Shard] = []

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove this writer's staging directory (published but uncommitted shards are left for ``gc``)."""
        shutil.rmtree(self._staging, ignore_errors=True)

    def staging_path(self, suffix: str = "") -> str:
        """A fresh local path to write an unfinished shard to."""
        os.makedirs(self._staging, exist_ok=True)  # again each time: gc may have tidied an empty one
        return os.path.join(self._staging, f"{temp_token()}{suffix}")

    def base_manifest(self) -> Manifest | None:
        """The version this write started from (None for a new dataset)."""
        if not self._base_version:
            return None
        with translate_errors(self.url, self.storage_options):
            return read_version(self.fs, self.root, self.url, self._base_version)

    def publish(self, local_path: str, *, split: str, rows: int, format: str,
                partition: Mapping[str, str] | None = None) -> Shard:
        """Publish a finished local file (see :func:`publish_shard`) and add it to this write."""
        shard = publish_shard(self.url, local_path, split=split, rows=rows, format=format,
                              partition=partition, storage_options=self.storage_options)
        self.add(shard)
        return shard

    def add(self, *shards: Shard) -> None:
        """Add shards published elsewhere (by workers) to this write."""
        self._shards.extend(shards)

    @property
    def shards(self) -> list[Shard]:
        return list(self._shards)

    def _check_in_place(self, shards: Sequence[Shard]) -> None:
        """Refuse to commit shards that vanished (e.g. ``gc`` with a grace shorter than this write)."""
        def size_of(shard: Shard) -> int | None:
            path = posixpath.join(self.root, shard.path)
            self.fs.invalidate_cache(path)
            try:
                return self.fs.size(path)
            except FileNotFoundError:
                return None

        with ThreadPoolExecutor(max_workers=16) as pool:
            sizes = list(pool.map(size_of, shards))
        for shard, size in zip(shards, sizes):
            if size != shard.bytes:
                raise FileNotFoundError(
                    f"{redact_url(join_url(self.url, shard.path))}: published shard is "
                    f"{'missing' if size is None else f'{size} bytes, expected {shard.bytes}'}; nothing was committed "
                    "(was gc run with a grace period shorter than this write?)."
                )

    def commit(
        self,
        *,
        schema: pa.Schema,
        feature_spec: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        inputs: Sequence[str] = (),
        partitions: Mapping[str, Sequence[str]] | None = None,
    ) -> Manifest:
        """Commit the added shards as a new manifest version, written last.

        Returns the current manifest unchanged when the content is identical (a rerun).

        Args:
            partitions: The input partitions this write added (``{"day": [...]}``), recorded in its
                lineage entry, which appends carry forward: what each version added.

        Raises:
            ValueError: appending with a schema different from the dataset's.
            FileExistsError: another writer committed to this dataset meanwhile.
        """
        with translate_errors(self.url, self.storage_options):
            current = latest_manifest(self.fs, self.root, self.url)
            schema_json = schema_to_json(schema)
            shards = list(self._shards)
            lineage: list[dict[str, Any]] = []
            meta = dict(metadata or {})
            if self.mode == "append" and current is not None:
                if schema_from_json(current.schema) != schema:
                    raise ValueError(
                        f"Cannot append to {redact_url(self.url)}: schema differs from the dataset's.\n"
                        f"dataset: {schema_from_json(current.schema)}\nnew: {schema}"
                    )
                known = {s.path for s in current.shards}
                shards = list(current.shards) + [s for s in shards if s.path not in known]
                lineage = list(current.lineage)
                meta = {**current.metadata, **meta}
            version = (current.version if current else 0) + 1
            lineage.append({
                "version": version, "operation": self.mode, "writer": self.name, "params": self.params,
                "inputs": [redact_url(i) for i in inputs], "shards_added": len(self._shards), "created_at": _now(),
                **({"partitions": {k: list(v) for k, v in partitions.items()}} if partitions else {}),
            })
            manifest = Manifest(
                version=version,
                created_at=_now(),
                schema=schema_json,
                feature_spec=dict(feature_spec) if feature_spec is not None else feature_spec_from_schema(schema),
                shards=tuple(shards),
                writer={"name": self.name, "params": self.params, "shardflow_version": _version(),
                        "token": temp_token()},  # this commit's own: a retried create finds it (publish_bytes)
                lineage=tuple(lineage),
                metadata=meta,
            )
            if current is not None and manifest.same_content(current):
                log.info("%s: content unchanged, keeping version %d", redact_url(self.url), current.version)
                self._base_version = current.version
                return current
            if version - 1 != self._base_version:
                raise FileExistsError(
                    f"{redact_url(self.url)}: another writer committed version {version - 1} since this write "
                    f"started from version {self._base_version}; nothing was committed."
                )
            self._check_in_place(self._shards)
            data = manifest.to_json().encode()
            try:
                publish_bytes(self.fs, posixpath.join(self.root, history_name(version)), data, exclusive=True)
            except FileExistsError:
                raise FileExistsError(
                    f"{redact_url(self.url)}: another writer committed version {version} while this one was "
                    "writing; nothing was committed."
                ) from None
            # The commit is done; this copy is for people and tools that look for manifest.json.
            publish_bytes(self.fs, posixpath.join(self.root, MANIFEST_NAME), data)
        log.info("%s: committed version %d (%d shards)", redact_url(self.url), version, len(shards))
        self._base_version = version  # a further commit from this writer builds on this one
        return manifest


@dataclass(frozen=True)
class ShardProblem:
    """A shard that failed verification."""

    shard: Shard
    url: str
    problem: str


class Dataset:
    """A committed dataset version, opened by :func:`open_dataset`."""

    def __init__(self, url: str, manifest: Manifest, *, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.manifest = manifest
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = resolve(url, storage_options)

    def __repr__(self) -> str:
        return f"Dataset({redact_url(self.url)!r}, version={self.manifest.version}, shards={len(self.manifest.shards)})"

    @property
    def schema(self) -> pa.Schema:
        return schema_from_json(self.manifest.schema)

    def shards(self, split: str | None = None) -> list[Shard]:
        return self.manifest.shards_for(split)

    def partitions(self, column: str) -> list[str]:
        """The values of partition ``column`` that the shards are under (``column=value/``), sorted."""
        return sorted({s.partition[column] for s in self.manifest.shards if column in s.partition})

    def select(self, partitions: Mapping[str, Sequence[str]]) -> Dataset:
        """This version restricted to the shards under the given partition values (``{"day": [...]}``).

        Raises:
            ValueError: a value no shard is under, naming it.
        """
        for column, values in partitions.items():
            missing = sorted(set(values) - set(self.partitions(column)))
            if missing:
                raise ValueError(f"{redact_url(self.url)}: no shards under {column}={missing[0]} "
                                 f"(its {column} partitions: {self.partitions(column) or 'none'}).")
        kept = tuple(s for s in self.manifest.shards
                     if all(s.partition.get(column) in set(values) for column, values in partitions.items()))
        return Dataset(self.url, dataclasses.replace(self.manifest, shards=kept), storage_options=self.storage_options)

    def shard_url(self, shard: Shard) -> str:
        return join_url(self.url, check_relative_path(shard.path, where=redact_url(self.url)))

    def shard_path(self, shard: Shard) -> str:
        """The shard's path inside :attr:`fs`."""
        return posixpath.join(self.root, check_relative_path(shard.path, where=redact_url(self.url)))

    @contextlib.contextmanager
    def open_shard(self, shard: Shard, mode: str = "rb", **kwargs: Any) -> Iterator[Any]:
        """Open a shard; errors while opening *or reading* name its URL (vendor errors translated)."""
        with translate_errors(self.shard_url(shard), self.storage_options), \
                self.fs.open(self.shard_path(shard), mode, **kwargs) as f:
            yield f

    def check_shard(self, shard: Shard, on_bytes: Callable[[int], None] | None = None) -> ShardProblem | None:
        """Read a shard fully; return what is wrong with it, or None."""
        url = redact_url(self.shard_url(shard))
        try:
            with self.open_shard(shard, block_size=4 << 20) as f:
                checksum, size = checksum_stream(f.read, on_bytes)
        except FileNotFoundError:
            return ShardProblem(shard, url, "missing")
        except OSError as e:
            return ShardProblem(shard, url, f"unreadable: {e}")
        problem = shard.mismatch(checksum, size)
        return ShardProblem(shard, url, problem) if problem else None

    def verify(self, *, workers: int = 8, on_bytes: Callable[[int], None] | None = None,
               raise_on_error: bool = False) -> list[ShardProblem]:
        """Full scan: read every shard and compare its size and checksum with the manifest.

        Args:
            workers: Shards read in parallel.
            on_bytes: Progress callback receiving byte counts.
            raise_on_error: Raise :class:`ChecksumMismatchError` naming every bad shard.

        Returns:
            The problems found, in manifest order (empty when the dataset is intact).
        """
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(pool.map(lambda s: self.check_shard(s, on_bytes), self.manifest.shards))
        problems = [p for p in results if p is not None]
        if problems and raise_on_error:
            lines = "\n".join(f"  {p.url}: {p.problem}" for p in problems)
            raise ChecksumMismatchError(f"{redact_url(self.url)}: {len(problems)} bad shard(s):\n{lines}")
        return problems


def open_dataset(url: str, *, storage_options: Mapping[str, Any] | None = None,
                 version: int | None = None) -> Dataset:
    """Open the committed dataset at ``url`` (its latest version, or ``version``).

    Raises:
        FileNotFoundError: nothing committed at ``url`` (or no such version).
        ManifestError / UnsafePathError: the manifest is malformed or points outside the root.
    """
    fs, root = resolve(url, storage_options)
    shown = redact_url(url)
    with translate_errors(url, storage_options):
        if version is None:
            manifest = latest_manifest(fs, root, url)
            if manifest is None:
                raise FileNotFoundError(f"No committed dataset at {shown}: no manifest under {HISTORY_DIR}/.")
        else:
            manifest = read_version(fs, root, url, version)
            if manifest is None:
                raise FileNotFoundError(f"{shown}: no committed version {version} "
                                        f"(committed: {committed_versions(fs, root) or 'none'}).")
    return Dataset(url, manifest, storage_options=storage_options)

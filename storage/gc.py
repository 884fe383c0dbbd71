"""Garbage collection: remove what no retained manifest references.

Only files shardflow itself writes are candidates, recognised by their exact name
patterns: staging files, ``.tmp-`` files, content-named ``part-*`` shards, and pruned
manifest versions; on S3 also multipart uploads a killed writer left unfinished. Anything
else under the root, and any nested dataset, is reported and left alone. Nothing younger
than the grace period is removed, so a write in progress, or a reader of a version
superseded less than the grace period ago, is not disturbed.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .dataset import SHARD_PREFIX, STAGING_DIR, committed_versions, latest_manifest, read_version
from .lease import LEASE_DIR
from .manifest import HISTORY_DIR, MANIFEST_NAME, Manifest, parse_history_name
from .urls import is_local, join_url, redact_url, resolve, translate_errors

__all__ = ["GcReport", "abort_stale_uploads", "collect_garbage"]

log = logging.getLogger(__name__)
_SHARD = re.compile(rf"^(?:[^/=]+=[^/]*/)*{SHARD_PREFIX}[^/]+-[0-9a-f]{{20}}\.(?:parquet|tfrecord|tfrecord\.gz)$")
_TEMP = re.compile(r"^\.tmp-[0-9a-f]{16}-[^/]+$")


@dataclass
class GcReport:
    """What ``gc`` removed (or would remove, on a dry run) and what it left."""

    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    too_recent: list[str] = field(default_factory=list)  # orphans inside the grace period
    unknown: list[str] = field(default_factory=list)  # not shardflow's, or another dataset's: never touched
    aborted_uploads: list[str] = field(default_factory=list)  # keys of unfinished multipart uploads (one per upload)
    dry_run: bool = False


def _mtime(fs: Any, path: str, info: Mapping[str, Any]) -> _dt.datetime:
    for key in ("LastModified", "last_modified", "updated", "mtime", "created"):
        value = info.get(key)
        if isinstance(value, _dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        if isinstance(value, (int, float)):
            return _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
        if isinstance(value, str):
            return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    modified = fs.modified(path)
    return modified if modified.tzinfo else modified.replace(tzinfo=_dt.timezone.utc)


def _created(manifest: Manifest) -> _dt.datetime:
    return _dt.datetime.fromisoformat(manifest.created_at)


def collect_garbage(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    grace_seconds: float = 86400.0,
    keep_versions: int | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> GcReport:
    """Remove orphaned temporary files and unreferenced shards older than the grace period.

    Args:
        url: Dataset root.
        grace_seconds: Leave files younger than this alone; must exceed the longest write.
        keep_versions: Keep only the latest N versions (older ones, superseded more than
            the grace period ago, are dropped with their shards); None keeps every version.
        dry_run: Report without deleting.
        force: Run where nothing was ever committed (to clean up after a first write that
            died); without it such a URL is refused, since it may not be a dataset at all.

    Raises:
        FileNotFoundError: nothing committed at ``url`` and ``force`` not set.
        ValueError: a negative grace period or a non-positive ``keep_versions``.
    """
    if grace_seconds < 0:
        raise ValueError(f"Invalid value for `grace_seconds`: {grace_seconds}. Expected >= 0.")
    if keep_versions is not None and keep_versions < 1:
        raise ValueError(f"Invalid value for `keep_versions`: {keep_versions}. Expected a positive integer.")
    fs, root = resolve(url, storage_options)
    report = GcReport(dry_run=dry_run)
    cutoff = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=grace_seconds)
    with translate_errors(url, storage_options):
        versions = committed_versions(fs, root)
        if not versions and not force:
            raise FileNotFoundError(f"No committed dataset at {redact_url(url)}; refusing to gc "
                                    "(use force to clean up after a first write that never committed).")
        manifests = {v: read_version(fs, root, url, v) for v in versions}
        dropped = set()
        if keep_versions and len(versions) > keep_versions:
            for older, newer in zip(versions[:-keep_versions], versions[1:]):
                successor = manifests[newer]  # grace runs from when `older` stopped being the latest
                if successor and _created(successor) <= cutoff:
                    dropped.add(older)
        referenced = {s.path for v, m in manifests.items() if v not in dropped and m for s in m.shards}

        prefix = root.rstrip("/") + "/"
        files = fs.find(root, detail=True, withdirs=False) if versions or fs.exists(root) else {}
        relative = {path[len(prefix):]: (path, info) for path, info in files.items() if path.startswith(prefix)}
        nested = {rel.split(f"/{HISTORY_DIR}/")[0] for rel in relative if f"/{HISTORY_DIR}/" in rel}
        doomed: list[tuple[str, str, int]] = []
        for rel, (path, info) in sorted(relative.items()):
            if any(rel.startswith(n + "/") for n in nested):
                report.unknown.append(rel)  # another dataset inside this one: its own gc decides
                continue
            if rel == MANIFEST_NAME or rel.startswith(LEASE_DIR + "/"):  # a running job's lease: never garbage
                continue
            if _TEMP.match(posixpath.basename(rel)):
                pass  # a temporary file, wherever it is (also beside manifests)
            elif rel.startswith(HISTORY_DIR + "/"):
                version = parse_history_name(posixpath.basename(rel))
                if version is None or version not in dropped:
                    continue
            elif not (rel.startswith(STAGING_DIR + "/") or _SHARD.match(rel)):
                report.unknown.append(rel)
                continue
            if rel in referenced:
                continue
            if _mtime(fs, path, info) > cutoff and parse_history_name(posixpath.basename(rel)) is None:
                report.too_recent.append(rel)
                continue
            doomed.append((rel, path, int(info.get("size") or 0)))

        # A writer may have committed while we listed: never delete what the latest version references.
        newest = latest_manifest(fs, root, url)
        if newest is not None and newest.version not in manifests:
            referenced |= {s.path for s in newest.shards}
        emptied: set[str] = set()  # staging directories whose files this gc removed
        for rel, path, size in doomed:
            if rel in referenced:
                continue
            if parse_history_name(posixpath.basename(rel)) is None:
                fs.invalidate_cache(path)
                try:  # a rerun may have published (and refreshed) this very name since we listed
                    if _mtime(fs, path, fs.info(path)) > cutoff:
                        report.too_recent.append(rel)
                        continue
                except FileNotFoundError:
                    continue
            report.removed.append(rel)
            report.bytes_freed += size
            if not dry_run:
                fs.rm_file(path)
                emptied.add(os.path.normpath(posixpath.dirname(path)))
                log.info("gc removed %s", redact_url(join_url(url, rel)))
        report.aborted_uploads = abort_stale_uploads(fs, root, older_than=grace_seconds, dry_run=dry_run)
        if is_local(fs) and not dry_run:
            _remove_empty_dirs(posixpath.join(root, STAGING_DIR), cutoff, emptied)
    return report


def _remove_empty_dirs(top: str, cutoff: _dt.datetime, emptied: set[str]) -> None:
    """Local disk keeps the directories of killed writers' staging; object stores have none.

    Only empty directories below ``top`` go that are old or that this gc emptied (removing their
    files made them look new); writers recreate theirs before each file.
    """
    for parent, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        if parent == top:
            continue
        try:
            if (os.path.normpath(parent) in emptied
                    or _dt.datetime.fromtimestamp(os.stat(parent).st_mtime, _dt.timezone.utc) <= cutoff):
                os.rmdir(parent)
        except OSError:
            pass  # not empty, or gone


def abort_stale_uploads(fs: Any, prefix: str, *, older_than: float = 86400.0, dry_run: bool = False) -> list[str]:
    """Abort the unfinished multipart uploads under ``prefix`` idle for more than ``older_than`` seconds.

    A writer killed during a multipart upload leaves the upload open: no object appears, but its
    parts stay stored (and billed) until the upload is aborted. A live writer's upload looks the
    same, so only uploads idle for longer than ``older_than`` are aborted: initiated, and their
    newest part uploaded, that long ago (default one day, far longer than any part takes).
    Filesystems without multipart uploads (local disk, memory) have nothing to abort.

    Args:
        fs: The filesystem (an ``s3fs.S3FileSystem``; others are skipped).
        prefix: ``bucket/key/prefix`` whose uploads to consider.
        older_than: Leave alone uploads initiated, or given a part, less than this many seconds ago.
        dry_run: Report without aborting.

    Returns:
        The keys of the uploads aborted (or that would be, on a dry run), relative to ``prefix``.

    Raises:
        ValueError: a negative ``older_than``.
    """
    if older_than < 0:
        raise ValueError(f"Invalid value for `older_than`: {older_than}. Expected >= 0 seconds.")
    if not hasattr(fs, "list_multipart_uploads"):
        return []
    cutoff = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=older_than)
    bucket, _, key_root = prefix.strip("/").partition("/")
    key_prefix = key_root + "/" if key_root else ""
    aborted = []
    markers: dict[str, str] = {}
    while True:
        page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix, **markers)
        for upload in page.get("Uploads", []):
            try:
                if upload["Initiated"] > cutoff or _newest_part(fs, bucket, upload) > cutoff:
                    continue
            except FileNotFoundError:  # completed or aborted since it was listed
                continue
            if not dry_run:
                try:
                    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                except FileNotFoundError:  # aborted meanwhile (or a retried abort whose first reply was lost)
                    pass
                log.info("aborted the unfinished multipart upload of s3://%s/%s", bucket, upload["Key"])
            aborted.append(upload["Key"][len(key_prefix):])
        if not page.get("IsTruncated"):
            return aborted
        markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}


def _newest_part(fs: Any, bucket: str, upload: Mapping[str, Any]) -> _dt.datetime:
    """When the newest part of an unfinished upload arrived (the epoch if it has none)."""
    newest = _dt.datetime.fromtimestamp(0, _dt.timezone.utc)
    marker: dict[str, int] = {}
    while True:
        page = fs.call_s3("list_parts", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"], **marker)
        for part in page.get("Parts", []):
            newest = max(newest, part["LastModified"])
        if not page.get("IsTruncated"):
            return newest
        marker = {"PartNumberMarker": page["NextPartNumberMarker"]}

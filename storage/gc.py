"""Garbage collection: remove what no committed manifest references.

Only files shardflow itself creates are candidates: staging files, ``.tmp-`` files,
``part-*`` shards and uncommitted manifest history. Anything else under the root is
reported and left alone. Nothing younger than the grace period is removed, so a write in
progress, or a reader still holding an older manifest, is not disturbed.
"""

from __future__ import annotations

import datetime as _dt
import logging
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .dataset import SHARD_PREFIX, STAGING_DIR, _read_manifest
from .manifest import HISTORY_DIR, MANIFEST_NAME
from .urls import join_url, redact_url, resolve, translate_errors

__all__ = ["GcReport", "collect_garbage"]

log = logging.getLogger(__name__)
_HISTORY = re.compile(rf"^{HISTORY_DIR}/v(\d+)\.json$")


@dataclass
class GcReport:
    """What ``gc`` removed (or would remove, on a dry run) and what it left."""

    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    too_recent: list[str] = field(default_factory=list)  # orphans inside the grace period
    unknown: list[str] = field(default_factory=list)  # not shardflow's: never touched
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


def collect_garbage(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    grace_seconds: float = 3600.0,
    keep_versions: int | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Remove orphaned temporary files and unreferenced shards older than the grace period.

    Args:
        url: Dataset root.
        grace_seconds: Leave files younger than this alone.
        keep_versions: Keep the shards of the latest N committed versions only (older
            history is dropped); None keeps every version that history still lists.
        dry_run: Report without deleting.

    Raises:
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
        fs.invalidate_cache(root)  # list what is there now, not what this process saw before
        latest = _read_manifest(fs, posixpath.join(root, MANIFEST_NAME), url)
        current = latest.version if latest else 0
        oldest_kept = current - keep_versions + 1 if keep_versions else 1
        files = fs.find(root, detail=True, withdirs=False) if fs.exists(root) else {}
        prefix = root.rstrip("/") + "/"
        referenced = {s.path for s in latest.shards} if latest else set()
        doomed: list[tuple[str, str, int, Mapping[str, Any]]] = []
        for path, info in sorted(files.items()):
            rel = path[len(prefix):] if path.startswith(prefix) else path
            name = posixpath.basename(rel)
            history = _HISTORY.match(rel)
            if rel == MANIFEST_NAME:
                continue
            if history:
                version = int(history.group(1))
                if oldest_kept <= version <= current:
                    old = _read_manifest(fs, path, join_url(url, rel))
                    if old is not None:
                        referenced.update(s.path for s in old.shards)
                    continue
            elif not (rel.startswith(STAGING_DIR + "/") or name.startswith((".tmp-", SHARD_PREFIX))):
                report.unknown.append(rel)
                continue
            doomed.append((rel, path, int(info.get("size") or 0), info))
        for rel, path, size, info in doomed:
            if rel in referenced:
                continue
            if _mtime(fs, path, info) > cutoff:
                report.too_recent.append(rel)
                continue
            report.removed.append(rel)
            report.bytes_freed += size
            if not dry_run:
                fs.rm_file(path)
                log.info("gc removed %s", redact_url(join_url(url, rel)))
    return report

"""The manifest: the one file readers trust.

A dataset's versions are ``_manifests/v00000001.json``, ``v00000002.json``, ...: each is
created exclusively (never overwritten) after all its shards are in place, and that
creation is the commit. ``manifest.json`` at the root is a copy of the latest version for
people and other tools, written after it. Everything a reader needs is here: shards with
split, rows, bytes and checksum; the schema; the TensorFlow feature spec; how and from
what the data was made.
"""

from __future__ import annotations

import datetime as _dt
import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ManifestError, UnsafePathError
from .schema import schema_from_json

__all__ = ["Shard", "Manifest", "MANIFEST_NAME", "HISTORY_DIR", "check_relative_path", "history_name", "parse_history_name"]

MANIFEST_NAME = "manifest.json"
HISTORY_DIR = "_manifests"
FORMAT_VERSION = 1


def record_json(data: Any) -> str:
    """How shardflow writes a record readers trust (manifests, checkpoint records): stable key
    order for diffs, no NaN (not JSON), a final newline."""
    return json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n"


def history_name(version: int) -> str:
    """Relative path of committed manifest ``version`` (created exclusively: this is the commit)."""
    return f"{HISTORY_DIR}/v{version:08d}.json"


def parse_history_name(name: str) -> int | None:
    """The version of a ``_manifests/`` file name (basename), or None if it is not one."""
    match = re.fullmatch(r"v(\d{8,})\.json", name)
    return int(match.group(1)) if match else None


def check_relative_path(path: str, *, where: str) -> str:
    """Return ``path`` if it stays inside the dataset root, else raise.

    Rejects absolute paths, URLs (other buckets), ``..`` segments, backslashes and empty
    segments, so a manifest can never make a reader touch files outside its dataset.

    Raises:
        UnsafePathError: naming ``where`` (the manifest URL) and the offending path.
    """
    bad = (
        not isinstance(path, str)
        or not path
        or path.startswith(("/", "~"))
        or "://" in path
        or "\\" in path
        or ":" in path.split("/", 1)[0]
        or any(part in ("", ".", "..") for part in path.split("/"))
        or posixpath.normpath(path) != path
    )
    if bad:
        raise UnsafePathError(f"{where}: shard path {path!r} escapes the dataset root; refusing to read it.")
    return path


@dataclass(frozen=True)
class Shard:
    """One committed file of a dataset."""

    path: str  # relative to the dataset root
    format: str  # "parquet", "tfrecord", ...
    split: str
    rows: int
    bytes: int
    checksum: str  # "sha256:<hex>"
    partition: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def mismatch(self, checksum: str, size: int) -> str | None:
        """What is wrong with bytes of this ``checksum`` and ``size`` as this shard, or None."""
        if size != self.bytes:
            return f"size {size} bytes, manifest says {self.bytes}"
        if checksum != self.checksum:
            return f"checksum {checksum}, manifest says {self.checksum}"
        return None

    @classmethod
    def from_json(cls, data: dict[str, Any], *, where: str) -> Shard:
        try:
            shard = cls(
                path=str(data["path"]),
                format=str(data["format"]),
                split=str(data["split"]),
                rows=int(data["rows"]),
                bytes=int(data["bytes"]),
                checksum=str(data["checksum"]),
                partition={str(k): str(v) for k, v in (data.get("partition") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{where}: malformed shard entry {data!r}: {e}") from e
        check_relative_path(shard.path, where=where)
        if shard.rows < 0 or shard.bytes < 0 or ":" not in shard.checksum:
            raise ManifestError(f"{where}: shard {shard.path!r} has invalid rows/bytes/checksum.")
        return shard


@dataclass(frozen=True)
class Manifest:
    """A committed version of a dataset."""

    version: int
    created_at: str
    schema: dict[str, Any]  # storage.schema.schema_to_json
    feature_spec: dict[str, Any]
    shards: tuple[Shard, ...]
    writer: dict[str, Any]  # {"name", "params", "shardflow_version", "token"}
    lineage: tuple[dict[str, Any], ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def splits(self) -> dict[str, dict[str, int]]:
        """``{split: {"shards", "rows", "bytes"}}`` in first-seen order."""
        out: dict[str, dict[str, int]] = {}
        for s in self.shards:
            agg = out.setdefault(s.split, {"shards": 0, "rows": 0, "bytes": 0})
            agg["shards"] += 1
            agg["rows"] += s.rows
            agg["bytes"] += s.bytes
        return out

    def shards_for(self, split: str | None = None) -> list[Shard]:
        """Shards of ``split`` (all when None), in manifest order."""
        if split is not None and split not in self.splits():
            raise ValueError(f"Invalid value for `split`: {split!r}. This dataset has {sorted(self.splits())}.")
        return [s for s in self.shards if split is None or s.split == split]

    def same_content(self, other: Manifest) -> bool:
        """True when both describe the same data (ignores version, times and lineage)."""
        keys = ("schema", "feature_spec", "shards", "metadata")
        return all(getattr(self, k) == getattr(other, k) for k in keys) and \
            self.writer.get("params") == other.writer.get("params")

    def to_json(self) -> str:
        data = asdict(self)
        data["shards"] = [s.to_json() for s in self.shards]
        data["lineage"] = list(self.lineage)
        return record_json(data)

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str) -> Manifest:
        """Parse and validate; ``where`` (a redacted URL) names the file in errors."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(f"{where}: not valid JSON ({e}); the manifest is corrupt.") from e
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object.")
        if data.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"{where}: format_version {data.get('format_version')!r} is not {FORMAT_VERSION}; "
                "upgrade shardflow to read it."
            )
        try:
            manifest = cls(
                version=int(data["version"]),
                created_at=str(data["created_at"]),
                schema=dict(data["schema"]),
                feature_spec=dict(data["feature_spec"]),
                shards=tuple(Shard.from_json(s, where=where) for s in data["shards"]),
                writer=dict(data["writer"]),
                lineage=tuple(data.get("lineage") or ()),
                metadata=dict(data.get("metadata") or {}),
            )
            if _dt.datetime.fromisoformat(manifest.created_at).tzinfo is None:
                raise ValueError(f"created_at {manifest.created_at!r} has no time zone")
            schema_from_json(manifest.schema)
            if not isinstance(manifest.schema.get("fields"), list):
                raise ValueError("schema has no field list")
        except (ManifestError, UnsafePathError):
            raise
        except Exception as e:  # anything malformed inside: name the file, not a library's internals
            raise ManifestError(f"{where}: missing or malformed field: {type(e).__name__}: {e}") from e
        return manifest

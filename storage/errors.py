"""Project exceptions.

Storage meaning travels in built-in types (``FileNotFoundError``, ``FileExistsError``,
``PermissionError``, ``ValueError``); these classes cover what has no built-in name.
"""

from __future__ import annotations

__all__ = ["ShardflowError", "ManifestError", "ChecksumMismatchError", "UnsafePathError"]


class ShardflowError(Exception):
    """Base class for shardflow's own errors."""


class ManifestError(ShardflowError, ValueError):
    """A manifest exists but its content is malformed or inconsistent."""


class ChecksumMismatchError(ShardflowError):
    """A shard's bytes do not match the checksum or size its manifest records."""


class UnsafePathError(ShardflowError, ValueError):
    """A path in a manifest points outside the dataset root."""

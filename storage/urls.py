"""URLs at every public boundary: resolve once, redact always, translate vendor errors.

Every public function in shardflow takes a URL plus a ``storage_options`` mapping
(endpoint, credentials, ...). :func:`resolve` turns them into ``(fs, path)`` once; code
further in works on that pair and never reads credentials from the environment itself.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
import yaml
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "resolve",
    "join_url",
    "is_local",
    "redact_url",
    "redact_text",
    "parse_storage_options",
    "scrub",
    "translate_errors",
]

# Option names whose values are secrets; matched case-insensitively as substrings.
_SECRET_WORDS = ("secret", "token", "password", "credential", "key", "sas", "signature", "connection", "conn_str")
_SECRET_QUERY = re.compile(r"(?i)([?&][^=&\s]*(?:sig|signature|credential|token|key|password|sas)[^=&\s]*=)[^&\s]*")


def resolve(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve ``url`` to a filesystem and a path inside it.

    Args:
        url: A plain path, ``file://``, ``memory://``, ``s3://``, ``gs://``, ``az://`` ... URL.
        storage_options: Keyword arguments for the filesystem (endpoint, credentials, ...).

    Returns:
        ``(fs, path)`` with ``path`` stripped of any trailing slash.

    Raises:
        ValueError: ``url`` is empty or names a protocol no installed filesystem handles.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"Invalid value for `url`: {url!r}. Expected a non-empty URL or path.")
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise ValueError(f"Cannot open {redact_url(url)}: {redact_text(str(e))}") from e
    path = path.rstrip("/") or path
    return fs, path


def join_url(url: str, *parts: str) -> str:
    """Append relative POSIX ``parts`` to ``url`` (keeps any ``scheme://``)."""
    return posixpath.join(url.rstrip("/"), *parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True when ``fs`` is the local disk, where ``os.replace`` is atomic."""
    return isinstance(fs, LocalFileSystem)


def redact_url(url: str) -> str:
    """Remove passwords and signed-query secrets from a URL, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        if ":" in userinfo:
            netloc = f"{user}:***@{host}"
        elif parts.scheme not in ("az", "abfs", "abfss"):  # az://container@account names no secret
            netloc = f"***@{host}"
    query = _SECRET_QUERY.sub(r"\1***", "?" + parts.query)[1:] if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Blank out known secret values and signed-query parameters in free text."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _SECRET_QUERY.sub(r"\1***", text)


def secret_values(storage_options: Mapping[str, Any] | None) -> list[str]:
    """The string values of ``storage_options`` whose keys look like credentials."""
    found: list[str] = []
    for key, value in (storage_options or {}).items():
        if isinstance(value, Mapping):
            found.extend(secret_values(value))
        elif isinstance(value, str) and any(w in key.lower() for w in _SECRET_WORDS):
            found.append(value)
    return found


def scrub(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with credential-looking values replaced by ``"***"`` (for manifests)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out[key] = scrub(value)
        elif isinstance(value, str) and any(w in str(key).lower() for w in _SECRET_WORDS):
            out[key] = "***"
        else:
            out[key] = value
    return out


def parse_storage_options(items: Iterable[str]) -> dict[str, Any]:
    """Parse repeatable ``key=value`` CLI options into a ``storage_options`` dict.

    Values are read as YAML scalars (``true``, ``3``, ``null``); dotted keys nest, so
    ``client_kwargs.region_name=eu-west-1`` becomes ``{"client_kwargs": {"region_name": ...}}``.

    Raises:
        ValueError: an item has no ``=`` or an empty key.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"Invalid value for `--storage-option`: {item.split('=')[0]!r}... Expected key=value.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            value = raw  # keep structured-looking text verbatim
        if any(w in key.lower() for w in _SECRET_WORDS):
            value = raw  # credentials stay exactly as typed (a password of digits is not a number)
        target = options
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ValueError(f"Invalid value for `--storage-option`: {key!r} nests under a non-mapping.")
        target[leaf] = value
    return options


_VENDOR_MODULES = ("botocore", "aiobotocore", "aiohttp", "google", "azure", "requests", "urllib3", "s3fs", "gcsfs", "adlfs")


@contextlib.contextmanager
def translate_errors(url: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Re-raise storage failures as built-in exceptions whose message names ``url``.

    ``OSError`` and its subclasses keep their type; errors from storage vendors' libraries
    (botocore, aiohttp, google, azure, ...) become ``OSError``. Secrets from
    ``storage_options`` never reach the message.
    """
    secrets = secret_values(storage_options)
    shown = redact_url(url)
    try:
        yield
    except OSError as e:
        detail = redact_text(str(e), secrets)
        if shown in detail and detail == str(e):
            raise
        message = detail if shown in detail else f"{shown}: {detail}"
        try:
            translated = type(e)(message)
        except Exception:  # an OSError subclass with another constructor
            translated = OSError(message)
        raise translated from (None if detail != str(e) else e)  # a chained original would show the secret
    except Exception as e:
        module = type(e).__module__.split(".")[0]
        if module not in _VENDOR_MODULES:
            raise
        detail = redact_text(f"{type(e).__name__}: {e}", secrets)
        raise OSError(f"Storage error at {shown}: {detail}") from (None if secrets and detail != f"{type(e).__name__}: {e}" else e)

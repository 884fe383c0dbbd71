"""URLs at every public boundary: resolve once, redact always, translate vendor errors.

Every public function in shardflow takes a URL plus a ``storage_options`` mapping
(endpoint, credentials, ...). :func:`resolve` turns them into ``(fs, path)`` once; code
further in works on that pair and never reads credentials from the environment itself.
"""

from __future__ import annotations

import contextlib
import copy
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
    "with_retry_defaults",
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
        fs, path = fsspec.core.url_to_fs(url, **with_retry_defaults(url, storage_options))
    except (ImportError, ValueError) as e:
        raise ValueError(f"Cannot open {redact_url(url)}: {redact_text(str(e))}") from e
    path = path.rstrip("/") or path
    return fs, path


# Bounded retries through the libraries' own settings, for what object stores say now and then:
# botocore's "standard" mode retries throttling (503 SlowDown), 500/502/503/504, timeouts and
# dropped connections with exponential backoff and jitter; 4 retries = 5 attempts per call.
# s3fs wraps each call in its own loop (`S3FileSystem.retries`, 5 attempts, not an option) for
# closed connections, read timeouts and SlowDown that outlast botocore's. A user's own options
# win, key by key.
_RETRY_DEFAULTS: dict[str, dict[str, Any]] = {
    "s3": {"config_kwargs": {"retries": {"mode": "standard", "max_attempts": 4}}},
}
_RETRY_DEFAULTS["s3a"] = _RETRY_DEFAULTS["s3"]


def _merged(defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``options``; nested mappings merge key by key. A fresh copy
    throughout: botocore writes into the ``retries`` dict it is given."""
    out = copy.deepcopy(dict(defaults))
    for key, value in options.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merged(out[key], value) if nested else value
    return out


def with_retry_defaults(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``storage_options`` with shardflow's retry defaults for ``url``'s protocol added under them.

    A key the user set (``config_kwargs.retries.max_attempts=1``) replaces the default of that
    key only; the other defaults stay.
    """
    options = dict(storage_options or {})
    protocol, _ = fsspec.core.split_protocol(url)
    defaults = _RETRY_DEFAULTS.get(protocol or "")
    return _merged(defaults, options) if defaults and "::" not in url else options


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
        original = f"{type(e).__name__}: {_summary(e)}"
        detail = redact_text(original, secrets)
        raise OSError(f"Storage error at {shown}: {detail}") from (None if secrets and detail != original else e)


def _summary(error: Exception) -> str:
    """A vendor error on one line: its first line, plus Azure's error code (its message goes on with XML)."""
    lines = str(error).strip().splitlines() or [""]
    code = getattr(error, "error_code", None)
    code = getattr(code, "value", code)  # azure: a str enum, a str or None
    return f"{lines[0]} ({code})" if isinstance(code, str) and code not in lines[0] else lines[0]

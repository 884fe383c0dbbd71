"""Typed configuration shared by the pipeline and training commands: a YAML file, flag
overrides on top, and validation errors that name the field and the value received."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StrictModel", "load_function", "load_model"]

Model = TypeVar("Model", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo is never silently ignored); assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _friendly(error: ValidationError, source: str) -> ValueError:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f": {value!r}"
        lines.append(f"Invalid value for `{where}`{shown}. {item['msg']}")
    return ValueError(f"{source}: " + "; ".join(lines))  # one line: the CLI prints one `error:` line


def load_model(model: type[Model], path: str | None, overrides: dict[str, Any] | None, *, what: str) -> Model:
    """Read ``path`` (YAML; ``-`` for stdin) if given, apply ``overrides`` (flags; None values ignored), validate.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: invalid YAML or values, each naming the field and the value received.
    """
    data: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(sys.stdin.read() if path == "-" else Path(path).read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        data.update(loaded or {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _friendly(e, path or what) from None


def load_function(spec: str, *, setting: str) -> Callable[..., Any]:
    """Import ``module:function`` named by the config field ``setting``; errors name both."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"Invalid value for `{setting}`: {spec!r}. Expected 'module:function'.")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"Invalid value for `{setting}`: {spec!r}: {e}") from None

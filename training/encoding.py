"""The built-in model's encoder for clients: raw rows to the ids and numbers its core takes.

A TFLite model cannot hash strings in the pinned interpreters (DESIGN.md fact 9), so the
exported TFLite model is the core alone and a client encodes rows first, with
:func:`encode_rows` and the ``encoding.json`` written beside the model (or by reimplementing
the spec: FarmHash Fingerprint64 of ``"<column>=<value>"`` modulo ``buckets``, nulls as "";
numbers as ``sign(x) * log(1 + |x|)``, nulls as 0 with a missing flag).
The model's own encoder layers run the same functions (:func:`~.model.hash_ids`,
:func:`~.model.fill_missing`, :func:`~.model.signed_log`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._tf import tf
from .config import ModelConfig
from .inputs import InputSpec
from .model import fill_missing, hash_ids, signed_log

__all__ = ["ENCODING_FORMAT", "encoding_spec", "encode_rows", "load_encoding"]

ENCODING_FORMAT = "shardflow-encoding/1"


def encoding_spec(spec: InputSpec, config: ModelConfig) -> dict[str, Any]:
    """The JSON-able description of how raw rows become the core's inputs."""
    categorical = [n for n in spec.features if spec.dtype(n) == tf.string]
    numeric = [n for n in spec.features if n not in categorical]
    return {
        "format": ENCODING_FORMAT,
        "categorical": categorical,
        "numeric": numeric,
        "hash": {"function": "farmhash_fingerprint64", "input": "<column>=<value>", "buckets": config.hash_buckets,
                 "null": "", "tensorflow": "tf.strings.to_hash_bucket_fast"},
        "inputs": {
            **({"ids": {"dtype": "int64", "shape": [None, len(categorical)], "columns": categorical}} if categorical else {}),
            **({"numeric": {"dtype": "float32", "shape": [None, len(numeric)], "columns": numeric,
                            "values": "sign(x) * log(1 + |x|); 0.0 where x is null or not finite"},
                "missing": {"dtype": "float32", "shape": [None, len(numeric)], "columns": numeric,
                            "values": "1.0 where the value is null or not finite, else 0.0"}} if numeric else {}),
        },
        "output": {"logit": "one per row; probability = 1 / (1 + exp(-logit))"},
    }


def load_encoding(path: str) -> dict[str, Any]:
    with open(path) as f:
        encoding = json.load(f)
    if encoding.get("format") != ENCODING_FORMAT:
        raise ValueError(f"{path}: not a shardflow encoding spec (format {encoding.get('format')!r}, "
                         f"expected {ENCODING_FORMAT!r}).")
    return encoding


def _strings(values: Any) -> np.ndarray:
    return np.array([b"" if v is None else v.encode() if isinstance(v, str) else bytes(v) for v in values], dtype=object)


def _floats(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values.astype(np.float32, copy=False)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float32)


def encode_rows(rows: Mapping[str, Sequence[Any] | np.ndarray], encoding: Mapping[str, Any] | str) -> dict[str, np.ndarray]:
    """``ids``, ``numeric`` and ``missing`` arrays for the TFLite core, from raw columns.

    Args:
        rows: Column name to values (strings or bytes, None for null; numbers, None or NaN for null).
        encoding: The export's ``encoding.json`` (a path or its parsed content).

    Raises:
        ValueError: a column the encoding needs is missing from ``rows``, naming it.
    """
    encoding = load_encoding(encoding) if isinstance(encoding, str) else encoding
    needed = [*encoding["categorical"], *encoding["numeric"]]
    absent = [c for c in needed if c not in rows]
    if absent:
        raise ValueError(f"Rows lack column(s) {absent} that the model's encoding needs.")
    out: dict[str, np.ndarray] = {}
    if encoding["categorical"]:
        values = [tf.constant(_strings(rows[c])) for c in encoding["categorical"]]
        out["ids"] = hash_ids(encoding["categorical"], values, int(encoding["hash"]["buckets"])).numpy()
    if encoding["numeric"]:
        columns = [tf.constant(_floats(rows[c])) for c in encoding["numeric"]]
        values, missing = fill_missing(columns)
        out["numeric"], out["missing"] = signed_log(values).numpy(), missing.numpy()
    return out

"""Arrow schemas in manifests, and the TensorFlow feature spec derived from them.

The feature spec is plain JSON (no TensorFlow import here): training turns each entry
into ``tf.io.FixedLenFeature`` / ``tf.io.VarLenFeature``.
"""

from __future__ import annotations

import base64
from typing import Any

import pyarrow as pa

__all__ = ["schema_to_json", "schema_from_json", "feature_spec_from_schema", "describe_schema"]


def schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """A readable field list plus the exact Arrow IPC schema, base64-encoded."""
    return {
        "fields": describe_schema(schema),
        "arrow": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
    }


def schema_from_json(data: dict[str, Any]) -> pa.Schema:
    """Inverse of :func:`schema_to_json`."""
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data["arrow"])))


def describe_schema(schema: pa.Schema) -> list[dict[str, Any]]:
    """``[{"name", "type", "nullable"}]`` for people and for tables."""
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def _tf_dtype(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "int64"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float32"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_binary(arrow_type) \
            or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(arrow_type):
        return "string"
    return None


def feature_spec_from_schema(schema: pa.Schema) -> dict[str, dict[str, Any]]:
    """Derive the ``tf.io.parse_example`` spec a TensorFlow reader needs.

    Scalars become fixed-length features (nullable ones with a default, and ``nullable``
    recorded so readers can tell a default from a value); lists become var-length features.

    Raises:
        ValueError: a column has a type TensorFlow examples cannot hold, naming the column.
    """
    spec: dict[str, dict[str, Any]] = {}
    for field in schema:
        arrow_type = field.type
        if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
            dtype = _tf_dtype(arrow_type.value_type)
            entry: dict[str, Any] = {"kind": "var_len", "dtype": dtype}
            if pa.types.is_fixed_size_list(arrow_type):
                entry = {"kind": "fixed_len", "dtype": dtype, "shape": [arrow_type.list_size]}
        else:
            dtype = _tf_dtype(arrow_type)
            default: Any = {"int64": 0, "float32": 0.0, "string": ""}.get(dtype or "")
            entry = {"kind": "fixed_len", "dtype": dtype, "shape": [], "default": default, "nullable": field.nullable}
        if entry["dtype"] is None:
            raise ValueError(f"Column {field.name!r} has type {arrow_type}, which a tf.train.Example cannot hold.")
        spec[field.name] = entry
    return spec

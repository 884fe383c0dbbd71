"""The pipeline's typed configuration: YAML file, flag overrides, validation that names the field."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from shardflow.configs import StrictModel, load_model

__all__ = ["PipelineConfig", "SplitConfig", "AugmentConfig", "load_config", "arrow_type"]

_TYPES = {
    "bool": pa.bool_(), "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float32": pa.float32(), "float": pa.float32(), "float64": pa.float64(), "double": pa.float64(),
    "string": pa.string(), "binary": pa.binary(),
}


def arrow_type(name: str) -> pa.DataType:
    """``"int64"``, ``"float32"``, ``"string"``, ``"list<float32>"`` ... as an Arrow type."""
    name = name.strip().lower()
    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(arrow_type(name[5:-1]))
    if name not in _TYPES:
        raise ValueError(f"unknown type {name!r}; expected one of {sorted(_TYPES)} or list<...>")
    return _TYPES[name]


class SplitConfig(StrictModel):
    """Deterministic train/eval/test split by hashing a key column (or the whole row) with the seed."""

    train: float = Field(0.8, ge=0, le=1)
    eval: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.0, ge=0, le=1)
    key: str | None = None

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.eval + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + eval + test must be 1, got {total:g}")
        return self

    def fractions(self) -> dict[str, float]:
        return {name: f for name, f in (("train", self.train), ("eval", self.eval), ("test", self.test)) if f > 0}


class AugmentConfig(StrictModel):
    """Seeded augmentation of training rows; eval and test rows are never augmented."""

    copies: int = Field(0, ge=0, description="augmented copies per training row, beside the original")
    noise_std: float = Field(0.0, ge=0, description="std of Gaussian noise added to numeric features")
    noise_columns: list[str] | None = None  # default: every floating-point feature
    mask_prob: float = Field(0.0, ge=0, le=1, description="chance of masking (nulling) each feature")
    mask_columns: list[str] | None = None  # default: every feature
    image_columns: list[str] = []
    image_shape: list[int] | None = None  # H, W, C of raw uint8 list columns
    flip: bool = False
    crop_padding: int = Field(0, ge=0)
    brightness: float = Field(0.0, ge=0, le=1)
    functions: list[str] = []  # user augmentations, "module:function"

    @property
    def enabled(self) -> bool:
        return self.copies > 0


class PipelineConfig(StrictModel):
    """Everything ``shardflow pipeline run`` needs; stored with the dataset it writes (secrets scrubbed)."""

    input: str
    output: str
    input_format: Literal["csv", "jsonl", "parquet"] | None = None  # default: from file extensions
    columns: dict[str, str] | None = None  # column -> type; default: inferred from the first file, then fixed
    label: str | None = None
    formats: list[Literal["parquet", "tfrecord"]] = ["parquet"]
    shards: int | None = Field(None, gt=0, description="shards of the largest split")
    rows_per_shard: int | None = Field(None, gt=0)
    bytes_per_shard: int | None = Field(None, gt=0)
    # A `key=value/` partition column of the input (`day`): shards are then written per value,
    # under the same `key=value/` directory, so a job can read, replay or drop a partition alone.
    partition_by: str | None = None
    partitions: list[str] | None = None  # read only these values of `partition_by`
    append: bool = False  # add the shards to the dataset's current version instead of replacing it
    split: SplitConfig = SplitConfig()
    augment: AugmentConfig = AugmentConfig()
    seed: int = Field(0, ge=0)
    max_bad_fraction: float = Field(0.0, ge=0, le=1)
    parquet_compression: str = "snappy"
    parquet_row_group_size: int = Field(65536, gt=0)
    tfrecord_gzip: bool = False
    batch_rows: int = Field(65536, gt=0, description="rows per batch parsing JSON lines and encoding TFRecords")
    engine: Literal["beam", "dask"] = "beam"
    runner: str = "DirectRunner"
    # threads overlap well here: Arrow, Parquet and NumPy release the GIL for the heavy work
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "multi_threading"
    direct_num_workers: int | None = Field(None, gt=0, description="default: one per CPU core")
    beam_options: list[str] = []  # passed through: --project --region --temp_location ...
    dask_address: str | None = None
    dask_workers: int = Field(2, gt=0)
    # a local cluster's workers are threads, like Beam's default; processes for Python-heavy augmentations
    dask_processes: bool = False
    storage_options: dict[str, Any] = {}

    @field_validator("formats")
    @classmethod
    def _some_format(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one of parquet, tfrecord")
        return list(dict.fromkeys(value))

    @field_validator("columns")
    @classmethod
    def _known_types(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, type_name in (value or {}).items():
            try:
                arrow_type(type_name)
            except ValueError as e:
                raise ValueError(f"column {name!r}: {e}") from None
        return value

    @model_validator(mode="after")
    def _one_sizing(self) -> PipelineConfig:
        given = [n for n in ("shards", "rows_per_shard", "bytes_per_shard") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of shards, rows_per_shard, bytes_per_shard, not {given}")
        return self

    @model_validator(mode="after")
    def _partitions_need_a_column(self) -> PipelineConfig:
        if self.partitions is not None and not self.partition_by:
            raise ValueError("`partitions` selects values of `partition_by`; set `partition_by` too")
        return self

    def arrow_schema(self) -> pa.Schema | None:
        return pa.schema([(n, arrow_type(t)) for n, t in self.columns.items()]) if self.columns else None


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The pipeline config from ``path`` (YAML) and ``overrides`` (flags); see :func:`load_model`."""
    return load_model(PipelineConfig, path, overrides, what="pipeline config")

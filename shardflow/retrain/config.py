"""The retraining job's typed configuration: one YAML holding the pipeline's and the training's
own configs plus a ``retrain:`` section that names every URL and the promotion rule."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from shardflow.configs import StrictModel, load_model
from shardflow.pipelines.config import PipelineConfig
from shardflow.training.config import TrainConfig

__all__ = ["ExportSpec", "PromotionRule", "RetrainConfig", "RetrainSection", "flag_overrides",
           "load_retrain_config"]


def _absolute(url: str) -> str:
    """Relative paths resolve against the current directory (records name where data really is);
    no trailing slash, so that one place has one name in every record."""
    return url.rstrip("/") if "://" in url else os.path.abspath(url)


class PromotionRule(StrictModel):
    """TFMA's change and value thresholds: promote when the candidate's metric is not worse than
    the promoted model's by more than ``max_regression``, and at least ``min_value`` if set."""

    metric: Literal["auc", "loss", "accuracy"] = "auc"  # loss: lower is better; the others higher
    max_regression: float = Field(0.001, ge=0)
    min_value: float | None = None


class ExportSpec(StrictModel):
    """What is exported of a promoted model (``shardflow checkpoints export``'s choices); the
    float SavedModel is always among it."""

    formats: list[Literal["saved_model", "tflite"]] = ["saved_model"]
    quantize: list[Literal["int8", "float16", "dynamic"]] = []
    prune: float | None = Field(None, gt=0, lt=1)


class RetrainSection(StrictModel):
    """Where everything lives and when a candidate is promoted."""

    raw: str  # raw input, partitioned `key=value/` (a committed dataset or a plain directory tree)
    partition_column: str = "day"
    dataset: str  # the training dataset: each new partition is appended as a new version
    checkpoint_dir: str  # checkpoints of the model being kept up to date (any URL)
    model_dir: str  # promoted exports, `_promotions/` and `_runs/` records (any URL)
    replay_days: int = Field(1, ge=0, description="partitions before the new ones trained on again")
    epochs: float = Field(1.0, gt=0, description="passes over the new partitions plus the replay")
    eval_rows: int | None = Field(200_000, gt=0, description="eval rows of the newest partitions scoring both models")
    promotion: PromotionRule = PromotionRule()
    export: ExportSpec = ExportSpec()
    work_dir: str = Field("shardflow-retrain", validate_default=True)  # local: the training's run directory, logs, scratch
    lease_seconds: float = Field(600.0, gt=0, description="a lease not renewed for this long is taken over")

    _absolute_urls = field_validator("raw", "dataset", "checkpoint_dir", "model_dir", "work_dir")(
        lambda cls, value: _absolute(value))


_SET_BY_RETRAIN = {"pipeline": ("input", "output", "storage_options", "partition_by", "partitions", "append"),
                   "train": ("data", "checkpoint_dir", "run_dir", "storage_options", "steps", "epochs", "partitions",
                             "run_name", "warm_start", "model_dir", "export")}


class RetrainConfig(StrictModel):
    """Everything ``shardflow retrain`` needs. ``pipeline`` and ``train`` are the configs of
    ``shardflow pipeline run`` and ``shardflow train``, less the URLs the ``retrain`` section names."""

    retrain: RetrainSection
    pipeline: PipelineConfig
    train: TrainConfig
    storage_options: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _fill_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("retrain"), dict):
            return data  # pydantic names what is missing
        section, options = data["retrain"], data.get("storage_options") or {}
        filled = dict(data)
        for name, fields in _SET_BY_RETRAIN.items():
            given = dict(data.get(name) or {})
            for key in fields:
                if key in given:
                    raise ValueError(f"`{name}.{key}` is set by retraining itself (from the `retrain` section: "
                                     "raw, dataset, checkpoint_dir, partition_column, epochs, ...); remove it")
            filled[name] = given
        run_dir = os.path.join(_absolute(str(section.get("work_dir", "shardflow-retrain"))), "train")
        filled["pipeline"].update(input=section.get("raw"), output=section.get("dataset"), storage_options=options)
        filled["train"].update(data=section.get("dataset"), checkpoint_dir=section.get("checkpoint_dir"),
                               run_dir=run_dir, storage_options=options)
        for sub in ("pipeline", "train"):
            filled[sub] = {k: _absolute(v) if k in ("input", "output", "data", "checkpoint_dir") and isinstance(v, str)
                           else v for k, v in filled[sub].items()}
        return filled


def flag_overrides(urls: dict[str, str | None], storage_options: dict[str, Any]) -> dict[str, Any]:
    """``load_retrain_config``'s overrides from the CLI's URL flags (those given) and ``-o`` options."""
    return {"retrain": {k: v for k, v in urls.items() if v is not None} or None,
            "storage_options": storage_options or None}


def load_retrain_config(path: str | None, overrides: dict[str, Any] | None = None) -> RetrainConfig:
    """The retrain config from ``path`` (YAML); ``overrides`` hold flag values for the
    ``retrain`` section (``raw``, ``dataset``, ``checkpoint_dir``, ``model_dir``) and
    ``storage_options``."""
    return load_model(RetrainConfig, path, overrides, what="retrain config")

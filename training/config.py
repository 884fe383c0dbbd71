"""The training job's typed configuration: YAML file, flag overrides, errors that name the field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from shardflow.configs import StrictModel, load_model

__all__ = ["CheckpointConfig", "ModelConfig", "TrainConfig", "WarmStart", "load_train_config"]


class ModelConfig(StrictModel):
    """The built-in click-through model, or a user model by import path."""

    function: str | None = None  # "module:function" receiving (InputSpec, ModelConfig); default: built-in
    hash_buckets: int = Field(1 << 20, gt=0, description="rows of the shared id embedding table")
    embedding_dim: int = Field(16, gt=0)
    hidden_units: list[int] = [256, 128]
    min_shard_bytes: int = Field(256 << 10, gt=0, description="variables larger than this are sharded across ps")


class CheckpointConfig(StrictModel):
    """When to checkpoint, and which checkpoints to keep."""

    every_steps: int | None = Field(1000, gt=0)
    every_seconds: float | None = Field(None, gt=0)
    keep: int = Field(3, gt=0, description="keep the last K committed checkpoints")
    keep_every_hours: float | None = Field(None, gt=0, description="and one every H hours of training")


class WarmStart(StrictModel):
    """Start from another run's model and optimizer (not its input positions: the data is new),
    whatever its number of workers or ps."""

    checkpoint_dir: str | None = None  # default: the run's own checkpoint_dir
    step: int = Field(ge=0)  # a committed checkpoint there


class TrainConfig(StrictModel):
    """Everything ``shardflow train`` needs; saved with the run (secrets scrubbed)."""

    data: str  # a committed dataset's URL
    checkpoint_dir: str | None = None  # default: <run_dir>/checkpoints
    run_dir: str = "shardflow-run"  # local: TensorBoard events, curves, config, export
    export_dir: str | None = None  # default: <run_dir>/export; any URL
    label: str | None = None  # default: the label the pipeline recorded, else "label"
    format: Literal["auto", "tfrecord", "parquet"] = "auto"  # auto: TFRecord when the dataset has it
    partitions: dict[str, list[str]] | None = None  # train and evaluate only on shards under these (`{day: [...]}`)
    # A run of its own in a checkpoint directory that holds others' checkpoints (retraining): its
    # checkpoint records carry the name, a rerun resumes only those, and `steps`/`epochs` count
    # from where it began (after the newest checkpoint there).
    run_name: str | None = None
    warm_start: WarmStart | None = None
    model_dir: str | None = None  # where retraining promotes this model's exports (noted in checkpoint records)
    export: bool = True  # write a SavedModel at the end (retraining exports only what it promotes)
    train_split: str = "train"
    eval_split: str | None = "eval"
    # A step under ParameterServerStrategy costs ps round trips whatever its size: 1024 rows
    # amortise them; the learning rate is scaled with the batch (README, "Model").
    batch_size: int = Field(1024, gt=0)
    steps: int | None = Field(None, gt=0, description="optimizer steps in total; default: from epochs")
    epochs: float = Field(1.0, gt=0)
    optimizer: Literal["adagrad", "adam", "sgd", "ftrl"] = "adagrad"
    learning_rate: float = Field(0.4, gt=0)
    shuffle_buffer: int = Field(8192, ge=0)
    seed: int = Field(0, ge=0)
    eval_every: int | None = Field(1000, gt=0, description="steps between evaluations")
    eval_rows: int | None = Field(200_000, gt=0, description="rows of the eval split used per evaluation")
    log_every: int = Field(50, gt=0, description="steps between progress and TensorBoard updates")
    steps_per_execution: int = Field(
        10, gt=0, description="steps per scheduled function, unrolled in one graph (fewer round trips; more take longer to trace)")
    checkpoint: CheckpointConfig = CheckpointConfig()
    model: ModelConfig = ModelConfig()
    cluster: Literal["none", "local", "tf-config"] = "none"
    workers: int = Field(2, gt=0)
    ps: int = Field(1, ge=0)
    strategy: Literal["auto", "parameter_server", "tpu", "mirrored", "default"] = "auto"
    max_restarts: int = Field(3, ge=0, description="restarts from the last checkpoint after a lost ps or a stall")
    # A hung task (stopped, deadlocked) stalls every step; TensorFlow waits on it forever (training/watchdog.py).
    stall_seconds: float | None = Field(600.0, gt=0, description="no progress this long ends the coordinator")
    cache_dir: str | None = None  # local shard cache for remote datasets; default: <run_dir>/cache
    cache_bytes: int = Field(20 << 30, gt=0)
    storage_options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.cluster == "local" and self.ps < 1:
            raise ValueError("a local cluster needs at least one ps (`ps` >= 1)")
        if self.warm_start and not self.run_name:  # else a rerun could not tell its checkpoints from the source's
            raise ValueError("`warm_start` needs `run_name`")
        return self

    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or f"{self.run_dir.rstrip('/')}/checkpoints"

    def resolved_cache_dir(self) -> str:
        return self.cache_dir or f"{self.run_dir.rstrip('/')}/cache"

    def resolved_export_dir(self) -> str:
        return self.export_dir or f"{self.run_dir.rstrip('/')}/export"


def load_train_config(path: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The training config from ``path`` (YAML) and ``overrides`` (flags)."""
    return load_model(TrainConfig, path, overrides, what="training config")

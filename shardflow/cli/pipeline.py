"""``shardflow pipeline``: shard, augment and write training datasets with Beam or Dask."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn

from shardflow.storage import parse_storage_options, redact_url

from .common import StorageOption, err, out, splits_table

pipeline_app = typer.Typer(help="Shard, augment and write training datasets with Beam or Dask.", no_args_is_help=True)


_TASK_ERROR_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker",
                       "apache_beam.runners.portability.fn_api_runner",
                       "apache_beam.runners.portability.local_job_service", "distributed.worker")


class _NoStrayTracebacks:
    """``sys.stderr`` while a pipeline runs: Beam's SDK worker prints a failed task's traceback
    straight to stderr (``sdk_worker._execute``), besides logging it."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def write(self, text: str) -> int:
        if text.startswith("Traceback (most recent call last):"):
            return len(text)
        return self._target.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


@contextlib.contextmanager
def _quiet_task_errors() -> Iterator[None]:
    """Engines log a failed task with its traceback; the failure reaches the user as one
    ``error:`` line anyway (``pipelines.stages.recorded_failure``), so that stays quiet unless
    ``--log-level`` asks for INFO or more."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        yield
        return
    def drop(record: logging.LogRecord) -> bool:  # a filter, as engines set their loggers' levels themselves
        return False

    loggers = [logging.getLogger(name) for name in _TASK_ERROR_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        with contextlib.redirect_stderr(_NoStrayTracebacks(sys.stderr)):
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def _parse_split(text: str) -> dict[str, float]:
    """``train=0.8,eval=0.2`` or ``0.8,0.1,0.1`` (train, eval, test)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        return dict(zip(("train", "eval", "test"), (float(p) for p in parts)))
    except ValueError:
        raise typer.BadParameter(f"{text!r}. Expected e.g. train=0.8,eval=0.2 or 0.8,0.1,0.1.",
                                 param_hint="'--split'") from None


@pipeline_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pipeline_run(
    ctx: typer.Context,
    config_file: Annotated[Optional[str], typer.Argument(help="YAML config; flags override it.", metavar="CONFIG.yaml")] = None,
    input: Annotated[Optional[str], typer.Option(help="Input URL: file, glob, directory or dataset.")] = None,
    output: Annotated[Optional[str], typer.Option(help="Output dataset URL.")] = None,
    engine: Annotated[Optional[str], typer.Option(help="beam or dask.")] = None,
    runner: Annotated[Optional[str], typer.Option(help="Beam runner (DirectRunner, DataflowRunner, ...).")] = None,
    dask_address: Annotated[Optional[str], typer.Option(help="Existing Dask scheduler, tcp://host:8786.")] = None,
    formats: Annotated[Optional[str], typer.Option(help="parquet, tfrecord or both: parquet,tfrecord.")] = None,
    shards: Annotated[Optional[int], typer.Option(help="Shards of the largest split.", min=1)] = None,
    rows_per_shard: Annotated[Optional[int], typer.Option(help="Target rows per shard.", min=1)] = None,
    bytes_per_shard: Annotated[Optional[int], typer.Option(help="Target bytes per shard.", min=1)] = None,
    label: Annotated[Optional[str], typer.Option(help="Label column (rows without one are bad).")] = None,
    split: Annotated[Optional[str], typer.Option(help="train=0.8,eval=0.2[,test=...].")] = None,
    split_key: Annotated[Optional[str], typer.Option(help="Column whose hash decides the split (default: the row).")] = None,
    augment_copies: Annotated[Optional[int], typer.Option(help="Augmented copies per training row.", min=0)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of split, shuffle and augmentation.", min=0)] = None,
    max_bad_fraction: Annotated[Optional[float], typer.Option(help="Fail above this fraction of bad rows.")] = None,
    input_format: Annotated[Optional[str], typer.Option(help="csv, jsonl or parquet (default: by extension).")] = None,
    partition_by: Annotated[Optional[str], typer.Option(help="Input partition column (key=value/ dirs): shards per value, under key=value/.")] = None,
    partitions: Annotated[Optional[str], typer.Option(help="Read only these values of --partition-by, comma-separated.")] = None,
    append: Annotated[bool, typer.Option("--append", help="Add to the dataset's current version instead of replacing it.")] = False,
    storage_option: StorageOption = None,
) -> None:
    """Parse, validate, split, shard, augment and write a committed dataset.

    Unknown --options are passed to Beam (--project, --region, --temp_location, --dry_run=True ...).
    """
    from shardflow.pipelines.config import load_config
    from shardflow.pipelines.run import DEAD_LETTER_DIR, run_pipeline

    overrides: dict[str, Any] = {
        "input": input, "output": output, "engine": engine, "runner": runner, "dask_address": dask_address,
        "formats": [f.strip() for f in formats.split(",")] if formats else None, "shards": shards,
        "rows_per_shard": rows_per_shard, "bytes_per_shard": bytes_per_shard, "label": label, "seed": seed,
        "max_bad_fraction": max_bad_fraction, "input_format": input_format, "partition_by": partition_by,
        "partitions": [p.strip() for p in partitions.split(",") if p.strip()] if partitions else None,
        "append": append or None,
        "split": {**(_parse_split(split) if split else {}), **({"key": split_key} if split_key else {})} or None,
        "augment": {"copies": augment_copies} if augment_copies is not None else None,
        "storage_options": parse_storage_options(storage_option or []) or None,
    }
    passthrough = list(ctx.args)
    if config_file and config_file.startswith("-"):  # an unknown option landed in the positional slot
        passthrough.insert(0, config_file)
        config_file = None
    if passthrough:
        overrides["beam_options"] = passthrough
    config = load_config(config_file, overrides)
    with _quiet_task_errors(), Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
                  TextColumn("{task.fields[info]}"), console=err, transient=True) as bar:
        tasks: dict[str, Any] = {}
        totals = {"rows": 0, "bad": 0}

        def progress(event: str, **counts: int) -> None:
            if event == "plan":
                tasks["file"] = bar.add_task(f"read ({config.engine})", total=counts["files"], info="")
                tasks["shard"] = bar.add_task("write shards", total=counts["shards"], info="")
            elif event in tasks:
                bar.advance(tasks[event])
                if event == "file":
                    totals["rows"] += counts.get("rows", 0)
                    totals["bad"] += counts.get("bad", 0)
                    elapsed = bar.tasks[tasks["file"]].elapsed or 1e-9
                    bar.update(tasks["file"], info=f"{totals['rows']:,} rows, {totals['bad']:,} bad, "
                                                   f"{totals['rows'] / elapsed:,.0f} rows/s")

        summary = run_pipeline(config, progress=progress)
    if summary.dry_run:
        out.print(f"[green]dry run[/]: built the {config.runner} job for {redact_url(config.output)}; nothing written")
        return
    out.print(splits_table(summary.manifest, f"{redact_url(config.output)} version {summary.manifest.version}"))
    out.print(f"[green]committed[/]: read {summary.rows_read:,} rows, {summary.bad_rows:,} bad "
              f"(in {DEAD_LETTER_DIR}/), in {summary.seconds:.1f} s ({summary.rows_read / max(summary.seconds, 1e-9):,.0f} rows/s)")



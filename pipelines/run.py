"""``shardflow pipeline run``: plan, run an engine, check bad rows, commit the dataset and its dead letters."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardflow.storage import DatasetWriter, Manifest, Shard, redact_url, write_parquet_shards
from shardflow.storage.commit import temp_token
from shardflow.storage.urls import join_url

from .config import PipelineConfig
from .engines import get_engine
from .sources import BAD_ROW_SCHEMA
from .stages import Plan, make_plan, read_bad_rows, recorded_failure, remove_staging

__all__ = ["run_pipeline", "RunSummary", "DEAD_LETTER_DIR"]

log = logging.getLogger(__name__)
DEAD_LETTER_DIR = "_dead_letter"


@dataclass
class RunSummary:
    """What a run read, rejected and wrote."""

    manifest: Manifest | None
    rows_read: int = 0
    bad_rows: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    rows_written: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    dry_run: bool = False


def _recorded_config(config: PipelineConfig) -> dict[str, Any]:
    recorded = config.model_dump(mode="json", exclude={"storage_options"})  # storage options hold credentials
    return {**recorded, "input": redact_url(config.input), "output": redact_url(config.output)}  # so may URLs


def run_pipeline(config: PipelineConfig, *, progress: Callable[..., None] | None = None) -> RunSummary:
    """Turn ``config.input`` into a committed dataset at ``config.output``.

    Raises:
        ValueError: bad rows above ``max_bad_fraction`` (the dead letters are committed for
            inspection; the dataset is not), or invalid configuration.
    """
    started = time.perf_counter()
    report = progress or (lambda event, **counts: None)
    plan = make_plan(config, temp_token())
    report("plan", files=len(plan.inputs), shards=sum(plan.shards.values()))
    if any(opt.startswith("--dry_run") and not opt.endswith(("False", "false")) for opt in config.beam_options):
        from .engines.beam import build_pipeline

        build_pipeline(plan).run()  # builds the job (e.g. a Dataflow request) without running it
        return RunSummary(manifest=None, dry_run=True, seconds=time.perf_counter() - started)
    recorded = _recorded_config(config)
    try:
        with DatasetWriter(config.output, name="shardflow pipeline run", params=recorded,
                           mode="append" if config.append else "overwrite",
                           storage_options=config.storage_options) as writer:
            try:
                maps, records = get_engine(config.engine)().run(plan, report)
            except Exception:
                failure = recorded_failure(plan)  # the task's own one-line error, not the engine's wrapping
                if failure is None:
                    raise
                raise failure from None
            summary = RunSummary(manifest=None, rows_read=sum(m.rows_read for m in maps),
                                 bad_rows=sum(m.bad_rows for m in maps))
            for m in maps:
                for reason, n in m.bad_reasons.items():
                    summary.bad_reasons[reason] = summary.bad_reasons.get(reason, 0) + n
                for split, n in m.rows_out.items():
                    summary.rows_written[split] = summary.rows_written.get(split, 0) + n
            dead = _commit_dead_letters(config, read_bad_rows(plan, [m.bad_url for m in maps if m.bad_url]))
            fraction = summary.bad_rows / summary.rows_read if summary.rows_read else 0.0
            if fraction > config.max_bad_fraction:
                top = ", ".join(f"{r} ({n})" for r, n in sorted(summary.bad_reasons.items(), key=lambda x: -x[1])[:5])
                raise ValueError(
                    f"{summary.bad_rows} of {summary.rows_read} rows are bad ({fraction:.2%}), above "
                    f"`max_bad_fraction` {config.max_bad_fraction:g}; nothing committed. Reasons: {top}. "
                    f"The rows and reasons are in {redact_url(dead)}.")
            split_order = {s: i for i, s in enumerate(plan.splits)}
            for split, _shard, _fmt, shard_json in sorted(records, key=lambda r: (split_order[r[0]], r[1], r[2])):
                writer.add(Shard.from_json(shard_json, where=redact_url(config.output)))
                summary.shards[split] = summary.shards.get(split, 0) + 1
            metadata = {"pipeline": {
                "rows_read": summary.rows_read, "bad_rows": summary.bad_rows, "bad_reasons": summary.bad_reasons,
                "rows_written": summary.rows_written, "dead_letter": DEAD_LETTER_DIR, "engine": config.engine,
                "seed": config.seed, "label": config.label, "formats": config.formats,
                "augment": config.augment.model_dump(mode="json"), "split": config.split.model_dump(mode="json"),
            }}
            summary.manifest = writer.commit(schema=plan.output_schema, metadata=metadata,
                                             inputs=[i.url for i in plan.inputs[:1000]],
                                             partitions=_input_partitions(plan))
    finally:
        remove_staging(plan)
    summary.seconds = time.perf_counter() - started
    return summary


def _input_partitions(plan: Plan) -> dict[str, list[str]]:
    """The ``key=value/`` partitions this run read: what its version adds, in the lineage."""
    values: dict[str, set[str]] = {}
    for source in plan.inputs:
        for key, value in source.partition.items():
            values.setdefault(key, set()).add(value)
    return {key: sorted(v) for key, v in sorted(values.items())}


def _commit_dead_letters(config: PipelineConfig, bad: Any) -> str:
    """Commit this run's bad rows (possibly none) as a dataset of their own beside the output."""
    url = join_url(config.output, DEAD_LETTER_DIR)
    with DatasetWriter(url, name="shardflow pipeline run (dead letters)", params={"output": redact_url(config.output)},
                       mode="append" if config.append else "overwrite",  # an append keeps earlier runs' bad rows
                       storage_options=config.storage_options) as writer:
        write_parquet_shards(writer, bad.to_batches(), split="dead_letter", schema=BAD_ROW_SCHEMA)
        writer.commit(schema=BAD_ROW_SCHEMA)
    return url

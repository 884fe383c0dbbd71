"""``shardflow retrain``: bring the model up to date with the raw partitions that arrived since
it was trained, and promote it only when it is at least as good as the one serving.

Every step finds its state in storage, never on the local disk, so a retrain killed at any
point and run again picks up where it stopped:

1. the raw partitions not yet in the dataset (the dataset's shards are under ``key=value/``);
2. the pipeline on those alone, appended as one new dataset version (its lineage entry names them);
3. training warm-started from the promoted checkpoint (else the latest) on the partitions no
   model has seen yet plus a replay of the ``replay_days`` before them; its checkpoints carry
   the run's name, so a rerun resumes them exactly;
4. candidate and promoted model scored on the same eval rows of the new partitions;
5. promotion (:mod:`.promotion`): export, then the promotion record, created exclusively;
6. a run record beside the promotions.

A lease at the dataset keeps it to one retrain at a time.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from shardflow.storage import CheckpointStore, Dataset, open_dataset, redact_url
from shardflow.storage.lease import LEASE_DIR, Lease
from shardflow.storage.records import Record
from shardflow.storage.urls import is_local, join_url, resolve

from .config import RetrainConfig
from .promotion import decide, promoted_step, promotions, runs

__all__ = ["EXIT_NOT_PROMOTED", "EXIT_OK", "RUN_PREFIX", "RetrainOutcome", "raw_partitions", "retrain"]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_NOT_PROMOTED = 0, 3  # and 1 failed, 2 bad input: for schedulers (README, "Retraining")
RUN_PREFIX = "retrain-"  # retraining names its training runs retrain-v<dataset version>

Say = Callable[[str], None]


@dataclass
class RetrainOutcome:
    decision: str  # "nothing to do", "promoted" or "not promoted"
    exit_code: int
    record: dict[str, Any] | None = None  # the run record (None when there was nothing to do)
    record_url: str | None = None
    reason: str = ""


@dataclass
class _Plan:
    """What this run trains on and from where."""

    dataset: Dataset
    pending: list[str]  # partitions no model has been trained on
    window: list[str]  # pending plus the replay
    base: Any  # the checkpoint record warm-started from (None: from scratch)
    base_dir: str  # its checkpoint directory
    promotion: Record | None  # the promotion serving now
    run: str
    timings: dict[str, float] = field(default_factory=dict)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def raw_partitions(config: RetrainConfig) -> list[str]:
    """The values of the partition column under the raw input, sorted.

    Raises:
        ValueError: nothing at the raw URL, no ``key=value/`` partitions there, or not the
            configured column, naming it.
    """
    from shardflow.pipelines.sources import list_inputs

    section = config.retrain
    try:
        inputs = list_inputs(section.raw, input_format=config.pipeline.input_format,
                             storage_options=config.storage_options)
    except FileNotFoundError as e:  # bad input, not a failure: nothing will appear there by retrying
        raise ValueError(f"Invalid value for `retrain.raw`: {e}") from None
    columns = sorted({key for i in inputs for key in i.partition})
    shown = redact_url(section.raw)
    if not columns:
        raise ValueError(f"Invalid value for `retrain.raw`: {shown} has no partitions (no `key=value/` "
                         f"directories above its files); retraining reads new partitions as they arrive.")
    missing = [i for i in inputs if section.partition_column not in i.partition]
    if missing:
        raise ValueError(f"Invalid value for `retrain.partition_column`: {section.partition_column!r}. "
                         f"{redact_url(missing[0].url)} is not under a `{section.partition_column}=VALUE/` directory "
                         f"(the raw input's partition columns: {', '.join(columns)}).")
    return sorted({i.partition[section.partition_column] for i in inputs})


def retrain(config: RetrainConfig, *, say: Say | None = None, train_progress: Callable[..., None] | None = None,
            ) -> RetrainOutcome:
    """Run the six steps (module docstring) once.

    Args:
        say: Receives one line per step, for people.
        train_progress: The trainer's ``progress`` callback, when it trains in this process.

    Raises:
        LeaseHeldError: another retrain of this dataset is running (the message names it).
        ValueError: bad configuration or input, naming it; anything else is a failure.
    """
    tell = say or (lambda line: None)
    section, options = config.retrain, config.storage_options
    started, clock = _now(), time.perf_counter()
    raw = raw_partitions(config)
    with Lease(join_url(section.dataset, LEASE_DIR), what="shardflow retrain", seconds=section.lease_seconds,
               storage_options=options) as lease:
        ingested, dataset = _ingest(config, raw, lease, tell)
        promotion, last_run = promotions(section.model_dir, options).latest(), runs(section.model_dir, options).latest()
        record = _interrupted_after_promotion(promotion, last_run)
        if record is not None:
            tell(f"{record['run']} was promoted (p{record['promotion']:08d}) but stopped before its run record")
        else:
            plan = _plan(config, dataset, promotion, last_run)
            if plan is None or not plan.pending:
                return RetrainOutcome("nothing to do", EXIT_OK, reason=(
                    f"every {section.partition_column} partition of {redact_url(section.raw)} is in "
                    f"{redact_url(section.dataset)} and trained on"))
            plan.timings["ingest"] = time.perf_counter() - clock
            record = _train_and_decide(config, plan, ingested, lease, tell, train_progress)
        lease.check()
        record.update(started_at=started, finished_at=_now())
        record["seconds"]["total"] = round(time.perf_counter() - clock, 2)
        written = runs(section.model_dir, options).append(record)
    return RetrainOutcome(record["decision"], record["exit_code"], written.data, redact_url(written.url))


def _train_and_decide(config: RetrainConfig, plan: _Plan, ingested: list[str], lease: Lease, tell: Say,
                      progress: Callable[..., None] | None) -> dict[str, Any]:
    """Steps 3 to 5; returns the run record's body."""
    candidate = _train(config, plan, tell, progress)
    os.makedirs(config.retrain.work_dir, exist_ok=True)
    # One scratch directory: the export scores the rows the evaluation prepared, from its cache.
    with tempfile.TemporaryDirectory(prefix="retrain-", dir=config.retrain.work_dir) as scratch:
        metrics, loaded = _evaluate(config, plan, candidate, scratch, tell)
        rule = config.retrain.promotion
        promote, reason = decide(rule, metrics["candidate"][rule.metric],
                                 metrics["promoted"][rule.metric] if metrics["promoted"] else None,
                                 baseline=metrics["baseline"] or "")
        tell(f"{'promote' if promote else 'keep the promoted model'}: {reason}")
        record = _summary(config, plan, candidate, metrics, promote, reason, ingested)
        if promote:
            record["promotion"] = _promote(config, plan, record, loaded, lease, scratch, tell).number
    return record


def _summary(config: RetrainConfig, plan: _Plan, candidate: dict[str, Any], metrics: dict[str, Any], promote: bool,
             reason: str, ingested: list[str]) -> dict[str, Any]:
    """The run record's body (and the promotion record's): what was trained, from where, the decision."""
    section = config.retrain
    return {
        "run": plan.run, "decision": "promoted" if promote else "not promoted", "reason": reason,
        "exit_code": EXIT_OK if promote else EXIT_NOT_PROMOTED,
        "dataset": {"url": redact_url(section.dataset), "version": plan.dataset.manifest.version},
        "partitions": {"column": section.partition_column, "ingested": ingested, "new": plan.pending,
                       "trained_on": plan.window},
        "steps": {"warm_start": plan.base.step if plan.base else None, "began_at": candidate["began_at"],
                  "final": candidate["step"]},
        "checkpoint": {"dir": redact_url(candidate["dir"]), "step": candidate["step"],
                       "url": redact_url(candidate["url"])},
        "metrics": metrics, "rule": section.promotion.model_dump(), "promotion": None,
        "seconds": {k: round(v, 2) for k, v in plan.timings.items()},
    }


def _interrupted_after_promotion(promotion: Record | None, last: Record | None) -> dict[str, Any] | None:
    """The run record of a run that committed its promotion record but stopped before its run
    record (there is nothing else left for it to do), or None; ``last`` is the newest run record."""
    if promotion is None:
        return None
    if last is not None and last.data["finished_at"] >= promotion.data["created_at"]:
        return None  # a run finished after this promotion: it was recorded
    fields = ("run", "decision", "reason", "dataset", "partitions", "steps", "checkpoint", "metrics", "rule")
    return {**{k: promotion.data[k] for k in fields}, "exit_code": EXIT_OK, "promotion": promotion.number,
            "seconds": {}}


def _ingest(config: RetrainConfig, raw: list[str], lease: Lease, tell: Say) -> tuple[list[str], Dataset | None]:
    """Step 1 and 2: append the raw partitions the dataset lacks, as one new version."""
    section = config.retrain
    dataset = _open(section.dataset, config.storage_options)
    column = section.partition_column
    outside = [s for s in dataset.manifest.shards if column not in s.partition] if dataset else []
    if outside:  # rows of such shards cannot be told by day: every day would be ingested again
        raise ValueError(f"Invalid value for `retrain.dataset`: {redact_url(section.dataset)} holds shards outside "
                         f"`{column}=VALUE/` ({outside[0].path}): it was not written per {column}. Write it with "
                         f"`shardflow pipeline run --partition-by {column}`, or give retrain a new dataset URL.")
    have = set(dataset.partitions(column)) if dataset else set()
    new = [p for p in raw if p not in have]
    if not new:
        return [], dataset
    from shardflow.pipelines.run import run_pipeline

    lease.check()
    tell(f"ingest {len(new)} new partition(s) of {redact_url(section.raw)}: {_span(new)}")
    pipeline = config.pipeline.model_copy(update={"partition_by": section.partition_column, "partitions": new,
                                                  "append": True})
    summary = run_pipeline(pipeline)
    assert summary.manifest is not None
    tell(f"  {summary.rows_read:,} rows read, {summary.bad_rows:,} bad → {redact_url(section.dataset)} version "
         f"{summary.manifest.version} in {summary.seconds:.1f} s")
    return new, _open(section.dataset, config.storage_options)


def _open(url: str, options: Mapping[str, Any]) -> Dataset | None:
    try:
        return open_dataset(url, storage_options=options)
    except FileNotFoundError:
        return None


def _span(values: list[str]) -> str:
    return values[0] if len(values) == 1 else f"{values[0]} … {values[-1]} ({len(values)})"


def _plan(config: RetrainConfig, dataset: Dataset | None, promotion: Record | None,
          last_run: Record | None) -> _Plan | None:
    """Step 3's inputs: which partitions are new to the model, the replay, the warm start."""
    if dataset is None:
        return None
    section, options = config.retrain, config.storage_options
    column = section.partition_column
    base_dir = section.checkpoint_dir
    if promotion is not None:
        base_dir = _checkpoint_dir(promotion.data["checkpoint"]["dir"], section.checkpoint_dir)
        base = CheckpointStore(base_dir, storage_options=options).find(promoted_step(promotion))
    else:  # the newest model a person trained: a retrain's candidates serve only once promoted
        trained = [c for c in CheckpointStore(base_dir, storage_options=options).list()
                   if not str((c.metadata.get("run") or {}).get("name", "")).startswith(RUN_PREFIX)]
        base = trained[-1] if trained else None
    seen_version = max(_trained_version(base, dataset), int(last_run.data["dataset"]["version"]) if last_run else 0)
    covered = _partitions_until(dataset, column, seen_version)
    present = dataset.partitions(column)
    pending = [p for p in present if p not in covered]
    before = [p for p in present if p < pending[0]] if pending else []
    window = before[len(before) - section.replay_days:] + pending if section.replay_days else pending
    return _Plan(dataset=dataset, pending=pending, window=window, base=base, base_dir=base_dir, promotion=promotion,
                 run=f"{RUN_PREFIX}v{dataset.manifest.version:08d}")


def _checkpoint_dir(recorded: str, configured: str) -> str:
    """A record's (redacted) checkpoint directory as a URL to read: the configured one when it is that."""
    return configured if recorded == redact_url(configured) else recorded


def _trained_version(record: Any, dataset: Dataset) -> int:
    """The version of this dataset that a checkpoint's model was trained on (0: another dataset or none)."""
    if record is None:
        return 0
    trained = record.metadata.get("dataset") or {}
    return int(trained.get("version") or 0) if trained.get("url") == redact_url(dataset.url) else 0


def _partitions_until(dataset: Dataset, column: str, version: int) -> set[str]:
    """Partitions that versions up to ``version`` added (from the lineage, which appends carry forward)."""
    covered: set[str] = set()
    for entry in dataset.manifest.lineage:
        if int(entry.get("version", 0)) <= version:
            covered.update((entry.get("partitions") or {}).get(column, []))
    return covered


def _train(config: RetrainConfig, plan: _Plan, tell: Say, progress: Callable[..., None] | None) -> dict[str, Any]:
    """Step 3: train (resuming this run's own checkpoints if it was cut short); returns the
    candidate checkpoint's step, directory URL and where the run began."""
    from shardflow.training.config import WarmStart

    section = config.retrain
    warm = WarmStart(checkpoint_dir=None if plan.base_dir == section.checkpoint_dir else plan.base_dir,
                     step=plan.base.step) if plan.base is not None else None
    train_config = config.train.model_copy(update={
        "partitions": {section.partition_column: plan.window}, "run_name": plan.run, "warm_start": warm,
        "model_dir": section.model_dir, "export": False, "steps": None, "epochs": section.epochs})
    start = f"warm start from step {plan.base.step}" if plan.base is not None else "from scratch"
    tell(f"train on {_span(plan.window)} ({len(plan.pending)} new, {len(plan.window) - len(plan.pending)} replayed), "
         f"{section.epochs:g} epoch(s), {start}, {train_config.cluster} cluster")
    clock = time.perf_counter()
    _run_training(train_config, progress)
    plan.timings["train"] = time.perf_counter() - clock
    store = CheckpointStore(section.checkpoint_dir, storage_options=config.storage_options)
    latest = store.latest()
    run = (latest.metadata.get("run") or {}) if latest is not None else {}
    if latest is None or run.get("name") != plan.run:
        raise RuntimeError(f"training ended without committing a checkpoint of {plan.run} in "
                           f"{redact_url(section.checkpoint_dir)}")
    tell(f"  trained to step {latest.step:,} in {plan.timings['train']:.1f} s")
    return {"step": latest.step, "dir": section.checkpoint_dir, "url": store.url_of(latest),
            "began_at": run.get("began_at", 0)}


def _run_training(train_config: Any, progress: Callable[..., None] | None) -> None:
    from shardflow.training.cluster import LocalCluster

    if train_config.cluster == "local":
        with _stdout_to_stderr():  # the coordinator's summary table is not this command's output (--json)
            code = LocalCluster(train_config).run()
        if code:
            raise RuntimeError(f"training failed (coordinator exit code {code}); task logs are in "
                               f"{train_config.run_dir}/logs")
        return
    from shardflow.training.strategy import parse_tf_config
    from shardflow.training.trainer import train

    train(train_config, cluster=parse_tf_config() if train_config.cluster == "tf-config" else None, progress=progress)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 pointed at stderr for the block, for the child processes it starts too."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _quiet_tensorflow() -> None:
    """As ``train`` does; and the runtime started (its GPU probe writes to fd 2) with that hidden."""
    from shardflow.training import quiet_native_stderr
    from shardflow.training._tf import quiet_python_warnings, tf

    quiet_python_warnings(log)
    with quiet_native_stderr():
        tf.zeros([])


def _new_partitions(config: RetrainConfig, plan: _Plan) -> Dataset:
    return plan.dataset.select({config.retrain.partition_column: plan.pending})


def _evaluate(config: RetrainConfig, plan: _Plan, candidate: dict[str, Any], scratch: str,
              tell: Say) -> tuple[dict[str, Any], Any]:
    """Step 4: both models on the same eval rows of the new partitions. Returns the scores and
    the candidate as loaded (what step 5 exports)."""
    _quiet_tensorflow()
    from shardflow.training.evaluation import evaluate_model, predict_logits, split_data
    from shardflow.training.inputs import ShardReader
    from shardflow.training.state import load_checkpoint

    section, options = config.retrain, config.storage_options
    newest = _new_partitions(config, plan)
    split = config.train.eval_split or "eval"
    if split not in newest.manifest.splits():
        raise ValueError(f"{redact_url(section.dataset)}: the new partitions have no {split!r} rows to compare the "
                         f"models on (splits: {sorted(newest.manifest.splits())}); give the pipeline an eval split.")
    clock = time.perf_counter()
    # The model serving now: the promoted one, else the checkpoint the candidate started from.
    scores: dict[str, Any] = {"rows": None, "partitions": plan.pending, "split": split,
                              "baseline": "promoted" if plan.promotion else "latest checkpoint" if plan.base else None}
    kept = None
    for role, directory, step in (("candidate", candidate["dir"], candidate["step"]),
                                  ("promoted", plan.base_dir if plan.base else None,
                                   plan.base.step if plan.base else None)):
        if directory is None:
            scores[role] = None
            continue
        loaded = load_checkpoint(directory, step=step, local_dir=os.path.join(scratch, role), storage_options=options,
                                 with_optimizer=role == "candidate" and section.export.prune is not None)
        if role == "candidate":
            kept = loaded
        reader = ShardReader(newest, loaded.spec, cache_dir=os.path.join(scratch, "cache"), cache_bytes=64 << 30)
        data = split_data(newest, loaded.spec, reader, split=split, rows=section.eval_rows)
        metrics = evaluate_model(predict_logits(loaded.model), data)
        scores["rows"] = int(metrics.pop("rows", 0)) or scores["rows"]
        scores[role] = {"step": step, **{k: round(float(v), 6) for k, v in metrics.items()}}
    plan.timings["evaluate"] = time.perf_counter() - clock
    shown = ", ".join(f"{scores['baseline'] if role == 'promoted' else role} {scores[role][section.promotion.metric]:.4f}"
                      for role in ("candidate", "promoted") if scores[role])
    tell(f"evaluate on {scores['rows']:,} {split} rows of {_span(plan.pending)}: {section.promotion.metric} {shown}")
    return scores, kept


def _promote(config: RetrainConfig, plan: _Plan, summary: dict[str, Any], loaded: Any, lease: Lease, scratch: str,
             tell: Say) -> Record:
    """Step 5: export the candidate (unless a cut-short run already did), then the promotion record."""
    section, options = config.retrain, config.storage_options
    clock = time.perf_counter()
    candidate = summary["checkpoint"]
    location = _export(config, plan, loaded, scratch, tell)
    plan.timings["export"] = summary["seconds"]["export"] = round(time.perf_counter() - clock, 2)
    lease.check()
    record = promotions(section.model_dir, options).append({
        **{k: v for k, v in summary.items() if k not in ("promotion", "seconds", "exit_code")}, "created_at": _now(),
        "export": location, "previous": {"number": plan.promotion.number, "step": promoted_step(plan.promotion)}
        if plan.promotion else None})
    tell(f"promoted step {candidate['step']:,}: {redact_url(record.url)} → {location}")
    return record


def _export(config: RetrainConfig, plan: _Plan, loaded: Any, scratch: str, tell: Say) -> str:
    """The candidate's export under ``MODEL_DIR/exports/<step>``, committed whole (or the one a
    cut-short run committed)."""
    from shardflow.training.export import export_checkpoint

    section, options = config.retrain, config.storage_options
    step = loaded.record.step
    dest = join_url(section.model_dir, "exports", str(step))
    fs, path = resolve(dest, options)
    if is_local(fs):
        if os.path.exists(os.path.join(path, "report.json")):  # renamed into place whole
            return path
    else:
        store = CheckpointStore(dest, storage_options=options)
        if step in store.steps():
            return redact_url(store.url_of(store.find(step)))
    spec = section.export
    tell(f"export step {step:,}: {', '.join(spec.formats)}"
         + (f", quantized {', '.join(spec.quantize)}" if spec.quantize else "")
         + (f", pruned {spec.prune:g}" if spec.prune else ""))
    report = export_checkpoint(loaded, dest, formats=spec.formats, quantize=spec.quantize, prune=spec.prune,
                               data=_new_partitions(config, plan), split=config.train.eval_split or "eval",
                               eval_rows=section.eval_rows, storage_options=options, work_dir=scratch)
    return redact_url(report.location)

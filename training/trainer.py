"""The training loop: one code path for every strategy.

Under ParameterServerStrategy this runs in the coordinator (TF_CONFIG task ``chief``): steps
are scheduled onto workers with a ``ClusterCoordinator`` (asynchronous SGD; variables, the
embedding table sharded, live on the ps tasks). Otherwise steps run in this process under the
selected strategy. Either way:

* each worker reads its own shards (see :mod:`.inputs`), and how many batches each worker
  consumed is a variable saved with every checkpoint, so a resumed run skips exactly those;
* every step measures how long it waited for its batch: the input stall (:func:`timed_steps`);
* checkpoints are asynchronous and uploaded in the background (:mod:`.checkpointing`);
* evaluation (loss, AUC, accuracy) runs in this process on the eval split.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from shardflow.storage import CheckpointStore, ShardflowError, open_dataset
from shardflow.storage.urls import redact_url, scrub

from ._tf import quiet_python_warnings, tf
from .checkpointing import CheckpointStats, CheckpointWriter, restore, restore_newest_intact
from .config import TrainConfig
from .evaluation import evaluate_model, predict_logits, split_data
from .export import export_saved_model
from .failures import record_failure, supervised
from .inputs import InputSpec, ShardReader, choose_format, make_dataset, training_data, worker_shards
from .report import plot_curves
from .state import TrainState, build_state, checkpoint_layout, plain_copy
from .strategy import ClusterSpec, make_strategy
from .watchdog import StallWatchdog

__all__ = ["LOST_CLUSTER", "TrainSummary", "timed_steps", "train", "synth_optimum"]

log = logging.getLogger(__name__)

Progress = Callable[..., None]

# What a coordinator sees when a ps is gone: only new ps and coordinator processes recover (DESIGN.md fact 8).
LOST_CLUSTER = (tf.errors.UnavailableError, tf.errors.CancelledError)


@dataclass
class TrainSummary:
    strategy: str
    start_step: int
    steps: int
    examples: int = 0  # after the first logged steps; start-up, tracing, saves, evaluations excluded
    seconds: float = 0.0
    input_stall: float = 0.0
    resumed_from: int | None = None
    evaluations: list[dict[str, float]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoints: CheckpointStats = field(default_factory=CheckpointStats)
    optimum_auc: float | None = None
    sharded: dict[str, int] = field(default_factory=dict)  # variable -> shards across the ps tasks
    export_path: str | None = None
    curves_path: str | None = None

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0


def synth_optimum(dataset: Any) -> float | None:
    """The best achievable AUC that ``shardflow data synth`` recorded for this data or its input."""
    synth = dataset.manifest.metadata.get("synth")
    if synth:
        return float(synth["optimal_auc"])
    for entry in reversed(dataset.manifest.lineage):
        source = (entry.get("params") or {}).get("input")
        if source:
            try:
                upstream = open_dataset(source, storage_options=dataset.storage_options)
            except (OSError, ValueError):
                return None
            synth = upstream.manifest.metadata.get("synth")
            return float(synth["optimal_auc"]) if synth else None
    return None


def save_run_config(config: TrainConfig) -> str:
    """The resolved config, secrets scrubbed, as ``<run_dir>/config.yaml``."""
    os.makedirs(config.run_dir, exist_ok=True)
    data = config.model_dump(mode="json")
    data["storage_options"] = scrub(config.storage_options)
    path = os.path.join(config.run_dir, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


class _ClosureDataLoss(logging.Filter):
    """ClusterCoordinator logs a failed closure's error, graph trace and gRPC text included, before
    raising it here; a DataLossError is raised as one line naming the shard instead, so its log
    record is left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "when processing closure: DataLossError" not in record.getMessage()


def train(config: TrainConfig, *, cluster: ClusterSpec | None = None, progress: Progress | None = None) -> TrainSummary:
    """Train on ``config.data`` until ``config.steps`` (or the epochs) are done, resuming from the
    latest committed checkpoint in ``config.checkpoint_dir``; evaluate, export, report.

    Args:
        cluster: The cluster this process coordinates (it must be its ``chief``), or None.
        progress: ``progress(event, **values)`` with events ``start``, ``step``, ``eval``, ``checkpoint``.

    Raises:
        ChecksumMismatchError: a shard read is corrupt, naming it (and the offset, for TFRecord).
    """
    quiet = _ClosureDataLoss()
    tf.get_logger().addFilter(quiet)
    try:
        return _train(config, cluster=cluster, progress=progress)
    except (ShardflowError, OSError, ValueError) as e:
        if supervised():  # the supervisor of a local cluster shows it as the last line
            record_failure(config.run_dir, str(e))
        raise
    finally:
        tf.get_logger().removeFilter(quiet)


def _train(config: TrainConfig, *, cluster: ClusterSpec | None, progress: Progress | None) -> TrainSummary:
    report = progress or (lambda event, **values: None)
    quiet_python_warnings(log)
    dataset = training_data(config)
    spec = InputSpec.from_dataset(dataset, config.label)
    fmt = choose_format(dataset, config.train_split, config.format)
    train_shards = [s for s in dataset.shards(config.train_split) if s.format.startswith(fmt)]
    train_rows = sum(s.rows for s in train_shards)
    save_run_config(config)

    strategy, strategy_name = make_strategy(config.strategy, cluster=cluster, min_shard_bytes=config.model.min_shard_bytes)
    ps_mode = strategy_name == "parameter_server"
    workers = cluster.workers if ps_mode and cluster else 1
    # Batches one step takes: one per worker step under ParameterServerStrategy, one per replica
    # otherwise (a mirrored or TPU step splits its global batch over the replicas).
    batches_per_step = 1 if ps_mode else strategy.num_replicas_in_sync
    run_steps = config.steps or max(1, math.ceil(config.epochs * train_rows / (config.batch_size * batches_per_step)))
    with strategy.scope():
        state = build_state(spec, config, workers=workers)
    model, optimizer, positions, checkpoint = state.model, state.optimizer, state.positions, state.checkpoint
    store = CheckpointStore(config.resolved_checkpoint_dir(), storage_options=config.storage_options)
    local_checkpoints = os.path.join(config.run_dir, "checkpoints-local")
    restored, began = _resume(state, store, config, workers=workers,
                              local_dir=os.path.join(local_checkpoints, "restored"))
    # The configured rate, not the one restored with the optimizer: a retrain may change it.
    optimizer.learning_rate.assign(config.learning_rate)
    total_steps = began + run_steps if config.run_name else run_steps  # a named run counts from where it began
    start_step = int(optimizer.iterations.numpy())
    layout = checkpoint_layout(checkpoint)
    summary = TrainSummary(strategy=strategy_name, start_step=start_step, steps=start_step, sharded=_sharded(layout),
                           resumed_from=restored.step if restored else None, optimum_auc=synth_optimum(dataset))

    reader = ShardReader(dataset, spec, cache_dir=config.resolved_cache_dir(), cache_bytes=config.cache_bytes)
    compressed = any(s.format.endswith(".gz") for s in train_shards)

    def worker_dataset(worker: int) -> tf.data.Dataset:
        shards, striped = worker_shards(train_shards, worker, workers)
        paths = [reader.path(s) for s in shards] if ps_mode else reader.prepare(shards)
        # One seed for all: workers striping the same files must read them in the same order. The
        # skip is read from the variable when the dataset is made, which TensorFlow does again for
        # a worker that restarts: it goes on from where it stopped, not from where the run began.
        ds = make_dataset(paths, fmt, spec, batch_size=config.batch_size, shuffle_buffer=config.shuffle_buffer,
                          seed=config.seed, skip_batches=positions[worker], compressed=compressed,
                          stripe=(worker, workers) if striped else None)
        return ds.map(lambda features, label: (features, label, tf.constant(worker, tf.int32)))

    iterator, dispatch, join, fetch = _dispatcher(strategy, ps_mode, workers, worker_dataset)
    watchdog = StallWatchdog(config.stall_seconds if ps_mode and cluster else None, config.run_dir)
    dispatch, join, fetch = (watchdog.timed(f) for f in (dispatch, join, fetch))
    global_batch = config.batch_size * strategy.num_replicas_in_sync

    def replica_step(features: dict[str, tf.Tensor], labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = model(features, training=True)
            per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
            loss = tf.nn.compute_average_loss(per_row, global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        # Done once the gradients are: the updates may still be on their way to the ps.
        with tf.control_dependencies([g for g in tf.nest.flatten(grads, expand_composites=True) if g is not None]):
            return tf.identity(loss)

    def one_step(features: dict[str, tf.Tensor], labels: tf.Tensor, worker: tf.Tensor) -> tf.Tensor:
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(features, labels)), axis=None)
        with tf.control_dependencies([loss]):
            positions.assign_add(tf.one_hot(worker if ps_mode else 0, workers, dtype=tf.int64) * batches_per_step)
        return loss

    step_functions: dict[int, Any] = {}

    def train_steps(k: int) -> Any:
        if k not in step_functions:
            step_functions[k] = timed_steps(k, one_step)
        return step_functions[k]

    eval_data = _eval_data(config, dataset, spec, reader)
    logits_of = predict_logits(model)

    def evaluate(step: int) -> dict[str, float]:
        metrics = {"step": float(step), **evaluate_model(logits_of, eval_data)}
        summary.evaluations.append(metrics)
        with writer_tb.as_default(step=step):
            for name in ("loss", "auc", "accuracy"):
                tf.summary.scalar(f"eval/{name}", metrics[name])
        report("eval", **metrics)
        return metrics

    writer_tb = tf.summary.create_file_writer(os.path.join(config.run_dir, "tensorboard"))
    same_store = config.warm_start and config.warm_start.checkpoint_dir in (None, config.resolved_checkpoint_dir())
    uploader = CheckpointWriter(checkpoint, store, local_dir=local_checkpoints, keep=config.checkpoint.keep,
                                keep_every_hours=config.checkpoint.keep_every_hours,
                                protect=(config.warm_start.step,) if same_store else ())
    report("start", start_step=start_step, total_steps=total_steps, strategy=strategy_name, workers=workers,
           resumed_from=summary.resumed_from, format=fmt)
    recorded = _recorded_settings(config, dataset, spec, workers=workers, ps=cluster.ps if ps_mode and cluster else 0,
                                  layout=layout, sharded=summary.sharded)
    if config.run_name:  # a rerun of this run resumes the checkpoints that carry its name
        recorded["run"] = {"name": config.run_name, "began_at": began,
                           "warm_start": config.warm_start.step if config.warm_start else None}

    def state(at: int) -> dict[str, Any]:
        """Noted in each checkpoint's record: where every worker's input stood, what training
        knew then (last loss, an evaluation at that step), what it was built from."""
        consumed = positions.numpy().tolist()
        last = summary.evaluations[-1] if summary.evaluations else None
        evaluation = last if last and last["step"] == at else None  # evaluations run before saves
        return {**recorded, "batches_consumed": consumed, "examples": sum(consumed) * config.batch_size,
                "train_loss": summary.history[-1]["loss"] if summary.history else None,
                "eval": {k: v for k, v in evaluation.items() if k != "step"} if evaluation else None}

    step = start_step
    pending: list[tuple[int, Any]] = []
    waits = totals = 0.0
    paused = 0.0  # seconds spent saving checkpoints and evaluating

    def training_clock() -> float:
        """Seconds that count for examples/s: saves and evaluations left out."""
        return time.perf_counter() - paused

    loop_started = last_log = training_clock()
    last_checkpoint = time.perf_counter()
    logged_step = step
    warm: tuple[float, int] | None = None  # (training clock, step) at the first log: tracing excluded

    def crossed(every: int | None, before: int) -> bool:
        return bool(every) and step // every > before // every and step < total_steps

    # Reads from the cluster block for good behind a hung task: an evaluation's, a save's (not its upload).
    evaluate, state, save = (watchdog.timed(f) for f in (evaluate, state, uploader.save))
    with watchdog:  # a hung task blocks a call into the cluster for good
        try:
            while step < total_steps:
                k = min(config.steps_per_execution, total_steps - step)
                pending.append((k, dispatch(train_steps(k), iterator)))
                before, step = step, step + k
                if crossed(config.log_every, before) or step == total_steps:
                    values = [(k, fetch(v)) for k, v in pending]
                    pending.clear()
                    now = training_clock()
                    wait = sum(float(v[1]) for _, v in values)
                    busy = sum(float(v[2]) for _, v in values)
                    waits, totals = waits + wait, totals + busy
                    point = {"step": float(step), "loss": float(np.average([v[0] for _, v in values],
                                                                           weights=[k for k, _ in values])),
                             "examples_per_s": (step - logged_step) * global_batch / max(now - last_log, 1e-9),
                             "input_stall": wait / busy if busy else 0.0}
                    summary.history.append(point)
                    with writer_tb.as_default(step=step):
                        for name in ("loss", "examples_per_s", "input_stall"):
                            tf.summary.scalar(f"train/{name}", point[name])
                    report("step", **point, total_steps=total_steps)
                    last_log, logged_step = now, step
                    warm = warm or (now, step)
                due_time = config.checkpoint.every_seconds and \
                    time.perf_counter() - last_checkpoint >= config.checkpoint.every_seconds and step < total_steps
                if crossed(config.eval_every, before) and eval_data is not None:  # first: its metrics go in the record
                    join()
                    evaluating = time.perf_counter()
                    evaluate(step)
                    paused += time.perf_counter() - evaluating
                if crossed(config.checkpoint.every_steps, before) or due_time:
                    join()  # a consistent state: no step half applied
                    blocked = save(step, state(step))
                    paused += blocked
                    last_checkpoint = time.perf_counter()
                    report("checkpoint", step=step, blocked=blocked)
            join()
            since, first = warm if warm is not None and warm[1] < step else (loop_started, start_step)
            summary.seconds = training_clock() - since
            summary.steps = int(optimizer.iterations.numpy())
            summary.examples = (step - first) * global_batch
            summary.input_stall = waits / totals if totals else 0.0
            if eval_data is not None:
                evaluate(summary.steps)
            if step > start_step or restored is None:
                blocked = save(summary.steps, state(summary.steps))
                report("checkpoint", step=summary.steps, blocked=blocked)
            uploader.wait()
        except BaseException as e:
            try:
                uploader.close()
            except Exception as upload_error:  # the error already on its way out is the one to report
                log.warning("saving checkpoints failed too: %s", upload_error)
            if isinstance(e, tf.errors.DataLossError):  # it names an offset, not the file: find the file
                raise reader.corrupt_shard_error(train_shards + _eval_shards(config, dataset), e) from e
            raise
        else:
            uploader.close()
        finally:
            writer_tb.flush()
    summary.checkpoints = uploader.stats
    if config.export:
        summary.export_path = export_saved_model(plain_copy(model, spec, config), spec, config.resolved_export_dir(),
                                                 step=summary.steps, storage_options=config.storage_options)
    if summary.history:
        summary.curves_path = plot_curves(summary.history, summary.evaluations,
                                          os.path.join(config.run_dir, "curves.png"),
                                          f"{redact_url(config.data)}: {strategy_name}, {workers} worker(s)")
    return summary


def _resume(state: TrainState, store: CheckpointStore, config: TrainConfig, *, workers: int,
            local_dir: str) -> tuple[Any, int]:
    """Restore where this run stands: its own latest intact committed checkpoint in ``store``
    (all of it, input positions too; a corrupt newer one is skipped with a warning and set
    aside); else, for a new run, the ``warm_start`` checkpoint's model and optimizer, or nothing.

    Returns:
        The record of the checkpoint resumed (None for a new run), and the step this run began
        at (0 for an unnamed run: its steps are absolute).
    """
    name = config.run_name

    def ours(record: Any) -> bool:
        return name is None or (record.metadata.get("run") or {}).get("name") == name

    def same_workers(record: Any) -> None:
        if record.metadata.get("workers", workers) != workers:  # input positions are per worker
            raise ValueError(f"The checkpoint at step {record.step} in {redact_url(store.url)} was written by "
                             f"{record.metadata.get('workers')} workers; resume with the same number (got {workers}).")

    resumed = restore_newest_intact(state.checkpoint, store, local_dir=local_dir, belongs=ours, check=same_workers)
    if resumed is not None:
        return resumed, int(resumed.metadata["run"]["began_at"]) if name else 0
    latest = store.latest()  # another run's, if any
    warm = config.warm_start
    if warm is not None:
        source = CheckpointStore(warm.checkpoint_dir or store.url, storage_options=config.storage_options)
        restore(tf.train.Checkpoint(model=state.model, optimizer=state.optimizer), source, source.find(warm.step),
                local_dir=local_dir, partial=True)
    # Steps of one store only go up: a new run numbers its own after the newest checkpoint there.
    began = max(warm.step if warm else 0, latest.step if latest is not None else 0)
    state.optimizer.iterations.assign(began)
    return None, began


def _dispatcher(strategy: Any, ps_mode: bool, workers: int,
                worker_dataset: Callable[[int], tf.data.Dataset]) -> tuple[Any, Callable[..., Any], Callable[[], None],
                                                                          Callable[[Any], Any]]:
    """``(iterator, dispatch(fn, *args), join(), fetch(value))``: steps scheduled onto the
    workers by a ClusterCoordinator under ParameterServerStrategy, run here otherwise."""
    if not ps_mode:
        iterator = iter(strategy.distribute_datasets_from_function(lambda _: worker_dataset(0)))
        return (iterator, lambda fn, *args: fn(*args), lambda: None,
                lambda value: tf.nest.map_structure(lambda t: t.numpy(), value))
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    # One dataset per worker, each read only by its own worker: tf.distribute gives a dataset
    # function no worker index, so pick worker w's iterator out of the w-th per-worker dataset.
    iterators = [iter(coordinator.create_per_worker_dataset(lambda w=w: worker_dataset(w))) for w in range(workers)]
    per_worker = tf.distribute.experimental.coordinator.PerWorkerValues(
        tuple(iterators[w]._values[w] for w in range(workers)))
    return (per_worker, lambda fn, *args: coordinator.schedule(fn, args=args), coordinator.join,
            lambda value: value.fetch())


def timed_steps(k: int, step: Callable[..., tf.Tensor]) -> Any:
    """A ``tf.function(iterator)`` running ``step(*next(iterator))`` ``k`` times (one round trip
    for k steps); returns the mean loss, the seconds spent waiting for batches and the seconds
    of all k steps: their ratio is the input stall.

    A wait runs from the end of the previous step to the arrival of the batch; for that,
    ``step`` returns its loss only once its own work is done (its gradients computed). Under
    ParameterServerStrategy the ps may still be applying those gradients then, so a wait can
    overlap that: there the stall is an upper bound. The steps are unrolled, not a
    ``tf.range`` loop: with variables on the ps such a loop is a while loop spanning
    processes, measured slower (1 worker + 1 ps here, batch 512, in turns: 24.7-28.7k
    examples/s unrolled against 22.9-25.5k).
    """

    @tf.function
    def run(iterator: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        loss = tf.constant(0.0)
        waited = tf.constant(0.0, tf.float64)
        first = started = tf.timestamp()
        for _ in range(k):
            batch = next(iterator)  # may be fetched while the previous step runs
            with tf.control_dependencies(tf.nest.flatten(batch, expand_composites=True)):  # per-replica values too
                got_batch = tf.timestamp()
            step_loss = step(*batch)
            with tf.control_dependencies([step_loss]):
                finished = tf.timestamp()
            loss += step_loss
            waited += got_batch - started
            started = finished
        return loss / k, waited, started - first

    return run


def _sharded(layout: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The model's variables split across parameter servers (by the ``variable_partitioner``),
    by name, with their shard counts (optimizer slots follow their variables)."""
    return {v["name"]: v["shards"] for key, v in layout.items() if key.startswith("model/") and v["shards"] > 1}


def _recorded_settings(config: TrainConfig, dataset: Any, spec: InputSpec, *, workers: int, ps: int,
                       layout: dict[str, dict[str, Any]], sharded: dict[str, int]) -> dict[str, Any]:
    """What every checkpoint record of this run names: enough to rebuild the model without a
    cluster (settings, columns), where its data came from, how it was sharded. No secrets."""
    settings = config.model_dump(mode="json", exclude={"storage_options"})
    for key in ("checkpoint_dir", "run_dir", "export_dir", "cache_dir", "model_dir"):  # URLs may carry credentials
        settings[key] = redact_url(settings[key]) if settings[key] else settings[key]
    if settings.get("warm_start") and settings["warm_start"]["checkpoint_dir"]:
        settings["warm_start"]["checkpoint_dir"] = redact_url(settings["warm_start"]["checkpoint_dir"])
    data = os.path.abspath(config.data) if "://" not in config.data else redact_url(config.data)
    settings["data"] = data
    return {"workers": workers, "ps": ps, "sharded": sharded, "variables": layout,
            "dataset": {"url": data, "version": dataset.manifest.version},
            "train_config": settings, "input_spec": {"feature_spec": dict(spec.feature_spec), "label": spec.label}}


def _eval_shards(config: TrainConfig, dataset: Any) -> list[Any]:
    """The shards evaluation reads (in the format it reads), for finding a corrupt one."""
    if not config.eval_split or config.eval_split not in dataset.manifest.splits():
        return []
    fmt = choose_format(dataset, config.eval_split, config.format)
    return [s for s in dataset.shards(config.eval_split) if s.format.startswith(fmt)]


def _eval_data(config: TrainConfig, dataset: Any, spec: InputSpec, reader: ShardReader) -> tf.data.Dataset | None:
    """The eval split, read here (by the coordinator), capped at ``eval_rows``."""
    if not config.eval_split or config.eval_split not in dataset.manifest.splits():
        return None
    return split_data(dataset, spec, reader, split=config.eval_split, fmt=config.format, rows=config.eval_rows)

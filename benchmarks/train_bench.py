"""Benchmark training: input pipelines, parameter-server training and checkpoints, against bare baselines.

For N rows of synth data run through the pipeline to Parquet and TFRecord (train/eval split),
every figure below is compared with a baseline measured in this process, on the same data:

  1. TFRecord input (examples/s): ``make_dataset(..., "tfrecord")`` (interleaved reads, 8192-row
     shuffle, parse, label split, about one epoch) over the train shards, against a bare
     ``TFRecordDataset(num_parallel_reads=AUTOTUNE) → batch(512) → map(parse_example) →
     prefetch`` with the same parse spec. Each is drained 3 times, in turns with the others;
     the best run counts.
  2. Parquet input (examples/s): ``make_dataset(..., "parquet")`` over the columnar cache that
     ``ShardReader.prepare`` decodes the Parquet train shards into, against the same bare
     TFRecord baseline. The read ratio EXCLUDES that one-time decode, reported on its own
     (rows/s of ``prepare``).
  3. Parameter-server training (examples/s), three sides run in turns ``--rounds`` times
     (default 3; the best run of each counts, every round's figures are printed): the trainer
     on a local cluster of 1 worker and 1 ps (real processes, started by
     ``LocalCluster.start_tasks`` as ``shardflow train --cluster local`` starts them, the
     coordinator a process of its own); the peer a TensorFlow user writes, ``model.fit`` of the
     same tf_keras model (stock optimizer) under ParameterServerStrategy on a
     ``DatasetCreator`` of the same TFRecord shards, on the same kind of cluster; and
     ``trainer.train`` in this process with no strategy. Same steps, at the training's default
     batch size (``--batch``). Each rate is timed from the first progress report (tracing
     done) to the last, and so is each process's CPU (``/proc/PID/stat``), printed as CPU µs
     per example for the worker, the ps and the coordinator: the figure that carries over to
     a cluster, where they do not share 2 cores.
  4. Checkpoint upload (MB/s, MB = 10^6 bytes) to a local S3 test server (moto): a ~256 MiB
     TensorFlow checkpoint published with ``CheckpointStore.publish``, against a raw
     ``fs.put_file`` of the same files. Each is run twice, in turns; the better run counts.
  5. Training blocked by a checkpoint (s): ``CheckpointWriter.save`` (asynchronous write and
     upload), against a synchronous ``tf.train.Checkpoint.write`` plus ``publish`` of the same
     state to the same server. Median of 3 saves each.

The JSON holds each figure under its key (``input_tfrecord``, ``input_parquet``, ``train_ps``,
``train_fit``, ``upload``, ``blocked``; ``train_rounds`` has every training run with its CPU),
its baseline under ``<key>_baseline`` and the ratio under ``<key>_over_baseline``, beside
``parquet_prepare_rows_per_s`` and ``checkpoint_mb``. The 1-minute load average is printed (and saved) too: on a shared machine the figures vary from run to run.

Usage: python benchmarks/train_bench.py [--rows N] [--steps S] [--batch B] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from shardflow.training import quiet_native_stderr

with quiet_native_stderr():  # TensorFlow's C++ start-up banner
    import tensorflow as tf
import yaml

from shardflow.pipelines.config import load_config
from shardflow.pipelines.run import run_pipeline
from shardflow.pipelines.synth import SynthConfig, synthesize
from shardflow.storage import CheckpointStore, Dataset, open_dataset, resolve
from shardflow.training.checkpointing import CheckpointWriter
from shardflow.training.config import TrainConfig, load_train_config
from shardflow.training.inputs import InputSpec, ShardReader, make_dataset
from shardflow.training.trainer import train

BATCH = 512  # input pipelines; training runs at the training's default (see --batch)
SHUFFLE = 8192
READS = 3  # full reads of each input pipeline, in turns; the best counts (this machine's speed varies)
MODEL = {"hash_buckets": 1 << 18, "embedding_dim": 16, "hidden_units": [256, 128]}  # both training runs
S3_KEY, S3_SECRET, BUCKET = "bench-key", "bench-secret", "shardflow-bench"


@dataclass(frozen=True)
class Check:
    """One measured figure against its baseline, and the ratio it should reach."""

    name: str
    unit: str
    key: str  # results key of the measured figure; the baseline is "<key>_baseline"
    target: float
    digits: int  # decimals printed
    lower_is_better: bool = False

    def met(self, ratio: float) -> bool:
        return ratio <= self.target if self.lower_is_better else ratio >= self.target


CHECKS = [
    Check("TFRecord input", "examples/s", "input_tfrecord", 0.9, 0),
    Check("Parquet input (read only)", "examples/s", "input_parquet", 1.0, 0),
    Check("PS training ÷ one process", "examples/s", "train_ps", 0.85, 0),
    Check("PS training ÷ model.fit", "examples/s", "train_fit", 1.2, 0),
    Check("checkpoint upload", "MB/s", "upload", 0.9, 1),
    Check("training blocked by checkpoint", "s", "blocked", 0.05, 3, lower_is_better=True),
]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_data(tmp: str, rows: int) -> str:
    """Synth data through the pipeline to a dataset with Parquet and TFRecord shards; its path."""
    raw, out = os.path.join(tmp, "raw"), os.path.join(tmp, "ds")
    per_shard = max(rows // 5, 1000)  # 80 % train: 4 train shards
    synthesize(raw, SynthConfig(rows=rows, days=2, rows_per_shard=per_shard))
    run_pipeline(load_config(None, {"input": raw, "output": out, "label": "label", "formats": ["parquet", "tfrecord"],
                                    "rows_per_shard": per_shard}))
    return out


# -- 1, 2: input pipelines -------------------------------------------------------------------
def drain(dataset: tf.data.Dataset, label: str) -> int:
    """Rows in ``dataset``, read to the end."""
    rows = 0
    for batch in dataset:
        labels = batch[1] if isinstance(batch, tuple) else batch[label]
        rows += int(labels.shape[0])
    return rows


def best_rates(makers: dict[str, Callable[[], tf.data.Dataset]], label: str) -> dict[str, float]:
    """Rows/s of each maker's dataset read to the end: the best of ``READS`` reads, taken in turns
    so that a slow spell of the machine hits every pipeline alike."""
    best = dict.fromkeys(makers, 0.0)
    for _ in range(READS):
        for name, make in makers.items():
            dataset = make()
            start = time.perf_counter()
            rows = drain(dataset, label)
            best[name] = max(best[name], rows / (time.perf_counter() - start))
    return best


def bare_tfrecord(files: list[str], spec: InputSpec) -> tf.data.Dataset:
    parse_spec = spec.parse_spec()
    return (tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).batch(BATCH)
            .map(lambda b: tf.io.parse_example(b, parse_spec), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def ours(paths: list[str], fmt: str, spec: InputSpec, batches: int) -> tf.data.Dataset:
    return make_dataset(paths, fmt, spec, batch_size=BATCH, shuffle_buffer=SHUFFLE, seed=0).take(batches)


def bench_inputs(dataset: Dataset, tmp: str, results: dict[str, float]) -> None:
    spec = InputSpec.from_dataset(dataset, None)
    reader = ShardReader(dataset, spec, cache_dir=os.path.join(tmp, "cache"), cache_bytes=1 << 30)
    shards = {fmt: [s for s in dataset.shards("train") if s.format == fmt] for fmt in ("tfrecord", "parquet")}
    rows = sum(s.rows for s in shards["tfrecord"])
    batches = rows // BATCH  # one epoch (make_dataset drops the last partial batch)
    tfrecord = reader.prepare(shards["tfrecord"])  # local TFRecord shards: read in place
    start = time.perf_counter()
    parquet = reader.prepare(shards["parquet"])  # the one-time decode into the columnar cache
    results["parquet_prepare_rows_per_s"] = rows / (time.perf_counter() - start)
    rates = best_rates({"baseline": lambda: bare_tfrecord(tfrecord, spec),
                        "input_tfrecord": lambda: ours(tfrecord, "tfrecord", spec, batches),
                        "input_parquet": lambda: ours(parquet, "parquet", spec, batches)}, spec.label)
    results["input_tfrecord"], results["input_parquet"] = rates["input_tfrecord"], rates["input_parquet"]
    results["input_tfrecord_baseline"] = results["input_parquet_baseline"] = rates["baseline"]


# -- 3: parameter-server training ------------------------------------------------------------
SIDES = ("single", "ps", "fit")  # one process; shardflow on 1 worker + 1 ps; model.fit on the same cluster
SIDE_NAMES = {"single": "one process", "ps": "shardflow 1w+1ps", "fit": "model.fit 1w+1ps"}


def train_overrides(data: str, run_dir: str, steps: int, batch: int, cluster: str) -> dict[str, Any]:
    return {"data": data, "run_dir": run_dir, "steps": steps, "eval_split": None, "cluster": cluster,
            "workers": 1, "ps": 1, "batch_size": batch, "checkpoint": {"every_steps": 10**9}, "log_every": 50,
            "export": False, "model": MODEL}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Window:
    """The timed part of a training run: wall time, examples and each process's CPU seconds,
    from the first ``mark`` (after tracing and warm-up) to the last."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.marks: list[tuple[float, int, dict[str, float]]] = []  # (perf_counter, examples so far, CPU by process)

    def mark(self, examples: int) -> None:
        self.marks.append((time.perf_counter(), examples, {k: cpu_seconds(p) for k, p in self.pids.items()}))

    def result(self) -> dict[str, Any]:
        (t0, n0, cpu0), (t1, n1, cpu1) = self.marks[0], self.marks[-1]
        examples = n1 - n0
        return {"examples_per_s": examples / (t1 - t0), "examples": examples, "seconds": t1 - t0,
                "cpu_us_per_example": {k: 1e6 * (cpu1[k] - cpu0[k]) / examples for k in self.pids}}


def shardflow_window(config: TrainConfig, pids: dict[str, int], cluster: Any = None) -> dict[str, Any]:
    """``trainer.train``, timed from its first progress report (tracing done) to its last."""
    window = Window(pids)
    started = 0.0

    def progress(event: str, **values: Any) -> None:
        nonlocal started
        if event == "start":
            started = time.perf_counter()
        elif event == "step":
            window.mark(int(values["step"]) * config.batch_size)

    train(config, cluster=cluster, progress=progress)
    result = window.result()
    # The first report comes after tracing and the first log_every steps: what it took beyond
    # those steps at the steady rate is the cost of tracing the step function (and warming up).
    first = window.marks[0]
    result["trace_s"] = first[0] - started - first[1] / result["examples_per_s"]
    return result


def fit_window(config: TrainConfig, cluster: Any, pids: dict[str, int]) -> dict[str, Any]:
    """The peer a TensorFlow user writes (the ParameterServerStrategy tutorial): the same tf_keras
    model, compiled with the same optimizer settings in tf_keras's stock implementation (so the
    ratio includes shardflow's fused Adagrad) and steps per execution, trained by ``model.fit`` on
    a ``DatasetCreator`` of the same TFRecord shards. Epochs of ``log_every`` steps, so it syncs
    as often as the trainer does; timed from the end of the first epoch (tracing done) to the end
    of the last."""
    from shardflow.training._tf import tf_keras
    from shardflow.training.model import build_model
    from shardflow.training.strategy import make_strategy

    dataset = open_dataset(config.data)
    spec = InputSpec.from_dataset(dataset, config.label)
    files = [dataset.shard_path(s) for s in dataset.shards(config.train_split) if s.format == "tfrecord"]
    parse_spec, label = spec.parse_spec(), spec.label

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        def parse(records: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
            rows = tf.io.parse_example(records, parse_spec)
            return {n: t for n, t in rows.items() if n != label}, tf.cast(rows[label], tf.float32)

        ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        ds = ds.shuffle(config.shuffle_buffer, seed=config.seed).repeat()
        ds = ds.batch(context.get_per_replica_batch_size(config.batch_size), drop_remainder=True)
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    strategy, _ = make_strategy("parameter_server", cluster=cluster, min_shard_bytes=config.model.min_shard_bytes)
    with strategy.scope():
        model = build_model(spec, config.model)
        optimizer = tf_keras.optimizers.get({"class_name": config.optimizer,  # the stock one, as a user writes it
                                             "config": {"learning_rate": config.learning_rate}})
        model.compile(optimizer=optimizer, loss=tf_keras.losses.BinaryCrossentropy(from_logits=True),
                      steps_per_execution=config.steps_per_execution)
    window = Window(pids)
    per_epoch = config.log_every
    epoch_ends = tf_keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: window.mark((epoch + 1) * per_epoch * config.batch_size))
    model.fit(tf_keras.utils.experimental.DatasetCreator(dataset_fn), epochs=max(2, config.steps // per_epoch),
              steps_per_epoch=per_epoch, callbacks=[epoch_ends], verbose=0)
    return window.result()


def coordinate(side: str, config_path: str, out: str, pids: str) -> None:
    """The coordinator process of a cluster run (``--coordinator``): TF_CONFIG names it chief."""
    from shardflow.training.strategy import parse_tf_config

    cluster = parse_tf_config()
    config = load_train_config(config_path)
    processes = {"coordinator": os.getpid(), **{k: int(v) for k, v in (kv.split("=") for kv in pids.split(","))}}
    result = shardflow_window(config, processes, cluster) if side == "ps" else fit_window(config, cluster, processes)
    with open(out, "w") as f:
        json.dump(result, f)


def cluster_run(side: str, config: TrainConfig, tmp: str) -> dict[str, Any]:
    """One run of ``side`` on a fresh local cluster of 1 worker and 1 ps, started as ``shardflow
    train --cluster local`` starts it (:meth:`LocalCluster.start_tasks`), its coordinator a
    process of its own as there."""
    from shardflow.children import death_signal
    from shardflow.training.cluster import LocalCluster

    os.makedirs(tmp, exist_ok=True)
    config_path, out = os.path.join(tmp, f"{side}.yaml"), os.path.join(tmp, f"{side}.json")
    with open(config_path, "w") as f:
        yaml.safe_dump({**config.model_dump(mode="json"), "cluster": "tf-config"}, f)
    local = LocalCluster(config)
    try:
        addresses = local.start_tasks()
        pids = ",".join(f"{t.job}={t.process.pid}" for t in local.tasks if t.process is not None)
        proc = subprocess.run([sys.executable, __file__, "--coordinator", side, config_path, out, pids],
                              env=local.task_env(addresses, "chief", 0), capture_output=True, text=True, timeout=900,
                              preexec_fn=death_signal())
    finally:
        local.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"the {SIDE_NAMES[side]} coordinator exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def one_round(data: str, tmp: str, steps: int, batch: int) -> dict[str, dict[str, Any]]:
    """Each side once, in turns, on fresh run directories (a used one would resume)."""
    runs: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        config = load_train_config(None, train_overrides(data, os.path.join(tmp, side), steps, batch,
                                                         "none" if side == "single" else "local"))
        runs[side] = (shardflow_window(config, {"total": os.getpid()}) if side == "single"
                      else cluster_run(side, config, tmp))
    return runs


def round_line(run: int, runs: dict[str, dict[str, Any]]) -> str:
    rate = {side: runs[side]["examples_per_s"] for side in SIDES}
    cpu = "; ".join(f"{SIDE_NAMES[side]} " + ", ".join(f"{k} {v:.1f}" for k, v in runs[side]["cpu_us_per_example"].items())
                    for side in SIDES)
    return (f"  round {run}: " + ", ".join(f"{SIDE_NAMES[s]} {rate[s]:,.0f}" for s in SIDES) + " examples/s; "
            f"shardflow/one process {rate['ps'] / rate['single']:.3f}, shardflow/model.fit {rate['ps'] / rate['fit']:.3f}"
            f"\n    CPU µs per example: {cpu}")


def bench_training(data: str, tmp: str, steps: int, batch: int, rounds: int, results: dict[str, Any]) -> None:
    history = []
    for run in range(1, rounds + 1):
        history.append(one_round(data, os.path.join(tmp, f"train-{run}"), steps, batch))
        print(round_line(run, history[-1]), flush=True)
    best = {side: max(h[side]["examples_per_s"] for h in history) for side in SIDES}
    results["train_ps"] = results["train_fit"] = best["ps"]
    results["train_ps_baseline"], results["train_fit_baseline"] = best["single"], best["fit"]
    results["train_rounds"] = history


# -- 4, 5: checkpoints on the S3 test server --------------------------------------------------
@contextlib.contextmanager
def s3_server() -> Iterator[dict[str, Any]]:
    """moto's S3 server on a free loopback port with one bucket; yields the storage options."""
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET,
               "client_kwargs": {"region_name": "us-east-1"}}
    finally:
        server.stop()


def local_files(directory: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(directory) for f in files)


def bench_upload(checkpoint: tf.train.Checkpoint, tmp: str, options: dict[str, Any], results: dict[str, float]) -> None:
    local = os.path.join(tmp, "upload")
    checkpoint.write(os.path.join(local, "ckpt"))
    files = local_files(local)
    megabytes = sum(os.path.getsize(f) for f in files) / 1e6
    store = CheckpointStore(f"s3://{BUCKET}/upload", storage_options=options)
    fs, root = resolve(f"s3://{BUCKET}/raw-upload", options)

    def raw_put(run: int) -> None:
        for path in files:
            fs.put_file(path, f"{root}/{run}/{os.path.relpath(path, local)}")

    ours, raw = [], []
    for run in (1, 2):  # alternated, so neither gets a warmer server or page cache
        ours.append(megabytes / timed(partial(store.publish, local, run)))
        raw.append(megabytes / timed(partial(raw_put, run)))
    results["upload"], results["upload_baseline"] = max(ours), max(raw)
    results["checkpoint_mb"] = megabytes


def sync_save(variable: tf.Variable, directory: str, store: CheckpointStore, step: int) -> float:
    """Seconds to write the checkpoint and publish it, as a synchronous trainer would be blocked."""
    def save() -> None:
        tf.train.Checkpoint(v=variable).write(os.path.join(directory, "ckpt"))
        store.publish(directory, step)

    return timed(save)


def bench_blocking(variable: tf.Variable, tmp: str, options: dict[str, Any], results: dict[str, float],
                   saves: int = 3) -> None:
    store = CheckpointStore(f"s3://{BUCKET}/async", storage_options=options)
    writer = CheckpointWriter(tf.train.Checkpoint(v=variable), store, local_dir=os.path.join(tmp, "async"), keep=2)
    blocked = []
    try:
        for step in range(1, saves + 1):
            blocked.append(writer.save(step))
            writer.wait()  # committed before the next save, as after a stretch of training steps
    finally:
        writer.close()
    sync_store = CheckpointStore(f"s3://{BUCKET}/sync", storage_options=options)
    synchronous = [sync_save(variable, os.path.join(tmp, f"sync-{step}"), sync_store, step)
                   for step in range(1, saves + 1)]
    results["blocked"] = statistics.median(blocked)
    results["blocked_baseline"] = statistics.median(synchronous)


def bench_checkpoints(tmp: str, results: dict[str, float]) -> None:
    variable = tf.Variable(tf.random.normal([1 << 24, 4]))  # 256 MiB of float32
    with s3_server() as options:
        bench_upload(tf.train.Checkpoint(v=variable), tmp, options, results)
        bench_blocking(variable, tmp, options, results)


# -- report ----------------------------------------------------------------------------------
def print_table(results: dict[str, float], rows: int, steps: int, batch: int, path: str) -> None:
    print(f"training benchmark, {rows:,} rows of synth data, {steps} training steps of {batch} rows, "
          f"{os.cpu_count()} cores "
          f"(1-min load average {results['load_average_start']:.1f} at start, {os.getloadavg()[0]:.1f} at end)")
    print(f"  {'':32s}{'unit':>11s}{'measured':>12s}{'baseline':>12s}{'ratio':>8s}{'target':>9s}")
    for check in CHECKS:
        ratio = results[f"{check.key}_over_baseline"]
        target = f"{'<=' if check.lower_is_better else '>='} {check.target:g}"
        measured, baseline = (f"{results[k]:>12,.{check.digits}f}" for k in (check.key, f"{check.key}_baseline"))
        print(f"  {check.name:32s}{check.unit:>11s}{measured}{baseline}{ratio:>8.3f}{target:>9s}  "
              f"{'met' if check.met(ratio) else 'NOT met'}")
    for side, name in (("single", "one process"), ("fit", "model.fit")):
        rounds = [f"{r['ps']['examples_per_s'] / r[side]['examples_per_s']:.3f}" for r in results["train_rounds"]]
        print(f"  PS training ÷ {name}, each round (in turns): {', '.join(rounds)}")
    print(f"  Parquet read excludes the one-time decode into the columnar cache: "
          f"{results['parquet_prepare_rows_per_s']:,.0f} rows/s")
    print(f"  checkpoint size {results['checkpoint_mb']:,.0f} MB; written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=600, help="training steps of each training run")
    parser.add_argument("--batch", type=int, default=TrainConfig.model_fields["batch_size"].default,
                        help="batch size of the training runs (default: the training's default)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each training, in turns (best counts)")
    parser.add_argument("--json", default="bench-results/train.json")
    parser.add_argument("--coordinator", nargs=4, metavar=("SIDE", "CONFIG", "OUT", "PIDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.coordinator:  # a cluster run's coordinator process (cluster_run)
        coordinate(*args.coordinator)
        return
    results: dict[str, Any] = {"rows": args.rows, "steps": args.steps, "batch": args.batch,
                               "load_average_start": os.getloadavg()[0]}
    with quiet_native_stderr():  # the first device query logs a cuInit error on a machine without a GPU
        tf.config.list_physical_devices()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(tmp, args.rows)
        bench_inputs(open_dataset(data), tmp, results)
        bench_training(data, tmp, args.steps, args.batch, args.rounds, results)
        bench_checkpoints(tmp, results)
    for check in CHECKS:
        results[f"{check.key}_over_baseline"] = results[check.key] / results[f"{check.key}_baseline"]
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print_table(results, args.rows, args.steps, args.batch, args.json)


if __name__ == "__main__":
    main()

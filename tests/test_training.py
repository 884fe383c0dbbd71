"""Training: real ps/worker processes on 127.0.0.1, checkpoints on the S3 test server, resume, export."""

from __future__ import annotations

import collections
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from shardflow.pipelines.config import load_config
from shardflow.pipelines.run import run_pipeline
from shardflow.storage import CheckpointStore, open_dataset, resolve

from .conftest import run_cli
from tests.helpers import SHARDFLOW_EXE, committed_clicks, train_config
from tests.helpers.processes import tagged_processes

SMALL_MODEL = {"hash_buckets": 4096, "embedding_dim": 4, "hidden_units": [16], "min_shard_bytes": 4096}


@pytest.fixture(scope="module")
def clicks(tmp_path_factory) -> str:
    """A committed dataset with TFRecord and Parquet shards: 4 train shards, 1 eval shard."""
    return committed_clicks(tmp_path_factory.mktemp("train-data"), rows=30_000, days=2, raw_rows_per_shard=15_000,
                            rows_per_shard=6_000)


def _config(tmp_path, **settings) -> str:
    return train_config(tmp_path, SMALL_MODEL, eval_rows=2000, **settings)


@pytest.fixture(autouse=True)
def _process_tag(process_tag: str) -> str:
    """Every test here tags its processes (conftest ``process_tag``)."""
    return process_tag


def _tagged(*needles: bytes) -> list[int]:
    """Pids of this test's processes whose command line or environment hold every needle."""
    return tagged_processes(os.environ["SHARDFLOW_TEST_TAG"], *needles)


def _cluster_processes() -> list[int]:
    """This test's running ``shardflow train`` / ``train-server`` processes."""
    return _tagged(b"shardflow\0train")


def test_strategy_follows_the_hardware_unless_named() -> None:
    from shardflow.training.strategy import ClusterSpec, select_strategy

    cluster = ClusterSpec({"chief": ["h:1"], "worker": ["h:2"], "ps": ["h:3"]}, "chief", 0)
    assert select_strategy("auto", cluster=cluster, tpus=0, gpus=0) == "parameter_server"
    assert select_strategy("auto", cluster=cluster, tpus=0, gpus=4) == "parameter_server"  # GPU workers allowed
    assert select_strategy("auto", cluster=None, tpus=8, gpus=0) == "tpu"
    assert select_strategy("auto", cluster=None, tpus=0, gpus=2) == "mirrored"
    assert select_strategy("auto", cluster=None, tpus=0, gpus=1) == "default"
    assert select_strategy("auto", cluster=None, tpus=0, gpus=0) == "default"
    assert select_strategy("mirrored", cluster=None, tpus=0, gpus=0) == "mirrored"
    with pytest.raises(ValueError, match="needs a cluster with ps tasks"):
        select_strategy("parameter_server", cluster=None, tpus=0, gpus=0)


@pytest.mark.parametrize(("tf_config", "message"), [
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "chief", "index": 0}}', "non-empty `cluster`"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', r"cluster.worker\[0\]"),
    ('{"cluster": {"worker": ["h:1"], "boss": ["h:2"]}, "task": {"type": "worker"}}', "job 'boss'"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 3}}', "must be 0..0"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "ps", "index": 0}}', "not a job in the cluster"),
    ('{"cluster": {"worker": ["h:1"]}}', "needs a `task`"),
])
def test_bad_tf_config_says_what_is_wrong(tf_config: str, message: str) -> None:
    from shardflow.training.strategy import parse_tf_config

    with pytest.raises(ValueError, match=message):
        parse_tf_config(tf_config)


def test_cli_rejects_bad_tf_config_in_one_line(clicks, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}')
    proc = run_cli("train", _config(tmp_path), "--data", clicks, "--tf-config", check=False)
    assert proc.returncode == 2
    assert "TF_CONFIG.cluster has ps tasks but no worker tasks" in proc.stderr and "Traceback" not in proc.stderr
    monkeypatch.setenv("TF_CONFIG", "[1, 2")
    proc = run_cli("train-server", check=False)
    assert proc.returncode == 2 and "TF_CONFIG is not valid JSON" in proc.stderr


class _Gates:
    """Events by name, set on one side of an input pipeline and waited for on the other."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, int], threading.Event] = collections.defaultdict(threading.Event)
        self._lock = threading.Lock()

    def _event(self, name: str, n: int) -> threading.Event:
        with self._lock:
            return self._events[(name, n)]

    def set(self, name: str, n: int) -> None:
        self._event(name, n).set()

    def wait(self, name: str, n: int) -> None:
        if not self._event(name, n).wait(60):
            raise TimeoutError(f"{name} {n} never happened")


STALL_T = 0.1  # seconds: long beside a busy machine's scheduling delays


@pytest.mark.parametrize("case, low, high", [
    ("input-bound", 0.8, 1.0),  # a batch takes T to make, a step no time: nearly all the time is waiting
    ("compute-bound", 0.0, 0.15),  # a step takes T and ends only once the next batch is made
    ("overlapped", 0.25, 0.75),  # a batch takes 2T from the start of the step before it (T): (2T - T) / 2T
])
def test_input_stall_is_the_share_of_step_time_spent_waiting_for_batches(case, low, high) -> None:
    """Each case is arranged by events, not by racing sleeps: in the compute-bound case the
    next batch exists before a step ends; in the overlapped one a batch is begun only when the
    step before it begins. The sleeps only give each side a duration."""
    import tensorflow as tf

    from shardflow.training.trainer import timed_steps

    k, gates = 3, _Gates()
    gates.set("step started", -1)

    def make(x: tf.Tensor) -> tf.Tensor:  # batch number x
        n = int(x.numpy())
        if case == "input-bound":
            time.sleep(STALL_T)
        elif case == "overlapped":
            gates.wait("step started", n - 1)
            time.sleep(2 * STALL_T)
        gates.set("batch made", n)
        return x

    def work(y: tf.Tensor) -> tf.Tensor:  # the step on batch y / 2
        n = int(y.numpy()) // 2
        if case == "compute-bound":
            gates.wait("batch made", n + 1)
        elif case == "overlapped":
            gates.set("step started", n)
        time.sleep(STALL_T)
        return y

    data = tf.data.Dataset.range(10**6).map(lambda i: tf.py_function(make, [tf.cast(i, tf.float32)], tf.float32))
    iterator = iter(data.map(lambda x: (x, 2 * x)).prefetch(1))
    step = (lambda x, y: y) if case == "input-bound" else (lambda x, y: tf.py_function(work, [y], tf.float32))
    steps = timed_steps(k, step)
    steps(iterator)  # traced, and the prefetch buffer in its steady state
    losses, stalls = [], []
    for _ in range(3):
        loss, waited, busy = (float(t) for t in steps(iterator))
        losses.append(loss)
        stalls.append(waited / busy)
    assert losses == [2 * (k * n + (k - 1) / 2) for n in (1, 2, 3)]  # the mean of 2x over each call's k batches
    assert low <= sorted(stalls)[1] <= high, stalls


def test_each_worker_reads_its_own_shards(clicks) -> None:
    from shardflow.training.inputs import worker_shards

    shards = open_dataset(clicks).shards("train")
    parts = [worker_shards(shards, w, 3)[0] for w in range(3)]
    assert sorted(s.path for part in parts for s in part) == sorted(s.path for s in shards)
    assert all(len(part) >= 2 for part in parts)
    assert not {s.path for s in parts[0]} & {s.path for s in parts[1]}
    few, striped = worker_shards(shards[:1], 1, 2)  # fewer shards than workers: every worker, its stripe of rows
    assert few == shards[:1] and striped


def test_workers_striping_the_same_shards_read_each_row_once(clicks, tmp_path) -> None:
    """More workers than shards: every worker reads every shard and keeps its stripe of rows;
    with shuffling on, the stripes still split one epoch exactly (the trainer seeds them alike)."""
    from collections import Counter

    from shardflow.training.inputs import InputSpec, ShardReader, make_dataset, worker_shards

    dataset = open_dataset(clicks)
    spec = InputSpec.from_dataset(dataset, None)
    shards = [s for s in dataset.shards("train") if s.format == "tfrecord"]
    workers = len(shards) + 2
    paths = ShardReader(dataset, spec, cache_dir=str(tmp_path / "cache"), cache_bytes=1 << 30).prepare(shards)

    def rows(ds) -> Counter:
        return Counter(repr(row) for features, _ in ds  # repr: NaN (a null) equals itself only as text
                       for row in zip(*(features[n].numpy().tolist() for n in ("C1", "C2", "C3", "I1", "I2"))))

    everything = rows(make_dataset(paths, "tfrecord", spec, batch_size=500, repeat=False))
    read = Counter()
    for worker in range(workers):
        mine, striped = worker_shards(shards, worker, workers)
        assert striped and len(mine) == len(shards)
        read += rows(make_dataset(paths, "tfrecord", spec, batch_size=500, shuffle_buffer=1000, seed=7, repeat=False,
                                  stripe=(worker, workers)))
    assert read == everything and sum(read.values()) == sum(s.rows for s in shards)


MIRRORED_ON_TWO_CPUS = """
import json, sys, time
import tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)
from shardflow.training import trainer
from shardflow.training.config import load_train_config
# The one substitution: MirroredStrategy over the two logical CPUs (it picks GPUs, or one CPU, by itself).
trainer.make_strategy = lambda *a, **k: (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), "mirrored")
summary = trainer.train(load_train_config(sys.argv[1]))
# The input stall sees per-replica batches: with a slow input, nearly all the time is waiting.
def slow(x):
    time.sleep(0.1)  # long beside the step (a constant) even on a busy machine
    return x
data = tf.data.Dataset.range(10**6).map(lambda i: (tf.py_function(slow, [tf.cast(i, tf.float32)], tf.float32),))
iterator = iter(trainer.make_strategy()[0].experimental_distribute_dataset(data.batch(2)))
steps = trainer.timed_steps(3, lambda x: tf.constant(0.0))
stalls = sorted(float(waited / busy) for _, waited, busy in (steps(iterator) for _ in range(3)))
print(json.dumps({"steps": summary.steps, "stall": stalls[1]}))
"""


def test_a_replicated_step_counts_every_batch_it_takes(clicks, tmp_path) -> None:
    """Under a mirrored (or TPU) strategy one step takes a batch per replica: epochs and the saved
    input position count them all, or a resumed run would repeat data and an epoch run twice."""
    config = _config(tmp_path, data=clicks, epochs=1, batch_size=500, eval_split=None, strategy="mirrored")
    result = subprocess.run([sys.executable, "-c", MIRRORED_ON_TWO_CPUS, config], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    steps = printed["steps"]
    assert printed["stall"] > 0.8, printed
    rows = sum(s.rows for s in open_dataset(clicks).shards("train") if s.format == "tfrecord")
    assert steps == -(-rows // 1000)  # one epoch of 2 replicas x 500 rows
    latest = CheckpointStore(str(tmp_path / "run" / "checkpoints")).latest()
    assert latest.step == steps and latest.metadata["batches_consumed"] == [2 * steps]


@pytest.mark.parametrize("fmt", ["tfrecord", "parquet"])
def test_a_resumed_stream_continues_where_it_stopped(clicks, tmp_path, fmt: str) -> None:
    from shardflow.training.inputs import InputSpec, ShardReader, make_dataset

    dataset = open_dataset(clicks)
    spec = InputSpec.from_dataset(dataset, None)
    shards = [s for s in dataset.shards("train") if s.format == fmt]
    paths = ShardReader(dataset, spec, cache_dir=str(tmp_path / "cache"), cache_bytes=1 << 30).prepare(shards)

    def stream(skip: int):
        ds = make_dataset(paths, fmt, spec, batch_size=100, shuffle_buffer=1000, seed=3, skip_batches=skip)
        return [(features["C1"].numpy(), label.numpy()) for features, label in ds.take(3)]

    whole = stream(0)  # the first three batches
    continuous = [(f["C1"].numpy(), lab.numpy()) for f, lab in make_dataset(
        paths, fmt, spec, batch_size=100, shuffle_buffer=1000, seed=3).skip(250).take(3)]  # crosses an epoch
    resumed = stream(250)
    assert len(resumed) == 3 and all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(continuous, resumed))
    assert not all((a[0] == b[0]).all() for a, b in zip(whole, resumed))
    rows = sum(s.rows for s in shards)
    features, _ = next(iter(make_dataset(paths, fmt, spec, batch_size=rows, repeat=False)))
    assert np.isnan(features["I2"].numpy()).any()  # nulls stay visible to the model


def test_local_cluster_trains_checkpoints_to_s3_resumes_and_exports(clicks, s3_server, tmp_path) -> None:
    import tensorflow as tf

    checkpoints = f"s3://{s3_server.bucket}/train-{os.getpid()}/checkpoints"
    config = _config(tmp_path, checkpoint={"every_steps": 20, "keep": 5})
    args = ["train", config, "--data", clicks, "--cluster", "local", "--workers", "2", "--ps", "2",
            "--checkpoint-dir", checkpoints, *s3_server.cli_options]
    first = run_cli(*args, "--steps", "40", timeout=600)
    assert "parameter_server" in first.stdout and "0 → 40" in first.stdout
    assert s3_server.storage_options["secret"] not in first.stdout + first.stderr
    assert not _cluster_processes(), "processes left behind"
    store = CheckpointStore(checkpoints, storage_options=s3_server.storage_options)
    assert store.steps() == [20, 40]
    consumed = store.latest().metadata["batches_consumed"]
    assert sum(consumed) == 40 and all(n > 0 for n in consumed)  # both workers read, nothing counted twice
    sharded = store.latest().metadata["sharded"]  # across both ps: the tables, and whatever exceeds min_shard_bytes
    assert sharded["embedding/embeddings"] == sharded["wide_weights/embeddings"] == 2

    second = run_cli(*args, "--steps", "60", timeout=600)
    assert "resumed from 40" in second.stdout and "40 → 60" in second.stdout
    latest = store.latest()
    assert latest.step == 60 and sum(latest.metadata["batches_consumed"]) == 60
    assert all(b >= a for a, b in zip(consumed, latest.metadata["batches_consumed"]))
    assert not _cluster_processes(), "processes left behind"

    # Anyone can fetch a committed checkpoint with plain tools and read it with TensorFlow.
    fs, root = resolve(checkpoints, s3_server.storage_options)
    fs.get(f"{root}/{latest.directory}", str(tmp_path / "plain"), recursive=True)
    reader = tf.train.load_checkpoint(str(tmp_path / "plain"))
    shapes = reader.get_variable_to_shape_map()
    assert [SMALL_MODEL["hash_buckets"], SMALL_MODEL["embedding_dim"]] in shapes.values()  # one whole table
    assert any("batches_consumed" in name for name in shapes)

    # The export loads without shardflow and serves raw columns.
    exported = sorted((tmp_path / "run" / "export").iterdir())[-1]
    assert exported.name == f"{60:012d}"
    model = tf.saved_model.load(str(exported))
    dataset = open_dataset(clicks)
    shard = next(s for s in dataset.shards("eval") if s.format == "parquet")
    rows = pq.read_table(dataset.shard_path(shard)).slice(0, 5).to_pydict()
    serve = model.signatures["serving_default"]
    inputs = {name: tf.constant([np.nan if v is None else v for v in rows[name]], tf.float32)
              if spec.dtype == tf.float32 else tf.constant(["" if v is None else v for v in rows[name]])
              for name, spec in serve.structured_input_signature[1].items()}
    probability = serve(**inputs)["probability"].numpy()
    assert probability.shape == (5,) and ((probability > 0) & (probability < 1)).all()
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["checkpoint_dir"] == checkpoints and s3_server.storage_options["secret"] not in json.dumps(saved)


@pytest.fixture(scope="module")
def s3_clicks(clicks, s3_server) -> str:
    """The same dataset on the S3 test server."""
    url = f"s3://{s3_server.bucket}/clicks-{os.getpid()}"
    run_pipeline(load_config(None, {"input": clicks, "output": url, "label": "label", "formats": ["parquet", "tfrecord"],
                                    "rows_per_shard": 6_000, "storage_options": s3_server.storage_options}))
    return url


def test_local_cluster_reads_remote_parquet_shards_through_the_cache(s3_clicks, s3_server, tmp_path) -> None:
    run_cli("train", _config(tmp_path), "--data", s3_clicks, "--cluster", "local", "--workers", "2", "--ps", "1",
            "--format", "parquet", "--steps", "20", *s3_server.cli_options, timeout=600)
    consumed = CheckpointStore(str(tmp_path / "run" / "checkpoints")).latest().metadata["batches_consumed"]
    assert sum(consumed) == 20 and all(n > 0 for n in consumed)
    dataset = open_dataset(s3_clicks, storage_options=s3_server.storage_options)
    parquet = [s for s in dataset.shards() if s.format == "parquet"]
    fetched = {p.name.split(".")[0] for p in (tmp_path / "run" / "cache" / "data").iterdir()}
    decoded = {p.name.split("-")[0] for p in (tmp_path / "run" / "cache" / "columns").iterdir()}
    # the workers fetched and decoded the train shards, the coordinator the eval shard
    assert fetched == decoded == {s.checksum.split(":")[1] for s in parquet}


def test_user_model_by_import_path_on_a_remote_dataset(s3_clicks, s3_server, tmp_path) -> None:
    import tensorflow as tf

    from shardflow.training.config import load_train_config
    from shardflow.training.state import load_checkpoint
    from shardflow.training.trainer import train

    from .helpers.tiny_model import LOGIT_LAYER, NORM_LAYER

    config = load_train_config(_config(tmp_path), {"data": s3_clicks, "steps": 15, "eval_every": 10,
                                                   "storage_options": s3_server.storage_options,
                                                   "model": {"function": "tests.helpers.tiny_model:linear_model"}})
    summary = train(config)
    assert summary.strategy == "default" and summary.steps == 15 and len(summary.evaluations) == 2
    # The export holds the user model's variables and nothing else: its two layers, by their names.
    spec = open_dataset(s3_clicks, storage_options=s3_server.storage_options).manifest.feature_spec
    numeric = sum(1 for name, f in spec.items() if name != "label" and f["dtype"] != "string")
    variables = {v.name: v for v in tf.saved_model.load(summary.export_path).variables}
    exported = {name: tuple(v.shape) for name, v in variables.items()}
    assert exported == {f"{LOGIT_LAYER}/kernel:0": (numeric, 1), f"{LOGIT_LAYER}/bias:0": (1,),
                        **{f"{NORM_LAYER}/{n}:0": (numeric,) for n in ("gamma", "beta", "moving_mean", "moving_variance")}}
    # ... with the values it was trained to, as the last checkpoint holds them.
    trained = load_checkpoint(config.resolved_checkpoint_dir(), local_dir=str(tmp_path / "restored")).model
    kernel = variables[f"{LOGIT_LAYER}/kernel:0"].numpy()
    assert np.array_equal(kernel, trained.get_layer(LOGIT_LAYER).kernel.numpy()) and kernel.any()


def test_training_learns(clicks, tmp_path) -> None:
    """The built-in model learns the synthetic clicks: measured 0.713-0.718 eval AUC after these
    200 steps (the data's best possible is 0.80); a model that learns nothing scores about 0.5."""
    from shardflow.training.config import load_train_config
    from shardflow.training.trainer import train

    summary = train(load_train_config(_config(tmp_path), {"data": clicks, "steps": 200, "export": False}))
    auc = summary.evaluations[-1]["auc"]
    assert summary.evaluations[-1]["step"] == 200 and 0.65 < auc < summary.optimum_auc, summary.evaluations


def _losses(summary) -> dict[int, float]:
    return {int(point["step"]): point["loss"] for point in summary.history}


def test_a_resumed_run_reads_its_batches_from_the_saved_position(clicks, tmp_path) -> None:
    """A run resumed at step 10 computes, step by step, the losses an uninterrupted run computed
    there: same weights (restored) and same batches (read on from the saved position; any other
    batch gives another loss)."""
    from shardflow.storage.checkpoints import RECORD_DIR
    from shardflow.training.config import load_train_config
    from shardflow.training.trainer import train

    settings = {"data": clicks, "steps": 20, "eval_split": None, "export": False, "log_every": 1,
                "steps_per_execution": 1, "checkpoint": {"every_steps": 10, "keep": 5}}
    whole = train(load_train_config(_config(tmp_path), {**settings, "run_dir": str(tmp_path / "whole")}))
    # The uninterrupted run's checkpoints as they stood at step 10: as if it had stopped there.
    shutil.copytree(tmp_path / "whole" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    os.remove(tmp_path / "resumed" / "checkpoints" / RECORD_DIR / f"c{20:012d}.json")
    resumed = train(load_train_config(_config(tmp_path), {**settings, "run_dir": str(tmp_path / "resumed")}))
    assert resumed.resumed_from == 10 and resumed.start_step == 10
    first, again = _losses(whole), _losses(resumed)
    assert sorted(first) == list(range(1, 21)) and sorted(again) == list(range(11, 21))
    np.testing.assert_allclose([again[s] for s in range(11, 21)], [first[s] for s in range(11, 21)], rtol=1e-5)
    latest = CheckpointStore(str(tmp_path / "resumed" / "checkpoints")).latest()
    assert latest.step == 20 and latest.metadata["batches_consumed"] == [20]


class _Clock:
    """Checkpoint creation times 40 minutes apart, in commit order, for retention by age."""

    def __init__(self) -> None:
        import datetime as dt

        start, ticks, lock = dt.datetime(2026, 1, 1, tzinfo=dt.UTC), itertools.count(), threading.Lock()

        class Datetime(dt.datetime):
            @classmethod
            def now(cls, tz=None):
                with lock:
                    return start + dt.timedelta(minutes=40 * next(ticks))

        self.module = types.SimpleNamespace(datetime=Datetime, timezone=dt.timezone, timedelta=dt.timedelta)


def test_keep_every_hours_keeps_one_checkpoint_per_period_through_a_training_run(clicks, tmp_path, monkeypatch) -> None:
    """keep 1 and keep_every_hours 1 with checkpoints 40 minutes apart (steps 10, 20 ... 60 at
    0, 40 ... 200 min): the first, then each one at least an hour after the last one kept, and the latest."""
    from shardflow.storage import checkpoints
    from shardflow.training.config import load_train_config
    from shardflow.training.trainer import train

    monkeypatch.setattr(checkpoints, "_dt", _Clock().module)  # the clock that stamps each commit
    train(load_train_config(_config(tmp_path), {"data": clicks, "steps": 60, "eval_split": None, "export": False,
                                                "checkpoint": {"every_steps": 10, "keep": 1, "keep_every_hours": 1}}))
    store = CheckpointStore(str(tmp_path / "run" / "checkpoints"))
    kept = store.list()
    assert [c.step for c in kept] == [10, 30, 50, 60]
    assert [int(c.created.timestamp() - kept[0].created.timestamp()) // 60 for c in kept] == [0, 80, 160, 200]
    assert not store.uncommitted()  # the pruned checkpoints' files went with their records


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_every_process_even_when_repeated(clicks, tmp_path, signum) -> None:
    # The launcher gets Ctrl-C's default action even where this run ignores it (a background job of a script).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([SHARDFLOW_EXE, "train", _config(tmp_path), "--data", clicks, "--cluster", "local", "--workers",
                                 "2", "--ps", "1", "--steps", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "tensorboard").exists():  # the coordinator is training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    assert len(_cluster_processes()) >= 4  # supervisor, coordinator, 2 workers, 1 ps
    for _ in range(10):  # more while it cleans up (an impatient user, a shell signalling the whole job)
        proc.send_signal(signum)
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted: every process of the local cluster stopped" in stderr
    assert not _cluster_processes(), "processes left behind"


def test_the_launcher_interrupts_once_and_leaves_an_ignored_ctrl_c_ignored() -> None:
    from shardflow.training.cluster import LocalCluster

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    main = threading.main_thread().ident
    interrupts = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a script starts
        with LocalCluster._signals():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGTERM, signal.SIGTERM):
                try:
                    signal.pthread_kill(main, sig)
                    time.sleep(0.05)
                except KeyboardInterrupt:
                    interrupts += 1
        assert interrupts == 1  # SIGINT stayed ignored; only the first SIGTERM interrupted
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # and later ones stay ignored
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _task_processes(job: str, index: int) -> list[int]:
    return _tagged(b"train-server", f'"type": "{job}", "index": {index}'.encode())


def _cluster_run_past_its_first_checkpoint(clicks, tmp_path, *, steps: int, every_steps: int):
    """``shardflow train`` on a local cluster of 2 workers and 1 ps, once its first checkpoint is
    committed; returns the process and the files holding its stdout and stderr (files, not
    pipes: while a task is down TensorFlow logs enough to fill a pipe and stall the job)."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([SHARDFLOW_EXE, "train", _config(tmp_path, checkpoint={"every_steps": every_steps}), "--data",
                                 clicks, "--cluster", "local", "--workers", "2", "--ps", "1", "--steps", str(steps)],
                                stdout=stdout, stderr=stderr, text=True)
    records = tmp_path / "run" / "checkpoints" / "_checkpoints"
    deadline = time.monotonic() + 240
    while not (records.exists() and any(records.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.2)
    return proc, out, err


def test_a_lost_ps_is_replaced_and_training_resumes_from_the_last_checkpoint(clicks, tmp_path) -> None:
    proc, out, err = _cluster_run_past_its_first_checkpoint(clicks, tmp_path, steps=400, every_steps=25)
    lost = _task_processes("ps", 0)
    assert len(lost) == 1
    os.kill(lost[0], signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, err.read_text()[-3000:]
    assert "A parameter server was lost; restarting every task from the last checkpoint" in err.read_text()
    assert "(resumed from " in out.read_text() and "→ 400" in out.read_text()
    assert CheckpointStore(str(tmp_path / "run" / "checkpoints")).latest().step == 400
    assert not _cluster_processes(), "processes left behind"


@pytest.mark.chaos  # a minute of a 2-worker cluster; make test keeps the lost ps
def test_a_lost_worker_is_restarted_and_trains_again_without_restarting_the_cluster(clicks, tmp_path) -> None:
    proc, out, err = _cluster_run_past_its_first_checkpoint(clicks, tmp_path, steps=3000, every_steps=250)
    store = CheckpointStore(str(tmp_path / "run" / "checkpoints"))
    before = store.latest()
    lost = _task_processes("worker", 0)
    assert len(lost) == 1
    os.kill(lost[0], signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, err.read_text()[-3000:]
    assert "worker 0 exited with code -9; restarting it." in err.read_text()
    assert "A parameter server was lost" not in err.read_text() and "resumed from" not in out.read_text()
    latest = store.latest()
    consumed = latest.metadata["batches_consumed"]
    assert latest.step >= 3000 and sum(consumed) >= 3000
    # Killed right after the first checkpoint, worker 0 could have taken only a few batches more
    # (those of the steps in flight) had it not come back and trained.
    assert consumed[0] > before.step + 100, (before.step, consumed)
    assert not _cluster_processes(), "processes left behind"


def test_resuming_with_another_worker_count_is_refused_clearly(clicks, tmp_path) -> None:
    from shardflow.training.config import load_train_config
    from shardflow.training.trainer import train

    config = load_train_config(_config(tmp_path), {"data": clicks, "steps": 10, "eval_split": None})
    train(config)
    record = next((tmp_path / "run" / "checkpoints" / "_checkpoints").iterdir())
    data = json.loads(record.read_text())
    data["metadata"]["workers"] = 3  # as if written by a 3-worker cluster
    record.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="written by 3 workers; resume with the same number"):
        train(load_train_config(_config(tmp_path), {"data": clicks, "steps": 20, "eval_split": None}))


def test_resuming_a_changed_model_is_refused_clearly(clicks, tmp_path) -> None:
    from shardflow.training.config import load_train_config
    from shardflow.training.trainer import train

    train(load_train_config(_config(tmp_path), {"data": clicks, "steps": 10, "eval_split": None}))
    changed = load_train_config(_config(tmp_path), {"data": clicks, "steps": 20, "eval_split": None,
                                                    "model": {**SMALL_MODEL, "hidden_units": [16, 8]}})
    with pytest.raises(ValueError, match="checkpoint at step 10 in .* does not match this model"):
        train(changed)
    assert train(load_train_config(_config(tmp_path), {"data": clicks, "steps": 20, "eval_split": None})).start_step == 10


def test_fused_adagrad_updates_as_the_stock_one_does() -> None:
    """Sparse and dense gradients, several steps, the accumulators compared too (same slots: same checkpoints)."""
    import tensorflow as tf
    import tf_keras

    from shardflow.training.state import FusedAdagrad

    rng = np.random.default_rng(0)
    start = {"table": rng.normal(size=(50, 4)).astype(np.float32), "kernel": rng.normal(size=(4, 3)).astype(np.float32)}
    results = {}
    optimizers = {"Adagrad": tf_keras.optimizers.Adagrad(learning_rate=0.4),
                  "FusedAdagrad": FusedAdagrad(learning_rate=0.4, jit_compile=False),
                  "FusedAdagrad under XLA": FusedAdagrad(learning_rate=0.4, jit_compile=True)}  # a GPU's default
    for name, optimizer in optimizers.items():
        table, kernel = tf.Variable(start["table"]), tf.Variable(start["kernel"])
        optimizer.build([table, kernel])
        for step in range(5):
            ids = tf.constant(rng.choice(50, size=12, replace=False) if step else [3, 3, 7, 7, 7, 9], tf.int64)
            sparse = tf.IndexedSlices(tf.constant(rng.normal(size=(len(ids), 4)), tf.float32), ids, tf.constant([50, 4]))
            optimizer.apply_gradients([(sparse, table), (tf.constant(rng.normal(size=(4, 3)), tf.float32), kernel)])
        results[name] = [v.numpy() for v in (table, kernel, *optimizer.variables[1:])]
        rng = np.random.default_rng(0)
        rng.normal(size=(50, 4)), rng.normal(size=(4, 3))  # the same gradients for the next optimizer
    assert len(results["Adagrad"]) == len(results["FusedAdagrad"]) == 4  # variables, then their accumulators
    for stock, fused, xla in zip(results["Adagrad"], results["FusedAdagrad"], results["FusedAdagrad under XLA"]):
        np.testing.assert_allclose(fused, stock, rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(xla, stock, rtol=2e-6, atol=1e-6)
    assert not np.allclose(results["FusedAdagrad"][0], start["table"])  # it did update
